"""One statistics engine: ``sftlab stats FILES`` and a run's ``RUN/data/stats.json`` give the same
figures on the same data; the figures of a fixed set are pinned; every stats.json validates."""
from __future__ import annotations

import json
import random

import pytest
import yaml

from sftlab.cli import main
from sftlab.data.loading import load_files
from sftlab.data.stats import compute_stats, validate_stats

# Figures by nature different between counting words without a tokenizer (``sftlab stats FILES``)
# and a run, which encodes: lengths are in tokens there (with the template's name and what
# encoding added or lost), the reasoning share is of trained tokens, and the per-file counts
# name the split of each file the same way but a run reports them as its stores read them.
BY_NATURE = {"lengths", "tools.unit", "tools.slices.*.reasoning_share"}


def _records(n: int = 400, seed: int = 7) -> list[dict]:
    """Conversations of random words (a few accented, Chinese), with exact copies (case changed)
    and near copies (1 to 12 answer words changed: either side of Jaccard 0.8), refusals and
    benign contrasts, and a slice of tool calls."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(300)] + ["café", "naïve", "中文", "Straße"]
    text = lambda k: " ".join(rng.choice(vocab) for _ in range(k))  # noqa: E731
    out: list[dict] = []
    for i in range(n):
        r = rng.random()
        if i > 20 and r < 0.05:
            src = json.loads(json.dumps(out[rng.randrange(len(out))]))
            src["id"] = f"r{i}"
            words = src["messages"][-1]["content"].split()
            if r < 0.02:
                words = [w.upper() for w in words]
            else:
                for _ in range(1 + int(r * 1000) % 12):
                    words[rng.randrange(len(words))] = "changed"
            src["messages"][-1]["content"] = " ".join(words)
            out.append(src)
            continue
        msgs = [{"role": "system", "content": "You are helpful."}] if r < 0.5 else []
        for _ in range(1 + int(r > 0.8)):
            msgs += [{"role": "user", "content": text(rng.randint(3, 25))},
                     {"role": "assistant", "content": text(rng.randint(20, 60))}]
        rec = {"id": f"r{i}", "task": f"t{rng.randrange(6)}", "messages": msgs}
        if r > 0.9:
            rec["expected"], rec["policy_category"] = "refuse", "weapons"
            msgs[-1]["content"] = rng.choice(["I can't help with that: it is dangerous.",
                                              "No. I won't explain how to build " + text(3) + "."])
        elif r > 0.85:
            rec["expected"], rec["policy_category"] = "comply", "weapons"
        if 0.6 < r < 0.65:
            rec["slice"], rec["tools"] = "tools", [{"name": "lookup", "parameters": {"type": "object"}}]
            msgs[-1]["tool_calls"] = [{"type": "function", "function": {"name": "lookup",
                                                                         "arguments": json.dumps({"q": text(2)})}}]
        out.append(rec)
    return out


def _heldout(train: list[dict]) -> list[dict]:
    """Every tenth training prompt: a third as is, a third with its first word changed, a third new."""
    out = []
    for k, r in enumerate(train[::10]):
        h = {"id": f"h{k}", "messages": [dict(m) for m in r["messages"] if m["role"] != "system"][:2]}
        if k % 3 == 1:
            w = h["messages"][0]["content"].split()
            h["messages"][0]["content"] = " ".join(["other", *w[1:]])
        elif k % 3 == 2:
            h["messages"][0]["content"] = f"fresh question {k}"
        out.append(h)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine")
    train = _records()
    for name, rows in (("train.jsonl", train), ("held.jsonl", _heldout(train))):
        (d / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return d


def test_the_figures_of_a_fixed_set_are_pinned(files):
    """The figures sftlab gave for this set before the engine was shared (exact Jaccard)."""
    s = compute_stats(load_files([files / "train.jsonl"]).conversations,
                      load_files([files / "held.jsonl"]).conversations)
    assert s["counts"]["task"] == {"t5": 73, "t1": 70, "t0": 68, "t2": 68, "t3": 61, "t4": 60}
    assert s["tasks"] == {"distinct": 6, "entropy_nats": 1.789276, "effective_tasks": 5.98512,
                          "largest": {"task": "t5", "share": 0.1825}}
    assert s["turns"] == {"n": 400, "min": 1, "p50": 1, "p90": 2, "p99": 2, "max": 2, "mean": 1.185}
    assert s["lengths"]["prompt"] == {"n": 400, "min": 3, "p50": 18, "p90": 28, "p99": 42, "max": 46, "mean": 18.095}
    assert s["lengths"]["response"] == {"n": 400, "min": 20, "p50": 43, "p90": 60, "p99": 111, "max": 117,
                                        "mean": 44.5625}
    tools = s["tools"]["slices"]
    assert (tools["all"]["with_tools"], tools["all"]["share"], tools["tools"]["records"]) == (23, 0.0575, 23)
    r = s["refusals"]
    assert (r["refuse"], r["comply"], r["share"], r["categories"][0]["contrasts"]) == (40, 18, 0.1, 18)
    div = r["diversity"]
    assert (div["distinct_1"], div["distinct_2"], div["distinct_3"], div["largest_group"]["size"]) == \
           (0.157143, 0.187097, 0.207407, 25)
    d = s["duplicates"]
    assert (d["exact"]["records"], d["exact"]["groups"]) == (7, 7)
    assert [(e["a"]["id"], e["b"]["id"]) for e in d["exact"]["examples"]] == \
           [("r26", "r33"), ("r8", "r57"), ("r68", "r73"), ("r49", "r91"), ("r65", "r220")]
    assert [(e["a"]["id"], e["b"]["id"], e["jaccard"]) for e in d["near"]["examples"]] == \
           [("r25", "r140", 0.911765), ("r242", "r299", 0.888889)] and d["near"]["records"] == 2
    leak = s["leakage"]
    assert (leak["exact"]["records"], leak["near"]["records"], leak["leaked"]) == (10, 8, 18)
    assert [(e["heldout"]["id"], e["train"]["id"], e["jaccard"]) for e in leak["near"]["examples"]] == \
           [("h4", "r22", 0.904762), ("h10", "r100", 0.913043), ("h15", "r150", 0.857143),
            ("h16", "r160", 0.857143), ("h19", "r190", 0.909091)]


def _figures(d, path: str = "") -> dict[str, object]:
    """Every leaf of a stats dict by dotted path (list items by index)."""
    if isinstance(d, dict):
        return {k: v for key, value in d.items() for k, v in _figures(value, f"{path}.{key}".lstrip(".")).items()}
    if isinstance(d, list):
        return {k: v for i, value in enumerate(d) for k, v in _figures(value, f"{path}[{i}]").items()}
    return {path: d}


def _by_nature(path: str) -> bool:
    parts = path.split(".")
    return any(all(p == "*" or p == q.split("[")[0] for p, q in zip(rule.split("."), parts))
               and len(parts) >= len(rule.split(".")) for rule in BY_NATURE)


def test_sftlab_stats_files_equals_the_runs_stats_json(files, tmp_path, capsys):
    """``sftlab stats FILES --heldout`` (words, in memory) against ``sftlab train``'s
    ``RUN/data/stats.json`` (its prepared stores, built by 2 worker processes): every
    figure equal but those listed in ``BY_NATURE``; near duplicates and leakage included."""
    from sftlab.demo.tiny import build_tiny

    tok, model = build_tiny(vocab_size=300, hidden=16, layers=1, heads=2, kv_heads=1, intermediate=32)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    cfg = {"model": {"path": str(tmp_path / "model")}, "template": "chatml",
           "data": {"train": [str(files / "train.jsonl")], "eval": [str(files / "held.jsonl")], "num_proc": 2},
           "encoding": {"max_length": 2048}, "seed": 1, "out": str(tmp_path / "run"),
           "log": {"progress": False, "trackers": []},
           "optim": {"lr": 1e-3, "micro_batch_size": 1, "grad_accum": 1, "max_steps": 1, "warmup_steps": 0}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    main(["train", str(tmp_path / "run.yaml")])  # exit 1: the held-out prompts leak, a failed data check
    run_stats = json.loads((tmp_path / "run" / "data" / "stats.json").read_text(encoding="utf-8"))
    capsys.readouterr()
    assert main(["stats", str(files / "train.jsonl"), "--heldout", str(files / "held.jsonl"), "--json"]) == 1
    word_stats = json.loads(capsys.readouterr().out)
    validate_stats(run_stats)
    validate_stats(word_stats)
    mine, theirs = _figures(word_stats), _figures(run_stats)
    compared = {k for k in mine.keys() | theirs.keys() if not _by_nature(k)}
    assert {k: (mine.get(k), theirs.get(k)) for k in compared if mine.get(k, "?") != theirs.get(k, "?")} == {}
    assert run_stats["duplicates"]["near"]["records"] == 2 and run_stats["leakage"]["near"]["records"] == 8
    assert run_stats["lengths"]["unit"] == "tokens" and word_stats["lengths"]["unit"] == "words"
    assert len(compared) > 200  # every figure but lengths and the units


def test_a_stats_json_that_does_not_match_the_schema_is_refused_with_its_field(files):
    s = compute_stats(load_files([files / "train.jsonl"]).conversations[:20])
    validate_stats(s)
    with pytest.raises(ValueError, match=r"duplicates\.near\.confirmed_by: Extra inputs"):
        validate_stats({**s, "duplicates": {**s["duplicates"], "near": {**s["duplicates"]["near"],
                                                                         "confirmed_by": "minhash_estimate"}}})
    with pytest.raises(ValueError, match=r"turns\.p50: "):
        validate_stats({**s, "turns": {**s["turns"], "p50": "1"}})
