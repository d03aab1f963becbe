"""Metrics, intervals, answer checking, robustness conditions and spreads, comparison and gates,
on rows a person can count by hand."""
import pytest

from sftlab.evaluation.answers import answer_problem, check_answer, last_number
from sftlab.evaluation.gates import check_gates, compare
from sftlab.evaluation.metrics import compute_metrics, estimate, wilson, worse_beyond_interval
from sftlab.evaluation.prompts import EvalPrompt
from sftlab.evaluation.robustness import (alternate_name, build_conditions, default_system_prompt,
                                          safety_prompt, spreads)
from sftlab.data.policy import Gate, Policy
from sftlab.tokens.templates import get_template
from sftlab.demo.tiny import build_tokenizer


@pytest.mark.parametrize("k,n,low,high", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634),
                                          (10, 10, 0.7225, 1.0), (1, 1, 0.2065, 1.0),
                                          (50, 100, 0.4038, 0.5962)])
def test_wilson_known_values(k, n, low, high):
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_rejects_bad_counts():
    with pytest.raises(ValueError):
        wilson(1, 0)
    with pytest.raises(ValueError):
        wilson(3, 2)


def _rows():
    R, C, P = "refuse", "comply", "partial"
    return [
        {"slice": "weapons", "expected": "refuse", "label": R},
        {"slice": "weapons", "expected": "refuse", "label": P},
        {"slice": "weapons", "expected": "refuse", "label": C},
        {"slice": "history", "expected": "comply", "label": C},
        {"slice": "history", "expected": "comply", "label": R},
        {"slice": "history", "expected": "comply", "label": P},
        {"slice": "history", "expected": "comply", "label": C},
        {"slice": "math", "expected": "comply", "label": C, "correct": True},
        {"slice": "math", "expected": None, "label": C, "correct": False},
    ]


def test_metrics_per_slice_by_hand():
    m = compute_metrics(_rows())
    assert m["weapons"]["harmful_refusal_rate"] == estimate(2, 3)       # refuse + partial
    assert m["history"]["benign_refusal_rate"] == estimate(2, 4)
    assert m["history"]["benign_full_refusal_rate"]["k"] == 1
    assert m["history"]["benign_partial_refusal_rate"]["k"] == 1
    assert m["all"]["benign_refusal_rate"] == estimate(2, 5)            # history 4 + math 1
    assert m["math"]["task_accuracy"] == estimate(1, 2)
    assert "harmful_refusal_rate" not in m["history"] and "task_accuracy" not in m["weapons"]
    e = m["all"]["harmful_refusal_rate"]
    assert set(e) == {"value", "k", "n", "low", "high"} and e["low"] <= e["value"] <= e["high"]


@pytest.mark.parametrize("response,answer,kind,tol,ok", [
    ("The answer is 4.", "4", "exact", None, True),
    ("**Paris**", "paris", "exact", None, True),
    ("Let me see.\nParis.", "Paris", "exact", None, True),
    ("14 or 40", "4", "exact", None, False),                     # containment alone is not enough
    ("I think it is Paris, or maybe Lyon", "Paris", "exact", None, False),
    ("So 12 * 3 = 36", "36", "numeric", None, True),
    ("about 1,234.5 meters", "1234.4", "numeric", 0.2, True),
    ("36 first, then 37", "36", "numeric", None, False),          # the last number counts
    ("no number", "3", "numeric", None, False),
    ("Colour: RED", r"(?i)colou?r: red", "regex", None, True),
    ("blue", "red", "regex", None, False),
])
def test_check_answer(response, answer, kind, tol, ok):
    assert check_answer(response, answer, kind, tol) is ok


def test_answer_problems():
    assert answer_problem("x", "numeric", None) and answer_problem("(", "regex", None)
    assert answer_problem("4", "fuzzy", None) and answer_problem("4", "numeric", -1)
    assert answer_problem("4", "numeric", 0.5) is None
    assert last_number("-3.5e2 and 7") == 7.0


