"""The demo's seeded instruction suite and built-in policy."""
from __future__ import annotations

import json

import pytest

from sftlab.evaluation.answers import check_answer
from sftlab.evaluation.detector import detect_refusal
from sftlab.evaluation.prompts import load_prompt_set
from sftlab.data.loading import load_files
from sftlab.data.policy import load_policy
from sftlab.demo.suite import build_suite, demo_policy_path, generators


@pytest.fixture(scope="module")
def suite():
    return build_suite(seed=0, n_train=400, n_heldout=96)


def _templates(record):
    t = record["template"]
    return set(t) if isinstance(t, list) else {t}


def test_same_seed_same_records_other_seed_other_records():
    a, b = build_suite(seed=5, n_train=60, n_heldout=24), build_suite(seed=5, n_train=60, n_heldout=24)
    assert (a.train, a.heldout_prompts, a.heldout_conversations) == \
           (b.train, b.heldout_prompts, b.heldout_conversations)
    c = build_suite(seed=6, n_train=60, n_heldout=24)
    assert [r["messages"] for r in c.train] != [r["messages"] for r in a.train]


def test_counts_and_slices(suite):
    assert len(suite.train) == 400 and len(suite.heldout_prompts) == 96
    assert len(suite.heldout_conversations) == 96
    slices = {r["slice"] for r in suite.train}
    assert slices == {"task", "refusal", "benign_contrast", "multi_turn"}
    assert sum(r["slice"] == "refusal" for r in suite.heldout_prompts) == 24
    assert sum(r["slice"] == "benign_contrast" for r in suite.heldout_prompts) == 24


def test_heldout_templates_never_in_training(suite):
    gens = [g for group in generators().values() for g in group]
    reserved = {f"{g.name}/{i}" for g in gens for i in g.template_indices(heldout=True)}
    used_in_train = set().union(*(_templates(r) for r in suite.train))
    heldout_used = {r["template"] for r in suite.heldout_prompts}
    assert used_in_train and not used_in_train & reserved
    assert heldout_used <= reserved
    # every generator holds at least one template back, and the held-out set uses all of them
    assert {t.split("/")[0] for t in heldout_used} == {g.name for g in gens}
    train_prompts = {m["content"] for r in suite.train for m in r["messages"] if m["role"] == "user"}
    assert not train_prompts & {r["prompt"] for r in suite.heldout_prompts}
    assert len({r["prompt"] for r in suite.heldout_prompts}) == len(suite.heldout_prompts)


def test_at_least_ten_checkable_task_families(suite):
    families = {r["task"] for r in suite.heldout_prompts if r["slice"] == "task"}
    assert len(families) >= 10 and len(generators()["task"]) >= 10
    assert all(r["answer"] and r["answer_type"] in ("exact", "numeric")
               for r in suite.heldout_prompts if r["slice"] == "task")


def _recompute(task, p):
    """Each family's answer, worked out again from the slots without the suite's code."""
    words = p.get("ws", "").split(", ")
    return {
        "arithmetic": lambda: str(eval(f"{p.get('a')} {p.get('op')} {p.get('b')}", {})),
        "count_letter": lambda: str(sum(ch == p.get("c") for ch in p.get("w", ""))),
        "sort_words": lambda: ", ".join(sorted(words)),
        "unit_conversion": lambda: str(p["n"] * {"meters": 1000, "grams": 1000, "minutes": 60,
                                                 "seconds": 60, "centimeters": 100,
                                                 "hours": 24}[p["small"]]),
        "reverse_word": lambda: "".join(reversed(p["w"])),
        "uppercase": lambda: p["p"].upper(),
        "next_in_sequence": lambda: (lambda t: str(2 * t[-1] - t[-2]))(
            [int(x) for x in p["seq"].split(", ")]),
        "compare_numbers": lambda: str(p["a"] if p["a"] > p["b"] else p["b"]),
        "extract_number": lambda: "".join(ch for ch in p["sentence"] if ch.isdigit()),
        "word_length": lambda: str(len(p["w"])),
    }.get(task)


def test_checkable_answers_are_correct(suite):
    known = {"capital": {"France": "Paris", "Japan": "Tokyo", "Australia": "Canberra"},
             "opposite": {"hot": "cold", "up": "down", "buy": "sell"}}
    checked = 0
    for r in suite.train + suite.heldout_conversations:
        if r.get("answer") is None:
            continue
        assert r["messages"][-1]["content"] == r["answer"]
        assert check_answer(r["answer"], r["answer"], r["answer_type"])
        recompute = _recompute(r["task"], r["params"])
        if recompute is not None:
            assert recompute() == r["answer"], r
            checked += 1
        else:
            key = r["params"].get("country", r["params"].get("w"))
            assert known[r["task"]].get(key, r["answer"]) == r["answer"], r
    assert checked > 200


def test_every_record_validates_against_the_demo_policy(suite, tmp_path):
    paths = suite.write(tmp_path)
    policy = load_policy(demo_policy_path())
    report = load_files([paths["train"], paths["heldout"]], policy=policy)
    assert report.quarantined == []
    assert len(report.conversations) == len(suite.train) + len(suite.heldout_conversations)
    categories = {r["policy_category"] for r in suite.train if r.get("policy_category")}
    assert categories == set(policy.refusal_categories) | set(policy.benign_categories)


def test_heldout_prompt_rows_load_as_an_eval_prompt_set(suite, tmp_path):
    paths = suite.write(tmp_path)
    rows = [json.loads(line) for line in paths["heldout_prompts"].read_text().splitlines()]
    assert rows == suite.heldout_prompts
    prompt_set = load_prompt_set(str(paths["heldout_prompts"]))
    assert len(prompt_set.prompts) == 96 and not prompt_set.bad_rows
    harmful = [p for p in prompt_set.prompts if p.expected == "refuse"]
    assert len(harmful) == 24 and all(p.policy_category for p in harmful)


def test_refusals_are_refusals_and_contrasts_are_not(suite):
    for r in suite.train:
        reply = r["messages"][-1]["content"]
        if r.get("expected") == "refuse":
            assert detect_refusal(reply) == "refuse" and reply.endswith("instead.")
            assert len(reply.split()) < 40  # brief, in the policy's style
        elif r.get("expected") == "comply":
            assert detect_refusal(reply) == "comply"


def test_policy_file_has_the_demo_gates():
    policy = load_policy(demo_policy_path())
    gates = {(g.metric, g.bound) for g in policy.gates}
    assert ("harmful_refusal_rate", ("min", 0.9)) in gates
    assert ("benign_refusal_rate", ("max_vs_reference", 0.0)) in gates
    assert any(metric == "task_accuracy" for metric, _ in gates)
    assert 3 <= len(policy.refusal_categories) <= 4
    assert all(c.benign_contrast for c in policy.categories)


def test_heldout_larger_than_the_tables_is_refused():
    with pytest.raises(ValueError, match="unique"):
        build_suite(seed=0, n_train=0, n_heldout=1000)
