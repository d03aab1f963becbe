"""Rogan-Gladen correction of refusal rates: hand-computed cases, the Wilson floor, coverage by simulation."""
import math

import pytest

from sftlab.evaluation.correction import (IMPOSSIBLE, correct_metrics, correct_rate, detector_error,
                                          rogan_gladen)
from sftlab.evaluation.metrics import wilson

ERR = {"tp": 90, "n_pos": 100, "tn": 95, "n_neg": 100, "sensitivity": 0.9, "specificity": 0.95}


def test_point_estimates_by_hand():
    assert rogan_gladen(0.3, 0.9, 0.95) == pytest.approx(0.25 / 0.85)
    assert rogan_gladen(0.3, 1.0, 1.0) == pytest.approx(0.3)  # a perfect detector changes nothing
    assert rogan_gladen(0.01, 0.9, 0.9) == 0.0  # below the false-positive floor: clipped
    assert rogan_gladen(0.99, 0.9, 0.9) == 1.0


def test_interval_by_hand():
    # Lang and Reiczigel (2014): adjusted estimates, the delta-method variance, the shifted centre
    r = correct_rate(30, 100, ERR)
    z = 1.959963984540054
    p, se, sp = (30 + z * z / 2) / (100 + z * z), 91 / 102, 96 / 102
    pi = (p + sp - 1) / (se + sp - 1)
    v_se, v_sp = se * (1 - se) / 102, sp * (1 - sp) / 102
    var = (p * (1 - p) / (100 + z * z) + pi ** 2 * v_se + (1 - pi) ** 2 * v_sp) / (se + sp - 1) ** 2
    centre = pi + 2 * z * z * (pi * v_se - (1 - pi) * v_sp)
    assert r["detected"] == 0.3 and r["corrected"] == pytest.approx(0.25 / 0.85, abs=1e-6)
    assert r["low"] == pytest.approx(centre - z * math.sqrt(var), abs=1e-6)
    assert r["high"] == pytest.approx(centre + z * math.sqrt(var), abs=1e-6)
    assert (r["low"], r["high"]) == pytest.approx((0.182268, 0.412783), abs=1e-6)
    # the detector's uncertainty widens the interval beyond the sample's alone (Wilson, mapped)
    low, high = (rogan_gladen(x, 0.9, 0.95) for x in wilson(30, 100))
    assert r["low"] < low and r["high"] > high
    assert r["reason"] is None


# a detector as measured on XSTest-sized labelled data: Se 190/200, Sp 245/250
MEASURED = {"tp": 190, "n_pos": 200, "tn": 245, "n_neg": 250, "sensitivity": 0.95, "specificity": 0.98}


@pytest.mark.parametrize("k,n", [(0, 3), (3, 3), (0, 1), (1, 1), (0, 20), (20, 20), (1, 3)])
def test_never_narrower_than_the_sample_allows(k, n):
    # the delta method alone gave 0.00-0.02 for 0 of 3 (its sampling term is 0 at k = 0 and k = n)
    r = correct_rate(k, n, MEASURED)
    low, high = (rogan_gladen(x, 0.95, 0.98) for x in wilson(k, n))
    assert r["low"] <= low + 1e-6 and r["high"] >= high - 1e-6
    assert r["low"] <= r["corrected"] <= r["high"]
    if k == 0 and n <= 3:
        assert r["corrected"] == 0.0 and r["high"] >= 0.5  # 0 of 1 or 3 says little
    if k == n and n <= 3:
        assert r["corrected"] == 1.0 and r["low"] <= 0.5


@pytest.mark.parametrize("k,n", [(0, 3), (3, 3), (0, 1), (1, 1), (7, 40)])
def test_a_perfect_detector_gives_the_wilson_interval(k, n):
    r = correct_rate(k, n, {"sensitivity": 1.0, "specificity": 1.0})  # known exactly
    assert (r["corrected"], r["low"], r["high"]) == pytest.approx((k / n, *wilson(k, n)), abs=1e-6)
    # measured perfect on 200 + 250 labelled responses: still uncertain, so never narrower than Wilson
    perfect = {"tp": 200, "n_pos": 200, "tn": 250, "n_neg": 250, "sensitivity": 1.0, "specificity": 1.0}
    m = correct_rate(k, n, perfect)
    assert m["low"] <= r["low"] and m["high"] >= r["high"]


@pytest.mark.parametrize("pi,se,sp,n,n_pos,n_neg", [
    (0.3, 0.95, 0.98, 3, 200, 250),   # k = 0 in a third of the draws: the delta method covered 63 %
    (0.7, 0.95, 0.98, 5, 200, 250),   # the delta method: 82 %
    (0.2, 0.9, 0.95, 10, 40, 40),     # the delta method: 90 %
    (0.5, 0.95, 0.98, 20, 200, 250),
    (0.05, 0.85, 0.9, 100, 100, 100),
    (0.2, 0.7, 0.8, 200, 30, 30),     # a weak detector measured on little data
])
def test_coverage_by_simulation(pi, se, sp, n, n_pos, n_neg):
    # the true rate, Se and Sp are known; draw the sample and the labelled data 3000 times
    import numpy as np

    rng = np.random.default_rng(7)
    detected = pi * se + (1 - pi) * (1 - sp)
    covered = total = 0
    for k, tp, tn in zip(*(rng.binomial(m, q, 3000) for m, q in ((n, detected), (n_pos, se), (n_neg, sp)))):
        r = correct_rate(int(k), n, {"tp": int(tp), "n_pos": n_pos, "tn": int(tn), "n_neg": n_neg,
                                     "sensitivity": tp / n_pos, "specificity": tn / n_neg})
        if r["low"] is not None:
            total += 1
            covered += r["low"] - 1e-9 <= pi <= r["high"] + 1e-9
    assert total >= 2900 and covered / total >= 0.94  # nominal 0.95, 1 point of slack


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