def test_worse_beyond_interval_directions():
    ref = {"value": 0.5}
    assert worse_beyond_interval("harmful_refusal_rate", {"value": .2, "low": .1, "high": .4}, ref)
    assert not worse_beyond_interval("harmful_refusal_rate", {"value": .3, "low": .1, "high": .6}, ref)
    assert worse_beyond_interval("benign_refusal_rate", {"value": .8, "low": .6, "high": .9}, ref)
    assert not worse_beyond_interval("benign_refusal_rate", {"value": .2, "low": .1, "high": .3}, ref)
    assert not worse_beyond_interval("eval_loss", {"value": 9.0, "low": None, "high": None}, ref)


def test_compare_and_gates():
    tuned = {"all": {"benign_refusal_rate": estimate(8, 10), "harmful_refusal_rate": estimate(10, 10)}}
    ref = {"all": {"benign_refusal_rate": estimate(1, 10), "harmful_refusal_rate": estimate(5, 10)}}
    rows = {r["metric"]: r for r in compare(tuned, ref)}
    assert rows["benign_refusal_rate"]["delta"] == pytest.approx(0.7) and rows["benign_refusal_rate"]["worse"]
    assert not rows["harmful_refusal_rate"]["worse"]
    gates = [Gate(metric="harmful_refusal_rate", min=0.95),
             Gate(metric="benign_refusal_rate", max_vs_reference=0.0),
             Gate(metric="task_accuracy", min=0.5)]
    res = check_gates(gates, tuned, ref)
    assert [g["passed"] for g in res] == [True, False, False]
    assert res[1]["bound"] == {"max_vs_reference": 0.0} and res[1]["reference"] == 0.1
    assert "no value" in res[2]["message"]
    assert check_gates(gates[1:2], tuned, None)[0]["passed"] is False   # needs a reference


def test_spreads_flag_above_threshold():
    res = {"training_template": {"all": {"benign_refusal_rate": estimate(1, 10)}},
           "no_system": {"all": {"benign_refusal_rate": estimate(3, 10)}},
           "safety_system": {"all": {"benign_refusal_rate": estimate(2, 10)}}}
    s = spreads(res, 0.1)["benign_refusal_rate"]
    assert s["spread"] == pytest.approx(0.2) and s["flagged"]
    assert not spreads(res, 0.25)["benign_refusal_rate"]["flagged"]


SMOL_LIKE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
             "{{ '<|im_start|>system\nYou are a helpful assistant named Tiny.<|im_end|>\n' }}{% endif %}"
             "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
             "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_default_system_prompt_detection():
    tok = build_tokenizer(vocab_size=300)
    assert default_system_prompt(get_template("chatml", tok)) is None
    assert default_system_prompt(get_template("gemma", tok)) is None
    assert default_system_prompt(get_template("alpaca", tok)).startswith("Below is an instruction")
    assert default_system_prompt(get_template(SMOL_LIKE, tok)) == "You are a helpful assistant named Tiny."


def test_conditions_render_system_prompts():
    tok = build_tokenizer(vocab_size=300)
    train = get_template(SMOL_LIKE, tok)
    alt = get_template(alternate_name(train), tok)
    assert alt.name == "zephyr" and alternate_name(get_template("zephyr", tok)) == "chatml"
    policy = Policy.model_validate({"version": "1", "refusal_style": "Brief.",
                                    "categories": [{"name": "weapons"}]})
    conds, skipped = build_conditions({"training_template", "alternate_template", "no_system",
                                       "safety_system", "template_default"}, train, alt, "Be kind.", policy)
    by = {c.name: c for c in conds}
    assert list(by) == ["training_template", "alternate_template", "no_system", "safety_system",
                        "template_default"] and not skipped
    own = EvalPrompt("a", (("system", "Own."), ("user", "hi")))
    bare = EvalPrompt("b", (("user", "hi"),))
    assert by["training_template"].messages(own)[0]["content"] == "Own."
    assert by["training_template"].messages(bare)[0]["content"] == "Be kind."
    assert by["no_system"].messages(own) == [{"role": "user", "content": "hi"}]
    assert "inserts its own default" in by["no_system"].note
    assert by["safety_system"].messages(own)[0]["content"] == safety_prompt(policy)
    assert "weapons" in safety_prompt(policy) and "Brief." in safety_prompt(policy)
    assert by["template_default"].messages(own)[0]["content"] == "You are a helpful assistant named Tiny."
    _, skipped = build_conditions({"template_default"}, get_template("chatml", tok), alt, None)
    assert "template_default" in skipped


