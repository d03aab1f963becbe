"""Data statistics: numbers a person can check by hand, duplicates, leakage, contrasts, the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from sftlab.cli import main
from sftlab.data.conversation import Conversation, Message, Origin
from sftlab.data.policy import Policy
from sftlab.data.dedup import LSH_WEIGHTS, MinHasher, band_keys, colliding
from sftlab.data.stats import compute_stats, distribution, task_diversity

LONG = " ".join(f"w{i}" for i in range(80))  # 80 distinct words: 78 shingles


def conv(user: str, answer: str = "ok", *, id: str | None = None, task: str | None = None,
         expected: str | None = None, category: str | None = None, system: str | None = None,
         line: int | None = None) -> Conversation:
    msgs = ((Message("system", system),) if system else ()) + (Message("user", user),
                                                                 Message("assistant", answer))
    return Conversation(msgs, id=id, task=task, expected=expected, policy_category=category,
                        origin=Origin("train.jsonl", line) if line else None)


def one_word_changed(text: str, k: int = 40) -> str:
    words = text.split()
    words[k] = "changed"
    return " ".join(words)


# ---------------------------------------------------------------- counts and distributions

def test_task_diversity_of_a_known_distribution():
    convs = [conv("1", task="a"), conv("2", task="a"), conv("3", task="b"), conv("4", task=None)]
    d = task_diversity(convs)
    # shares 1/2, 1/4, 1/4: H = -(1/2 ln 1/2 + 2 * 1/4 ln 1/4) = 1.5 ln 2
    assert d["entropy_nats"] == pytest.approx(1.5 * math.log(2), abs=1e-6)
    assert d["effective_tasks"] == pytest.approx(2 ** 1.5, abs=1e-5)
    assert d["distinct"] == 3 and d["largest"] == {"task": "a", "share": 0.5}
    uniform = task_diversity([conv(str(i), task=f"t{i}") for i in range(5)])
    assert uniform["effective_tasks"] == pytest.approx(5.0)


def test_counts_lengths_turns_and_refusal_share():
    convs = [conv("one two three", "four five", task="qa", system="be brief", line=1),
             Conversation((Message("user", "a"), Message("assistant", "b c"), Message("user", "d"),
                           Message("assistant", "e")), task="qa", expected="refuse",
                          policy_category="weapons"),
             conv("x", "y z w", expected="comply", category="weapons_history")]
    s = compute_stats(convs)
    assert s["records"] == 3
    assert s["counts"]["task"] == {"qa": 2, "(none)": 1}
    assert s["counts"]["expected"] == {"(none)": 1, "comply": 1, "refuse": 1}
    assert s["turns"] == {"n": 3, "min": 1, "p50": 1, "p90": 2, "p99": 2, "max": 2, "mean": 1.333333}
    # prompt = system + user words (2 + 3, 1 + 1, 1); response = assistant words (2, 3, 3)
    assert s["lengths"]["unit"] == "words"
    assert (s["lengths"]["prompt"]["min"], s["lengths"]["prompt"]["max"]) == (1, 5)
    assert s["lengths"]["response"]["p50"] == 3 and s["lengths"]["response"]["mean"] == pytest.approx(8 / 3, abs=1e-6)
    assert s["refusals"]["refuse"] == 1 and s["refusals"]["share"] == pytest.approx(1 / 3, abs=1e-6)
    json.dumps(s)  # serialisable as it is


def test_distribution_uses_nearest_rank_percentiles():
    d = distribution([10, 1, 3, 2])
    assert (d["min"], d["p50"], d["p90"], d["p99"], d["max"], d["mean"]) == (1, 2, 10, 10, 10, 4.0)
    assert distribution(list(range(1, 101)))["p90"] == 90
    assert distribution([])["p50"] is None


# ---------------------------------------------------------------- duplicates

def test_exact_duplicates_ignore_case_and_whitespace():
    convs = [conv("Hello  World", id="a", line=1), conv("hello world\n", id="b", line=2),
             conv("hello world", "other answer", id="c", line=3), conv("HELLO world", id="d", line=4)]
    exact = compute_stats(convs)["duplicates"]["exact"]
    assert exact["records"] == 2 and exact["groups"] == 1  # b and d repeat a; c's answer differs
    assert exact["examples"][0] == {"a": {"id": "a", "where": "train.jsonl:1"},
                                    "b": {"id": "b", "where": "train.jsonl:2"}}


def test_near_duplicate_one_word_changed_in_a_long_text_but_not_an_unrelated_one():
    other = " ".join(f"v{i}" for i in range(80))
    convs = [conv(LONG, id="orig"), conv(one_word_changed(LONG), id="para"), conv(other, id="unrelated"),
             conv("short text one", id="s1"), conv("short text two", id="s2")]
    near = compute_stats(convs)["duplicates"]["near"]
    assert near["records"] == 1
    (example,) = near["examples"]
    assert (example["a"]["id"], example["b"]["id"]) == ("orig", "para")
    # 81 shingles each ("user:" and "assistant: ok" included); 3 differ on each side
    assert example["jaccard"] == pytest.approx(78 / 84, abs=1e-6)
    assert compute_stats(convs, near_threshold=0.95)["duplicates"]["near"]["records"] == 0


def test_bulk_signatures_equal_datasketch_minhash():
    signer = MinHasher(num_perm=64)
    hashes, starts = signer.shingles(*signer.words([LONG, "a b", "one two three four", ""]))
    assert list(np.diff(starts)) == [78, 1, 2, 1]  # short texts are padded to one shingle
    sigs = signer.signatures(hashes, starts)
    for i in range(4):
        m = MinHash(num_perm=64, seed=1, hashfunc=lambda x: x, scheme="affine32")
        m.update_batch([int(h) for h in hashes[starts[i]:starts[i + 1]]])
        assert np.array_equal(m.hashvalues, sigs[i])



def test_bulk_signatures_in_blocks_equal_datasketch_minhash(monkeypatch):
    """Texts spread over many blocks of the signature computation (one buffer reused), and a text
    longer than a block (its own array), sign as datasketch does."""
    from sftlab.data import dedup

    monkeypatch.setattr(dedup, "_SHINGLE_CHUNK", 64)
    rng = np.random.default_rng(1)
    texts = [" ".join(f"w{x}" for x in rng.integers(0, 50, n)) for n in [1, 30, 200, 5, 64, 66, 0, 90, 2, 150]]
    signer = MinHasher(num_perm=64)
    hashes, starts = signer.shingles(*signer.words(texts))
    assert np.diff(starts).max() > 64
    sigs = signer.signatures(hashes, starts)
    for i in range(len(texts)):
        m = MinHash(num_perm=64, seed=1, hashfunc=lambda x: x, scheme="affine32")
        m.update_batch([int(h) for h in hashes[starts[i]:starts[i + 1]]])
        assert np.array_equal(m.hashvalues, sigs[i]), i


def test_ascii_texts_have_the_words_of_the_general_path():
    """A block of ASCII texts is lowercased as ASCII without the unspaced-script pass; its words
    are the ones the general path gives them (one non-ASCII text in the block takes that path)."""
    ascii_texts = ["Hello WORLD", "", "  tabs\tand\nlines  ", "".join(f"W{c}{chr(c)}" for c in range(128)),
                   "x\x1cy\x1dz\x1e\x1fEND", "MiXeD 123 !? [ok]"]
    signer = MinHasher(num_perm=64)
    fast, fast_offsets = signer.words(ascii_texts)
    general, offsets = signer.words(ascii_texts + ["é 中文"])
    assert np.array_equal(fast_offsets, offsets[:len(ascii_texts) + 1])
    assert np.array_equal(fast, general[:len(fast)])
    # and a block with other text is not taken for ASCII: lowercased in full, unspaced scripts split
    assert np.array_equal(signer.words(["ÉCOLE 中文", "A"])[0], signer.words(["école 中 文", "a"])[0])

def test_band_prefilter_keeps_every_record_the_datasketch_index_would_pair():
    rng = np.random.default_rng(0)
    base = [" ".join(f"t{k}" for k in rng.integers(0, 300, 40)) for _ in range(60)]
    texts = base + [one_word_changed(t, 5 + i % 30) for i, t in enumerate(base[:20])]
    signer = MinHasher(num_perm=64)
    sigs = signer.signatures(*signer.shingles(*signer.words(texts)))
    lsh = MinHashLSH(threshold=0.8, num_perm=64, weights=LSH_WEIGHTS)
    for i, s in enumerate(sigs):
        lsh.insert(i, signer.lean(s))
    paired = np.array([len(lsh.query(signer.lean(s))) > 1 for s in sigs])
    assert paired[60:].sum() >= 15  # most near copies do pair: the comparison is not vacuous
    assert np.array_equal(colliding(band_keys(sigs, lsh.hashranges)), paired)


def test_words_are_lowercased_and_split_on_any_whitespace():
    signer = MinHasher()
    words, offsets = signer.words(["Hello\t WORLD\n", "hello world", "", "  "])
    assert list(offsets) == [0, 2, 4, 4, 4]
    assert np.array_equal(words[:2], words[2:4])
    keys = signer.keys(words, offsets)
    assert keys[0].tobytes() == keys[1].tobytes() and keys[2].tobytes() == keys[3].tobytes() != keys[0].tobytes()
    again, _ = MinHasher().words(["hello"])  # word hashes do not depend on the process or order
    assert again[0] == words[0]


def test_words_match_python_lower_split_on_unicode_whitespace():
    import random

    import pyarrow as pa

    from sftlab.data.dedup import _string_hashes

    rng = random.Random(0)
    chars = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\xa0", "\u2003", "\u3000", "\x85", "\u2028",
             "a", "B", "é", "Ä", "ß"]
    texts = ["".join(rng.choice(chars) for _ in range(rng.randint(0, 20))) for _ in range(300)]
    words, offsets = MinHasher().words(texts)
    for i, text in enumerate(texts):
        expected = _string_hashes(pa.array(text.lower().split(), type=pa.large_string())).tolist()
        assert words[offsets[i]:offsets[i + 1]].tolist() == expected, repr(text)



def test_ascii_words_match_python_lower_split_whatever_the_kernel():
    """ASCII texts are split by pyarrow's ASCII kernels unless one holds U+001C..U+001F, which
    ``str.split`` counts as whitespace and those kernels do not: either way, Python's words."""
    import random

    import pyarrow as pa

    from sftlab.data.dedup import _string_hashes

    rng = random.Random(1)
    spaces = [" ", "\t", "\n", "\r", "\x0b", "\x0c"]
    for extra in ([], ["\x1c", "\x1d", "\x1e", "\x1f"]):
        chars = spaces + extra + ["a", "B", "z", "!", "\x00", "\x7f"]
        texts = ["".join(rng.choice(chars) for _ in range(rng.randint(0, 20))) for _ in range(300)]
        words, offsets = MinHasher().words(texts)
        for i, text in enumerate(texts):
            expected = _string_hashes(pa.array(text.lower().split(), type=pa.large_string())).tolist()
            assert words[offsets[i]:offsets[i + 1]].tolist() == expected, repr(text)


