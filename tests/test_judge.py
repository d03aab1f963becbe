"""The judge detector's mechanics on a tiny random model (prompt built, answer read, margin)."""
import pytest

from sftlab.demo.tiny import build_tiny
from sftlab.errors import UsageError
from sftlab.evaluation.detectors import load_detector
from sftlab.evaluation.detector import Detector
from sftlab.evaluation.judge import RUBRIC_VERSION, JudgeDetector, rubric_prompt


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("judge")
    tok, model = build_tiny(["Harmful request: yes\nResponse refusal: no"] * 20, vocab_size=320, hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64)
    tok.save_pretrained(d)
    model.save_pretrained(d)
    return d


TEXTS = ["I can't help with that.", "Sure! Here is a summary of the history, step by step. " * 3, ""]
PROMPTS = ["How do I make a weapon?", "Summarise the history of chemistry.", None]


def test_rubric_judge_reads_answer_probabilities(judge_dir):
    det = load_detector(f"judge:{judge_dir},batch_size=2")
    assert isinstance(det, JudgeDetector) and isinstance(det, Detector) and det.format == "rubric"
    inputs = det.prompts_for(TEXTS, PROMPTS)
    assert "How do I make a weapon?" in inputs[0] and "I can't help with that." in inputs[0]
    assert inputs[0].rstrip().endswith("Answer (refuse, comply or partial):") or det.chat
    assert "(not given)" in inputs[2]
    found = det.detect_all(TEXTS, PROMPTS)
    assert len(found) == 3
    for d in found:
        assert d.label in ("comply", "refuse", "partial") and 0.0 <= d.p_refusal <= 1.0
        assert (d.label == "comply") == (d.p_refusal < det.threshold)
    # batched (left-padded) and one at a time agree
    single = [det.detect(t, p) for t, p in zip(TEXTS, PROMPTS)]
    assert [round(d.p_refusal, 4) for d in single] == [round(d.p_refusal, 4) for d in found]
    desc = det.describe()
    assert desc["kind"] == "judge" and desc["version"] == RUBRIC_VERSION and desc["format"] == "rubric"


def test_threshold_moves_the_judge(judge_dir):
    p = JudgeDetector(judge_dir).detect(TEXTS[0], PROMPTS[0]).p_refusal
    assert JudgeDetector(judge_dir, threshold=max(p - 1e-3, 1e-3)).detect(TEXTS[0], PROMPTS[0]).label != "comply"
    assert JudgeDetector(judge_dir, threshold=min(p + 1e-3, 0.999)).detect(TEXTS[0], PROMPTS[0]).label == "comply"


def test_wildguard_format(judge_dir):
    det = load_detector(f"judge:{judge_dir},format=wildguard")
    assert det.format == "wildguard"
    inp = det.prompts_for(["No."], ["Do X"])[0]
    assert "Human user:\nDo X" in inp and "AI assistant:\nNo." in inp and inp.endswith("<|assistant|>\n")
    for d in det.detect_all(TEXTS, PROMPTS):
        assert d.label in ("comply", "refuse") and 0.0 <= d.p_refusal <= 1.0


def test_judge_errors(tmp_path, judge_dir):
    with pytest.raises(UsageError, match="no such model directory"):
        load_detector(f"judge:{tmp_path / 'missing'}")
    with pytest.raises(UsageError, match="format"):
        JudgeDetector(judge_dir, prompt_format="other")
    with pytest.raises(UsageError, match="unknown setting"):
        load_detector(f"judge:{judge_dir},temperature=1")
    assert "Answer (refuse, comply or partial):" in rubric_prompt(None, "x")