def test_a_catastrophically_backtracking_regex_answer_is_unmatchable_not_a_hang(time_limit):
    from sftlab.evaluation.answers import UnmatchableAnswer, check_answer

    with pytest.raises(UnmatchableAnswer, match="unmatchable"):
        check_answer("a" * 60 + "b", r"(a|aa)+$", "regex")
    assert check_answer("the answer is 42", r"(?i)ANSWER is \d+", "regex")


@pytest.mark.parametrize("pi,concentration,prompts,samples", [
    (0.3, 0.5, 30, 10),   # prompts mostly always or never refused: Wilson over the 300 responses covered 53 %
    (0.1, 1.0, 40, 5),    # Wilson over responses: 76 %
    (0.5, 2.0, 20, 8),    # 71 %
    (0.05, 0.5, 60, 4),   # 73 %
    (0.3, 50.0, 30, 10),  # responses nearly independent: the interval stays about Wilson's
])
def test_several_samples_per_prompt_cover_the_rate_over_prompts(pi, concentration, prompts, samples):
    # each prompt has its own refusal probability (Beta around pi); the rate is their mean, pi
    import numpy as np

    rng = np.random.default_rng(11)
    covered, draws = 0, 1000
    for _ in range(draws):
        theta = rng.beta(pi * concentration, (1 - pi) * concentration, size=prompts)
        rows = [{"id": f"p{i}", "expected": "refuse", "label": "refuse" if j < k else "comply"}
                for i, k in enumerate(rng.binomial(samples, theta)) for j in range(samples)]
        e = compute_metrics(rows)["all"]["harmful_refusal_rate"]
        assert e["n"] == prompts * samples and e.get("n_eff", e["n"]) <= e["n"]
        covered += e["low"] <= pi <= e["high"]
    assert covered / draws >= 0.91


def test_one_response_per_prompt_keeps_wilson_over_responses():
    rows = [{"id": f"p{i}", "expected": "refuse", "label": "refuse" if i < 3 else "comply"} for i in range(10)]
    assert compute_metrics(rows)["all"]["harmful_refusal_rate"] == estimate(3, 10)
    # five samples of two prompts, one always refused: about two prompts' worth, not ten responses'
    rows = [{"id": f"p{i // 5}", "expected": "refuse", "label": "refuse" if i < 5 else "comply"} for i in range(10)]
    e = compute_metrics(rows)["all"]["harmful_refusal_rate"]
    assert e["n_eff"] == 1.0 and (e["low"], e["high"]) == tuple(round(x, 6) for x in wilson(0.5, 1.0))


def test_two_sets_reusing_an_id_are_two_prompts_not_one():
    # JailbreakBench's harmful and benign files both number their rows 1, 2, ...
    rows = [{"id": str(i % 2), "prompt": f"set{i // 4} prompt {i % 2}", "expected": "refuse",
             "label": "refuse" if i < 4 else "comply"} for i in range(8)]  # 4 prompts, 2 samples each
    e = compute_metrics(rows)["all"]["harmful_refusal_rate"]
    # four prompts (less one), each answered the same both times; by ids alone, two prompts of four
    # responses each, 2 of 4 refused in both, looked like independent responses (no n_eff)
    assert e["n_eff"] == 3.0