# ---------------------------------------------------------------- leakage

@pytest.mark.parametrize("extra_heldout", [0, 10])  # held-out smaller / larger than training
def test_leakage_exact_and_near_prompts_from_training(extra_heldout):
    train = [conv("What is the capital of France?", "Paris", id="t1", line=1),
             conv(LONG, id="t2", line=2), conv("Name a prime number.", "7", id="t3", line=3),
             conv("Unrelated training prompt", id="t4", line=4)]
    heldout = [conv("what is the capital of  FRANCE?", "It is Paris.", id="h1"),
               conv(one_word_changed(LONG), "different answer", id="h2"),
               conv("Something else entirely", "7", id="h3"),
               conv("Tell me a story", "Paris", id="h4")]  # same answer as t1, other prompt
    heldout += [conv(f"fresh held-out prompt number {k}", id=f"x{k}") for k in range(extra_heldout)]
    s = compute_stats(train, heldout=heldout)
    leak = s["leakage"]
    assert leak["heldout_records"] == 4 + extra_heldout and leak["leaked"] == 2
    assert leak["exact"]["records"] == 1 and leak["near"]["records"] == 1
    assert leak["exact"]["examples"][0]["heldout"] == {"id": "h1", "where": "#0"}
    assert leak["exact"]["examples"][0]["train"] == {"id": "t1", "where": "train.jsonl:1"}
    near = leak["near"]["examples"][0]
    assert (near["heldout"]["id"], near["train"]["id"]) == ("h2", "t2")
    assert near["jaccard"] == pytest.approx(75 / 81, abs=1e-6)  # 78 shingles, 3 differ
    assert not s["passed"] and {c["name"]: c["passed"] for c in s["checks"]}["leakage"] is False
    assert {w["code"] for w in s["warnings"]} >= {"exact_leakage", "near_leakage"}


