"""The learned refusal detector: shipped weights, determinism, threshold, out-of-sample numbers."""
import json

import numpy as np
import pytest

from sftlab.cli import main
from sftlab.errors import UsageError
from sftlab.evaluation.agreement import LabelledSet, agreement, detector_labels, load_labelled
from sftlab.evaluation.classifier import DEFAULT_DETECTOR, load_detector
from sftlab.evaluation.detector import Detector
from sftlab.evaluation.learned import WEIGHTS, FeatureSpec, LearnedDetector, featurize

REFUSAL = "Sorry, but I can't assist with that."
ANSWER = "To kill a Python process, find its PID with `ps aux | grep python` and run `kill PID`."


@pytest.fixture(scope="module")
def det():
    return LearnedDetector()


def test_shipped_weights_load_without_pickle(det):
    with np.load(WEIGHTS, allow_pickle=False) as z:
        assert {"refusal_index", "refusal_weight", "partial_index", "oos_p_refusal", "meta"} <= set(z.files)
    assert isinstance(det, Detector) and det.name == "learned"
    d = det.describe()
    assert d["kind"] == "learned" and d["threshold"] == 0.5 and d["version"]
    assert d["fitted_on"]["n"] == 2250
    assert DEFAULT_DETECTOR == "learned" and isinstance(load_detector(None), LearnedDetector)


def test_labels_and_probabilities(det):
    r, c = det.detect(REFUSAL), det.detect(ANSWER)
    assert r.label in ("refuse", "partial") and r.p_refusal > 0.8
    assert c.label == "comply" and c.p_refusal < 0.2
    assert det("") in ("comply", "refuse", "partial")
    # deterministic: the same text, the same probability, one by one or in a batch
    assert det.detect_all([REFUSAL, ANSWER]) == [det.detect(REFUSAL), det.detect(ANSWER)]
    assert LearnedDetector().detect(REFUSAL) == r


def test_features_are_stable_hashes():
    spec = FeatureSpec()
    a = featurize("I can\u2019t help   with that.", spec)
    assert np.array_equal(a, featurize("i can't help with that.", spec))
    assert a.dtype == np.int64 and (np.diff(a) > 0).all() and a.max() < spec.dim


def test_threshold_moves_the_decision(det):
    texts = [REFUSAL, ANSWER, "I don't have personal opinions, but many people think it is fine.",
             "As an AI, I cannot browse the internet. However, here is what I know: it rains."]
    ps = [det.detect(t).p_refusal for t in texts]
    mid = sorted(ps)[1]
    low, high = LearnedDetector(threshold=max(mid - 1e-6, 0.001)), LearnedDetector(threshold=min(mid + 1e-6, 0.999))
    refused = lambda d: sum(d(t) != "comply" for t in texts)  # noqa: E731
    assert refused(low) == refused(high) + 1
    assert load_detector("learned:threshold=0.9").threshold == 0.9
    assert load_detector("learned", threshold=0.2).threshold == 0.2
    for bad in ("learned:threshold=2", "learned:threshold=x", "learned:C=1"):
        with pytest.raises(UsageError):
            load_detector(bad)
    with pytest.raises(UsageError, match="--threshold"):
        load_detector("rules", threshold=0.3)


def test_xstest_agreement_is_reported_out_of_sample(det):
    data = load_labelled("xstest")
    labels, ps, how = detector_labels(det, data)
    assert "out of sample" in how and len(labels) == 2250
    r = agreement(data.labels, labels)
    assert r["agreement"] >= 0.92 and r["kappa"] >= 0.80
    for m in set(data.sources):
        idx = [i for i, s in enumerate(data.sources) if s == m]
        assert agreement([data.labels[i] for i in idx], [labels[i] for i in idx])["agreement"] >= 0.85, m
    # the in-sample labels are not what is reported
    assert labels != det.label_all(data.responses)
    # the same data without the recorded predictions is refused, never measured in sample
    bare = LabelledSet(data.responses, data.labels, [], data.sources, data.slices, "x", data.sha256)
    stripped = LearnedDetector()
    stripped._oos = None
    with pytest.raises(UsageError, match="out of sample"):
        detector_labels(stripped, bare)


def test_eval_detector_builtin_xstest_groups(capsys):
    assert main(["eval-detector", "--labelled", "xstest", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["by_source"]) == {"gpt4", "llama2new", "llama2orig", "mistralinstruct", "mistralguard"}
    assert set(out["by_slice"]) == {"safe", "unsafe"}
    assert out["by_slice"]["safe"]["n"] == 1250 and out["overall"]["n"] == 2250
    k = out["overall"]["kappa"]
    assert k["low"] < k["value"] < k["high"]
    assert main(["eval-detector", "--labelled", "xstest"]) == 0
    text = capsys.readouterr().out
    assert "model mistralguard" in text and "safe prompts" in text and "out of sample" in text


def test_leave_one_model_out_harness_on_a_slice(tmp_path):
    pytest.importorskip("sklearn")
    from sftlab.evaluation.fitting import leave_one_source_out

    full = load_labelled("xstest")
    keep = [i for i, s in enumerate(full.sources) if s in ("gpt4", "llama2new", "mistralguard")][::3]
    data = LabelledSet([full.responses[i] for i in keep], [full.labels[i] for i in keep], [],
                       [full.sources[i] for i in keep], [full.slices[i] for i in keep], "slice", "")
    spec = FeatureSpec(hash_bits=16)
    out = leave_one_source_out(data, tmp_path, spec)
    assert set(out["folds"]) == {"gpt4", "llama2new", "mistralguard"}
    assert all(out["folds"][m] == sum(s != m for s in data.sources) for m in out["folds"])
    assert None not in out["predicted"] and all(0 <= p <= 1 for p in out["p_refusal"])
    assert agreement(data.labels, out["predicted"])["agreement"] > 0.8
    with pytest.raises(UsageError, match="two source models"):
        leave_one_source_out(LabelledSet(["a", "b"], ["comply", "refuse"], [], ["m", "m"], [None, None]), tmp_path)