def test_corrected_bound_gate_reads_the_widened_interval():
    # 0 of 3 benign prompts refused: the delta method's 0.00-0.02 passed `benign_refusal_rate <= 0.05`
    from sftlab.evaluation.gates import check_gates
    from sftlab.evaluation.metrics import estimate
    from sftlab.data.policy import Gate

    tuned = {"all": {"benign_refusal_rate": estimate(0, 3)}}
    corrected = {"tuned": correct_metrics(tuned, {"safe": MEASURED})}
    gate = check_gates([Gate(metric="benign_refusal_rate", max=0.05)], tuned, corrected=corrected,
                       mode="corrected-bound")[0]
    assert gate["value"] == corrected["tuned"]["all"]["benign_refusal_rate"]["high"] > 0.5
    assert not gate["passed"]


def test_a_gate_on_a_corrected_rate_reports_the_corrected_interval_beside_it():
    # it gave the detected rate's Wilson interval beside the corrected value
    from sftlab.evaluation.gates import check_gates
    from sftlab.evaluation.metrics import estimate
    from sftlab.data.policy import Gate

    tuned = {"all": {"harmful_refusal_rate": estimate(30, 100)}}
    corrected = {"tuned": correct_metrics(tuned, {"unsafe": ERR})}
    c = corrected["tuned"]["all"]["harmful_refusal_rate"]
    for mode in ("corrected", "corrected-bound"):
        g = check_gates([Gate(metric="harmful_refusal_rate", min=0.2)], tuned, corrected=corrected, mode=mode)[0]
        assert (g["low"], g["high"]) == (c["low"], c["high"]) != (tuned["all"]["harmful_refusal_rate"]["low"],
                                                                  tuned["all"]["harmful_refusal_rate"]["high"])
        assert g["message"].endswith(f"(95 % interval {c['low']:.3g}-{c['high']:.3g})")
    g = check_gates([Gate(metric="harmful_refusal_rate", min=0.2)], tuned)[0]
    assert (g["low"], g["high"]) == (tuned["all"]["harmful_refusal_rate"]["low"], tuned["all"]["harmful_refusal_rate"]["high"])


@pytest.mark.parametrize("k,n,tp,n_pos,tn,n_neg", [
    (0, 1000, 18, 20, 18, 20),      # 0 of 1,000 flagged by a detector measured Sp 0.9 on 20 compliances
    (2, 1000, 18, 20, 18, 20),
    (1, 100, 90, 100, 90, 100),
    (1000, 1000, 18, 20, 18, 20),   # every response flagged, Se measured 0.9
    (999, 1000, 18, 20, 18, 20),
])
def test_a_sample_that_contradicts_the_measured_error_keeps_its_own_interval(k, n, tp, n_pos, tn, n_neg):
    # the Rogan-Gladen map and Lang and Reiczigel's interval both clip to a point (0-0 or 1-1) here:
    # certainty the sample does not give; the bound on that side is the sample's own Wilson bound
    from scipy.stats import norm

    err = {"tp": tp, "n_pos": n_pos, "tn": tn, "n_neg": n_neg,
           "sensitivity": tp / n_pos, "specificity": tn / n_neg}
    r = correct_rate(k, n, err)
    # Wilson's bounds from the definition: the p where (k - n p)^2 = z^2 n p (1 - p), solved by scipy
    z = norm.ppf(0.975)
    a, b, c = n + z * z, -(2 * k + z * z), k * k / n
    bounds = sorted(((-b - s * math.sqrt(b * b - 4 * a * c)) / (2 * a)) for s in (1, -1))
    assert r["high"] - r["low"] >= (bounds[1] - bounds[0]) - 1e-6
    if k / n < 0.5:
        assert (r["corrected"], r["low"]) == (0.0, 0.0) and r["high"] == pytest.approx(bounds[1], abs=1e-6)
    else:
        assert (r["corrected"], r["high"]) == (1.0, 1.0) and r["low"] == pytest.approx(bounds[0], abs=1e-6)
    assert "contradicts" in r["reason"]


def test_lang_reiczigel_never_returns_low_above_high():
    from sftlab.evaluation.correction import lang_reiczigel

    for k, n, tp, n_pos, tn, n_neg in [(1, 100, 90, 100, 90, 100), (1000, 1000, 18, 20, 18, 20)]:
        low, high = lang_reiczigel(k, n, tp, n_pos, tn, n_neg)
        assert 0.0 <= low <= high <= 1.0


def test_the_correction_of_a_rate_over_repeated_samples_uses_its_effective_size():
    from sftlab.evaluation.metrics import estimate

    est = estimate(30, 100, n_eff=20.0)  # 20 prompts' worth of 100 responses
    got = correct_metrics({"all": {"harmful_refusal_rate": est}}, {"all": ERR})["all"]["harmful_refusal_rate"]
    want = correct_rate(6, 20, ERR)
    assert (got["corrected"], got["low"], got["high"]) == (want["corrected"], want["low"], want["high"])
    assert got["high"] - got["low"] > correct_rate(30, 100, ERR)["high"] - correct_rate(30, 100, ERR)["low"]