def test_no_leakage_passes():
    s = compute_stats([conv("a question here", id="t")], heldout=[conv("another one there", id="h")])
    assert s["leakage"]["leaked"] == 0 and s["passed"]


# ---------------------------------------------------------------- refusal categories and contrasts

POLICY = Policy.model_validate({"version": "1", "categories": [
    {"name": "weapons", "benign_contrast": ["weapons_history", "fiction_violence"]},
    {"name": "malware", "benign_contrast": ["security_education"]},
    {"name": "self_harm"}]})


def test_contrast_coverage_per_policy_category():
    convs = [conv("r1", expected="refuse", category="weapons"), conv("r2", expected="refuse", category="weapons"),
             conv("c1", expected="comply", category="weapons_history"),
             conv("c2", expected="comply", category="fiction_violence"),
             conv("r3", expected="refuse", category="malware"),
             conv("c3", expected="comply", category="self_harm"),  # same name as the category
             conv("plain")]
    s = compute_stats(convs, policy=POLICY)
    rows = {c["name"]: c for c in s["refusals"]["categories"]}
    assert rows["weapons"] == {"name": "weapons", "refusals": 2, "contrasts": 2, "has_contrast": True,
                               "benign_contrast": ["weapons_history", "fiction_violence"]}
    assert (rows["malware"]["refusals"], rows["malware"]["contrasts"], rows["malware"]["has_contrast"]) == (1, 0, False)
    assert (rows["self_harm"]["refusals"], rows["self_harm"]["contrasts"]) == (0, 1)
    check = {c["name"]: c for c in s["checks"]}["contrast"]
    assert not check["passed"] and "malware" in check["message"] and not s["passed"]
    codes = [w["code"] for w in s["warnings"]]
    assert codes.count("no_contrast") == 1 and codes.count("no_refusals") == 1


