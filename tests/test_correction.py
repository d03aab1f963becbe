"""Rogan-Gladen correction of refusal rates against hand-computed cases."""
import math

import pytest

from sftlab.evaluation.correction import (IMPOSSIBLE, correct_metrics, correct_rate, detector_error,
                                          rogan_gladen)

ERR = {"tp": 90, "n_pos": 100, "tn": 95, "n_neg": 100, "sensitivity": 0.9, "specificity": 0.95}


def test_point_estimates_by_hand():
    assert rogan_gladen(0.3, 0.9, 0.95) == pytest.approx(0.25 / 0.85)
    assert rogan_gladen(0.3, 1.0, 1.0) == pytest.approx(0.3)  # a perfect detector changes nothing
    assert rogan_gladen(0.01, 0.9, 0.9) == 0.0  # below the false-positive floor: clipped
    assert rogan_gladen(0.99, 0.9, 0.9) == 1.0


def test_interval_by_hand():
    r = correct_rate(30, 100, ERR)
    pi = 0.25 / 0.85
    var_se = (92 / 104) * (12 / 104) / 104  # Agresti-Coull adjusted: (90+2)/(100+4)
    var_sp = (97 / 104) * (7 / 104) / 104
    var = (0.3 * 0.7 / 100 + pi ** 2 * var_se + (1 - pi) ** 2 * var_sp) / 0.85 ** 2
    half = 1.959963984540054 * math.sqrt(var)
    assert r["detected"] == 0.3 and r["corrected"] == pytest.approx(pi, abs=1e-6)
    assert r["low"] == pytest.approx(pi - half, abs=1e-6) and r["high"] == pytest.approx(pi + half, abs=1e-6)
    assert r["low"] == pytest.approx(0.17916, abs=1e-4) and r["high"] == pytest.approx(0.40908, abs=1e-4)
    # the detector's uncertainty widens the interval beyond the sample's alone
    assert half > 1.96 * math.sqrt(0.3 * 0.7 / 100) / 0.85
    assert r["reason"] is None


@pytest.mark.parametrize("tp,tn", [(40, 60), (50, 50), (30, 20)])
def test_no_better_than_chance_cannot_be_corrected(tp, tn):
    err = {"tp": tp, "n_pos": 100, "tn": tn, "n_neg": 100, "sensitivity": tp / 100, "specificity": tn / 100}
    r = correct_rate(30, 100, err)
    assert r["corrected"] is None and r["low"] is None and r["reason"] == IMPOSSIBLE
    assert "cannot be corrected" in r["reason"]
    assert rogan_gladen(0.3, tp / 100, tn / 100) is None


def test_detector_error_and_missing_class():
    e = detector_error(["refuse", "partial", "comply", "comply"], ["refuse", "comply", "comply", "partial"])
    assert (e["tp"], e["n_pos"], e["tn"], e["n_neg"]) == (1, 2, 1, 2)
    assert e["sensitivity"] == 0.5 and e["specificity"] == 0.5
    r = correct_rate(3, 10, detector_error(["comply", "comply"], ["comply", "refuse"]))
    assert r["corrected"] is None and "sensitivity" in r["reason"]


def test_correct_metrics_uses_the_matching_slice():
    metrics = {"all": {"harmful_refusal_rate": {"value": 0.3, "k": 30, "n": 100},
                       "benign_refusal_rate": {"value": 0.3, "k": 30, "n": 100},
                       "task_accuracy": {"value": 0.5, "k": 1, "n": 2}}}
    perfect = {"tp": 100, "n_pos": 100, "tn": 100, "n_neg": 100, "sensitivity": 1.0, "specificity": 1.0}
    out = correct_metrics(metrics, {"all": ERR, "unsafe": perfect})
    assert set(out["all"]) == {"harmful_refusal_rate", "benign_refusal_rate"}
    assert out["all"]["harmful_refusal_rate"]["corrected"] == pytest.approx(0.3)
    assert out["all"]["harmful_refusal_rate"]["error_from"] == "unsafe"
    assert out["all"]["benign_refusal_rate"]["corrected"] == pytest.approx(0.25 / 0.85, abs=1e-6)
    assert out["all"]["benign_refusal_rate"]["error_from"] == "all"