def test_without_a_policy_the_categories_come_from_refusal_records():
    convs = [conv("r1", expected="refuse", category="weapons"), conv("c1", expected="comply", category="weapons"),
             conv("r2", expected="refuse", category="drugs"), conv("r3", expected="refuse")]
    r = compute_stats(convs)["refusals"]
    assert [(c["name"], c["contrasts"]) for c in r["categories"]] == [("drugs", 0), ("weapons", 1)]
    assert r["uncategorised"] == 1 and r["share"] == 0.75


def test_dominant_task_is_a_warning_not_a_failure():
    s = compute_stats([conv(f"q {i}", task="a") for i in range(3)] + [conv("other", task="b")])
    assert "dominant_task" in {w["code"] for w in s["warnings"]} and s["passed"]


# ---------------------------------------------------------------- the command

def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def record(i, user, answer="ok", **meta):
    return {"id": i, "messages": [{"role": "user", "content": user},
                                  {"role": "assistant", "content": answer}], **meta}


@pytest.fixture
def files(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [
        record("a", "What is 2+2?", "4", task="math"), record("b", LONG, "a long answer", task="essay"),
        record("r", "How do I build a bomb?", "I can't help with that.", expected="refuse",
               policy_category="weapons", task="safety"),
        record("c", "Who invented dynamite?", "Alfred Nobel.", expected="comply",
               policy_category="weapons_history", task="safety")])
    clean = write_jsonl(tmp_path / "held.jsonl", [record("h1", "What is 3+3?", "6")])
    leaky = write_jsonl(tmp_path / "leaky.jsonl", [record("h2", one_word_changed(LONG), "x")])
    policy = tmp_path / "policy.yaml"
    policy.write_text('version: "1"\ncategories:\n  - name: weapons\n    benign_contrast: [weapons_history]\n')
    return {"train": train, "clean": clean, "leaky": leaky, "dir": tmp_path, "policy": str(policy)}


def run_json(capsys, *argv):
    code = main(["stats", *argv, "--json"])
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON object
    return code, json.loads(out)


def test_cli_clean_data_exits_0_with_the_documented_keys(files, capsys):
    out_path = files["dir"] / "out" / "stats.json"
    code, s = run_json(capsys, files["train"], "--heldout", files["clean"], "--policy", files["policy"],
                       "--out", str(out_path))
    assert code == 0 and s["passed"]
    assert set(s) == {"schema_version", "records", "policy", "counts", "tasks", "turns", "lengths", "tools", "refusals",
                      "duplicates", "leakage", "warnings", "checks", "passed", "files", "quarantined"}
    assert s["files"] == [
        {"path": files["train"], "split": "train", "records": 4, "accepted": 4, "quarantined": 0},
        {"path": files["clean"], "split": "heldout", "records": 1, "accepted": 1, "quarantined": 0}]
    assert json.loads(out_path.read_text()) == s
    assert main(["stats", files["train"], "--policy", files["policy"]]) == 0
    human = capsys.readouterr().out
    assert "effective tasks" in human and "ok   contrast" in human
    # without the policy, weapons_history is not known to contrast weapons
    code, s = run_json(capsys, files["train"])
    assert code == 1 and [c["name"] for c in s["checks"] if not c["passed"]] == ["contrast"]


def test_cli_exit_1_for_leakage_missing_contrast_and_quarantine(files, capsys):
    code, s = run_json(capsys, files["train"], "--heldout", files["leaky"], "--policy", files["policy"])
    assert code == 1 and s["leakage"]["near"]["records"] == 1
    assert [c["name"] for c in s["checks"] if not c["passed"]] == ["leakage"]
    policy = files["dir"] / "policy.yaml"
    policy.write_text('version: "1"\ncategories:\n  - name: weapons\n    benign_contrast: [weapons_history]\n'
                      '  - name: malware\n')
    code, s = run_json(capsys, files["train"], "--policy", str(policy))
    assert code == 1 and [c["name"] for c in s["checks"] if not c["passed"]] == ["contrast"]
    bad = files["dir"] / "bad.jsonl"
    bad.write_text(json.dumps(record("z", "fine", "fine")) + "\n" + '{"messages": [}\n')
    code, s = run_json(capsys, str(bad))
    assert code == 1 and s["quarantined"] == 1 and s["records"] == 1


def test_cli_exit_2_for_unusable_input(files, capsys):
    code, s = run_json(capsys, str(files["dir"] / "missing.jsonl"))
    assert code == 2 and set(s) == {"error"}
    code, s = run_json(capsys, files["train"], "--heldout", files["train"])
    assert code == 2 and "both a training and a held-out file" in s["error"]
    code, s = run_json(capsys, files["train"], "--near-threshold", "1.5")
    assert code == 2


def test_cli_token_lengths_with_a_tokenizer(files, capsys, tmp_path, monkeypatch):
    from sftlab.tokens.encoding import encode
    from sftlab.data.loading import load_files
    from sftlab.demo.tiny import build_tokenizer

    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path / "cache"))
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    code, s = run_json(capsys, files["train"], "--policy", files["policy"], "--tokenizer", str(tmp_path / "tok"),
                       "--template", "chatml")
    assert code == 0 and s["lengths"]["unit"] == "tokens" and s["lengths"]["template"] == "chatml"
    s_first = s
    examples = [encode(c, tok, "chatml") for c in load_files([files["train"]]).conversations]
    assert s["lengths"]["response"]["max"] == max(e.trained_tokens for e in examples)
    assert s["lengths"]["prompt"]["min"] == min(len(e.input_ids) - e.trained_tokens for e in examples)
    code, s = run_json(capsys, files["train"], "--tokenizer", str(tmp_path / "tok"))
    assert code == 2 and "chat_template" in s["error"]
    # the figures come from the prepared-data store of these files: built once, then read
    from sftlab.files import cache_dir

    stores = lambda: {p.name for p in cache_dir("prepared").iterdir() if not p.name.startswith((".", "index"))}  # noqa: E731
    before = stores()
    assert len(before) == 1  # the one store of train.jsonl with chatml
    again = run_json(capsys, files["train"], "--policy", files["policy"], "--tokenizer", str(tmp_path / "tok"),
                     "--template", "chatml")[1]
    assert again == run_json(capsys, files["train"], "--policy", files["policy"], "--tokenizer",
                             str(tmp_path / "tok"), "--template", "chatml")[1]
    assert again == s_first and stores() == before  # nothing new built: the first call's store was found
    code, s = run_json(capsys, files["train"], "--tokenizer", str(tmp_path / "tok"), "--template", "chatml",
                       "--near-threshold", "0.5")
    assert code == 2 and "--near-threshold" in s["error"]


def test_cli_config_options_come_from_the_config(files, capsys, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{path: {tmp_path / 'model'}}}\ndata: {{train: [{files['train']}]}}\n")
    code, s = run_json(capsys, str(config), "--tokenizer", "x", "--max-length", "9")
    assert code == 2 and s["error"].startswith("--tokenizer, --max-length: with a config")
    code, s = run_json(capsys, str(config), files["train"])
    assert code == 2 and "key=value" in s["error"]


def test_refusals_dominated_by_a_few_sentences_are_flagged():
    fixed = "I can't help with that: it is illegal and harms people. I can explain safety instead."
    collapsed = [conv(f"bad request {i}", fixed, expected="refuse", category="x") for i in range(12)]
    s = compute_stats(collapsed + [conv("fine", "sure", expected="comply", category="x")])
    div = s["refusals"]["diversity"]
    assert div["n"] == 12 and div["top_sentences"][0]["count"] == 12 and div["flagged"]
    assert "refusal_collapse" in {w["code"] for w in s["warnings"]}
    import random

    from sftlab.demo.boundary import HARMFUL, refusal

    rng = random.Random(0)
    varied = [conv(act.x, refusal(h, act, rng), expected="refuse", category="x")
              for h in HARMFUL[:3] for act in h.acts[:4]]
    s = compute_stats(varied + [conv("fine", "sure", expected="comply", category="x")])
    assert not s["refusals"]["diversity"]["flagged"]
    assert "refusal_collapse" not in {w["code"] for w in s["warnings"]}


def test_statistics_held_in_parts_equal_one_part_on_public_data():
    """``stats`` without a tokenizer summarises 8,192 conversations at a time (for its progress
    bar); duplicates, near duplicates and leakage found across parts are those one part finds, on
    Dolly's records with copies and one-word edits placed in other parts."""
    from pathlib import Path

    from sftlab.data.chunk_stats import Summaries, merge, with_leakage

    rows = [json.loads(x) for x in (Path(__file__).parent / "data" / "public" / "dolly_15k_sample.jsonl")
            .read_text().splitlines()]
    convs = [Conversation((Message("user", r["instruction"] + " " + r["context"]), Message("assistant", r["response"])),
                          task=r["category"], origin=Origin("dolly.jsonl", i + 1)) for i, r in enumerate(rows)]
    edited = [Conversation((Message("user", c.messages[0].content.replace(" the ", " a ", 1)), c.messages[1]),
                           origin=Origin("copies.jsonl", i + 1)) for i, c in enumerate(convs[:5])]
    train = convs + convs[:3] + edited
    held = [convs[7], edited[4]]
    one = with_leakage(merge(Summaries.in_memory(train)), Summaries.in_memory(train), Summaries.in_memory(held))
    parts = with_leakage(merge(Summaries.in_memory(train, chunk=4)), Summaries.in_memory(train, chunk=4),
                         Summaries.in_memory(held, chunk=1))
    assert parts == one
    dup = one["duplicates"]
    assert (dup["exact"]["records"], dup["exact"]["groups"], dup["near"]["records"]) == (5, 3, 2)
    assert [e["b"]["where"] for e in dup["near"]["examples"]] == ["copies.jsonl:1", "copies.jsonl:5"]
    assert one["leakage"]["exact"]["records"] == 2 and one["leakage"]["leaked"] == 2
