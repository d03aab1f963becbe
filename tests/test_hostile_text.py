"""Hostile records: line separators inside JSON strings, terminal escapes, huge or malformed
rows for the small tools, records lost to a stale flag, leakage behind Unicode spellings.

JSONL is split on ``\\n`` only, by every reader and for every file sftlab writes and reads
back: a raw U+2028, U+2029 or U+0085 inside a JSON string is legal JSON and stays inside its
record. Record text printed to a terminal is shown with its control sequences escaped.
"""
from __future__ import annotations

import json
import re
import shutil

import pytest

from sftlab.cli import main

SEPARATORS = ["\u2028", "\u2029", "\u0085"]
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _conv(i: int, text: str) -> dict:
    return {"id": f"s{i}", "messages": [{"role": "user", "content": f"Question {i}: {text}"},
                                        {"role": "assistant", "content": f"Answer {i}: {text}"}]}


def _separated(path, n: int = 12, extra: list | None = None) -> list[dict]:
    rows = [_conv(i, f"one{SEPARATORS[i % 3]}two{SEPARATORS[(i + 1) % 3]}three") for i in range(n)]
    rows += extra or []
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    assert path.read_text(encoding="utf-8").count("\n") == len(rows)
    return rows


# -- 8: line separators ------------------------------------------------------------------------------

def test_the_readers_keep_a_record_whole_around_line_separators(hostile, tmp_path):
    from sftlab.data.readers import DEFAULT_MAX_RECORD_BYTES, sources

    rows = _separated(tmp_path / "d.jsonl")
    got = [(line, obj, problem) for _, items in sources(tmp_path / "d.jsonl", DEFAULT_MAX_RECORD_BYTES)
           for line, obj, problem, *_ in items]
    assert [g[0] for g in got] == list(range(1, 13)) and all(g[2] is None for g in got)
    assert [g[1] for g in got] == rows


def test_validate_and_its_quarantine_keep_records_whole_around_line_separators(hostile, tmp_path, capsys):
    bad = [{"id": "bad\u2028id", "messages": [{"role": "user", "content": "no answer\u2029here"}]}]
    _separated(tmp_path / "d.jsonl", extra=bad)
    before = hostile.snapshot(tmp_path)
    code = main(["validate", str(tmp_path / "d.jsonl"), "--json", "--quarantine", str(tmp_path / "q.jsonl")])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (report["files"][0]["records"], report["accepted"], report["quarantined"]) == (13, 12, 1)
    lines = (tmp_path / "q.jsonl").read_text(encoding="utf-8").split("\n")
    assert len(lines) == 2 and lines[1] == "" and json.loads(lines[0])["record"]["id"] == "bad\u2028id"
    assert {k: v for k, v in hostile.snapshot(tmp_path).items() if k != "q.jsonl"} == before


def test_prepare_and_train_keep_records_whole_around_line_separators(hostile, hostile_assets, tmp_path, capsys):
    dup = [_conv(0, f"one{SEPARATORS[0]}two{SEPARATORS[1]}three")]  # a duplicate id: quarantined
    _separated(tmp_path / "d.jsonl", extra=dup)
    cfg = hostile.config(hostile_assets, tmp_path / "run", data={"train": [str(tmp_path / "d.jsonl")],
                                                                   "cache_dir": str(tmp_path / "cache"),
                                                                   "max_quarantined_share": 0.5},
                         optim={"max_steps": 1}, encoding={"max_length": 256})
    assert main(["prepare", str(cfg)]) in (0, 1), capsys.readouterr().err
    code = main(["train", str(cfg)])
    assert code == 0, json.loads((tmp_path / "run" / "run.json").read_text())["outcome"]["train"]["exit_reason"]
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    split = manifest["data"]["splits"]["train"]
    assert (split["records"], split["quarantined"]) == (13, 1)
    q = (tmp_path / "run" / "data" / "quarantine.jsonl").read_text(encoding="utf-8").split("\n")
    assert len(q) == 2 and json.loads(q[0])["record"]["messages"] == dup[0]["messages"]


def test_label_reads_and_rewrites_responses_holding_line_separators(hostile, tmp_path, capsys, monkeypatch):
    import io

    rows = [{"id": i, "response": f"a{s}b", "prompt": f"p{s}q"} for i, s in enumerate(SEPARATORS)]
    src = tmp_path / "outputs.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.setattr("sys.stdin", io.StringIO("c\nr\np\n"))
    assert main(["label", str(src), "--all", "--out", str(tmp_path / "l.jsonl")]) == 0
    labelled = (tmp_path / "l.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
    assert [json.loads(x)["response"] for x in labelled] == [r["response"] for r in rows]
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["label", str(src), "--all", "--out", str(tmp_path / "l.jsonl")]) == 0
    assert "0 responses to label (3 already" in capsys.readouterr().out


def test_eval_detector_and_prompt_sets_read_lines_with_separators_whole(hostile, tmp_path):
    from sftlab.evaluation.agreement import load_labelled
    from sftlab.evaluation.prompts import load_prompt_set

    rows = [{"response": f"I cannot{s} do that", "label": "refuse", "prompt": f"x{s}y"} for s in SEPARATORS]
    (tmp_path / "l.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                      encoding="utf-8")
    labelled = load_labelled(str(tmp_path / "l.jsonl"))
    assert labelled.responses == [r["response"] for r in rows] and not labelled.bad_rows
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"id": str(i), "prompt": f"say{s}it"},
                                                         ensure_ascii=False) + "\n"
                                              for i, s in enumerate(SEPARATORS)), encoding="utf-8")
    prompts = load_prompt_set(str(tmp_path / "p.jsonl"))
    assert [p.text for p in prompts.prompts] == [f"say{s}it" for s in SEPARATORS] and not prompts.bad_rows


def test_metrics_and_the_report_read_lines_with_separators_whole(hostile, hostile_runs, tmp_path, capsys):
    from sftlab.report.inputs import read_run
    from sftlab.train.metrics import read_metrics

    run = tmp_path / "run"
    shutil.copytree(hostile_runs["full"], run)
    before = read_metrics(run / "metrics.jsonl")
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": 2, "error": "a\u2028b\u2029c\u0085d"}, ensure_ascii=False) + "\n")
    assert read_metrics(run / "metrics.jsonl") == [*before, {"step": 2, "error": "a\u2028b\u2029c\u0085d"}]
    files = read_run(run)
    assert files.metrics[-1]["error"] == "a\u2028b\u2029c\u0085d" and not files.problems


# -- 16: records lost or leaked --------------------------------------------------------------------

def _array_validate(capsys, *paths) -> dict:
    code = main(["validate", *map(str, paths), "--json", "--max-record-mb", "0.01"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and sum(f["records"] for f in report["files"]) == report["accepted"] + report["quarantined"]
    return report


def test_a_huge_integer_in_one_array_record_quarantines_that_record_only(hostile, tmp_path, capsys):
    good = [_conv(i, "fine") for i in range(4)]
    huge = "9" * 5000
    big = '{"id": "big", "pad": "' + "x" * 12000 + '", "n": ' + huge + "}"  # too large and a huge number
    small = '{"id": "small", "n": ' + huge + "}"
    text = "[\n" + ",\n".join([big, json.dumps(good[0]), small, json.dumps(good[1])]) + "\n]\n"
    (tmp_path / "a.json").write_text(text)
    (tmp_path / "b.json").write_text("[\n" + ",\n".join([json.dumps(good[2]), big]) + "\n]\n")
    (tmp_path / "c.json").write_text("[\n" + json.dumps(good[3]) + "\n]\n")
    report = _array_validate(capsys, tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json")
    assert report["accepted"] == 4 and report["quarantined"] == 3


LEAKED = {
    "NFD": lambda t: __import__("unicodedata").normalize("NFD", t),
    "zero-width spaces": lambda t: t.replace("caf", "ca\u200bf").replace("rich", "ri\u200cch"),
    "soft hyphens and word joiners": lambda t: t.replace("number", "num\u00adber\u2060"),
    "full-width letters": lambda t: t.replace("Describe", "Ｄｅｓｃｒｉｂｅ"),
    "a BOM and bidi marks": lambda t: "\ufeff" + t.replace(" in ", " \u200ein\u200f "),
}


@pytest.mark.parametrize("spelling", sorted(LEAKED))
def test_held_out_leakage_is_found_whatever_the_unicode_spelling(hostile, tmp_path, capsys, spelling):
    prompt = "Describe the café number {} in Zürich please"
    train = [{"id": f"t{i}", "messages": [{"role": "user", "content": prompt.format(i)},
                                          {"role": "assistant", "content": f"It is nice {i}."}]} for i in range(6)]
    held = [{"id": "h", "messages": [{"role": "user", "content": LEAKED[spelling](prompt.format(3))},
                                     {"role": "assistant", "content": "Other."}]},
            {"id": "fresh", "messages": [{"role": "user", "content": "Something unrelated entirely"},
                                         {"role": "assistant", "content": "Yes."}]}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp_path / "h.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    main(["stats", str(tmp_path / "t.jsonl"), "--heldout", str(tmp_path / "h.jsonl"), "--json"])
    leakage = json.loads(capsys.readouterr().out)["leakage"]
    assert leakage["leaked"] == 1
    assert [e["heldout"]["id"] for e in leakage["exact"]["examples"]] == ["h"]


# -- 11: terminal escapes --------------------------------------------------------------------------

HOSTILE_TEXT = ("clear\x1b[2J\x1b[H title\x1b]0;pwned\x07 link\x1b]8;;http://x\x1b\\here\x1b]8;;\x1b\\ "
                "cr\roverwrite csi\x9b31m bell\x07 bs\x08 rtl\u202egnp.exe nul\x00 del\x7f")


def test_terminal_safe_leaves_no_control_character_but_newline_and_tab(hostile):
    from sftlab.terminal import terminal_safe

    every = "".join(map(chr, range(0x00, 0xa0))) + "\u061c\u200e\u200f\u2028\u2029\u202a\u202e\u2066\u2069"
    shown = terminal_safe(every)
    assert set(RAW_CONTROL.findall(shown)) <= {"\n", "\t"} and "\u2028" not in shown and "\u200e" not in shown
    assert terminal_safe("plain café\ttext\n") == "plain café\ttext\n"


def test_inspect_prints_record_text_with_control_sequences_escaped(hostile, hostile_assets, tmp_path, capsys):
    rec = {"id": "evil\x1b[31m", "messages": [{"role": "user", "content": HOSTILE_TEXT},
                                             {"role": "assistant", "content": HOSTILE_TEXT}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(rec) + "\n")
    assert main(["inspect", str(tmp_path / "d.jsonl"), "--tokenizer", str(hostile_assets / "model"),
                 "--template", "chatml", "--max-length", "4096"]) == 0
    out = capsys.readouterr().out
    assert not set(RAW_CONTROL.findall(out)) - {"\n", "\t"}, repr(out)
    assert "\\x1b[2J" in out and "\\u202e" in out and "\\r" in out


def test_label_prints_responses_with_control_sequences_escaped(hostile, tmp_path, capsys, monkeypatch):
    import io

    rows = [{"id": "x\x1b[2J", "model": "m\x9b2J", "response": HOSTILE_TEXT, "prompt": HOSTILE_TEXT,
             "detectors": {"d\x1b[1m": {"label": "refuse\x07", "p_refusal": 0.4}}}]
    (tmp_path / "o.jsonl").write_text(json.dumps(rows[0]) + "\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("s\n"))
    assert main(["label", str(tmp_path / "o.jsonl"), "--all", "--out", str(tmp_path / "l.jsonl")]) == 0
    out = capsys.readouterr()
    assert not set(RAW_CONTROL.findall(out.out + out.err)) - {"\n", "\t"}, repr(out.out)
    assert "\\x1b]0;pwned\\x07" in out.out


# -- 12: small tools, big inputs -------------------------------------------------------------------

def _bad_lines() -> list[bytes]:
    return [b'{"id": 1, "response": 5, "label": "refuse"}',  # wrong type
            b'{"id": 2, "response": ["a"], "label": {"x": 1}}',
            b'{"id": 3, "response": "\\ud800 lone", "label": "refuse"}',  # lone surrogate
            b'{"id": 4, "response": "bad \xff\xfe utf8", "label": "refuse"}',  # invalid UTF-8
            b"[" * 100000 + b"]" * 100000,  # deeper than Python's parser
            b'{"id": 5, "response": ' + b'{"a": ' * 80 + b"1" + b"}" * 80 + b', "label": "refuse"}',
            b'{"id": 6, "response": "x", "label": "refuse", "n": ' + b"9" * 5000 + b"}",
            b'{"id": 7, "response": "x", "label": ["refuse"], "expected": ["x"], "detectors": 5}',
            b"not json at all", b"[1, 2]"]


def _good_lines(n: int = 4) -> list[bytes]:
    return [json.dumps({"id": f"g{i}", "response": "I cannot help with that." if i % 2 else "Sure, here it is.",
                        "label": "refuse" if i % 2 else "comply", "model": {"odd": i}, "prompt": ["a", 1],
                        "detectors": {"d": {"label": "refuse", "p_refusal": "high"}, "e": None}}).encode()
            for i in range(n)]


def test_eval_detector_quarantines_malformed_rows_and_scores_the_rest(hostile, tmp_path, capsys):
    path = tmp_path / "labelled.jsonl"
    path.write_bytes(b"\n".join(_bad_lines() + _good_lines()) + b"\n")
    before = hostile.snapshot(tmp_path)
    code = main(["eval-detector", "--labelled", str(path), "--detector", "rules", "--json"])
    out = capsys.readouterr()
    assert code in (0, 1) and "Traceback" not in out.err
    report = json.loads(out.out)
    assert report["labelled"]["n"] == 4 and len(report["bad_rows"]) == 10, report
    assert hostile.snapshot(tmp_path) == before


def test_eval_detector_reads_csv_fields_over_128_kib(hostile, tmp_path, capsys):
    long = "I cannot do that. " + "x" * 200_000
    (tmp_path / "l.csv").write_text(f'response,label\n"{long}",refuse\nSure,comply\n')
    code = main(["eval-detector", "--labelled", str(tmp_path / "l.csv"), "--detector", "rules", "--json"])
    assert code in (0, 1) and json.loads(capsys.readouterr().out)["labelled"]["n"] == 2


def test_label_skips_malformed_rows_by_line_and_labels_the_rest(hostile, tmp_path, capsys, monkeypatch):
    import io

    path = tmp_path / "outputs.jsonl"
    path.write_bytes(b"\n".join(_bad_lines() + _good_lines()) + b"\n")
    before = hostile.snapshot(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("c\nr\nc\nr\nc\n"))
    assert main(["label", str(path), "--all", "--out", str(tmp_path / "l.jsonl")]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "skipped 9 line(s)" in out.err and "outputs.jsonl:1:" in out.err
    assert len((tmp_path / "l.jsonl").read_text().split("\n")) == 5 + 1  # the 4 good rows and id 7
    assert {k: v for k, v in hostile.snapshot(tmp_path).items() if k != "l.jsonl"} == before


@pytest.mark.parametrize("arg", [["--temperature", "1e-300"], ["--temperature", "1e300"], ["--seed", str(2**70)],
                                 ["--seed", "-1"], ["--max-new-tokens", str(10**12)]])
def test_eval_decoding_settings_out_of_range_are_one_line(hostile, hostile_runs, tmp_path, capsys, arg):
    (tmp_path / "p.jsonl").write_text('{"id": "p", "prompt": "What is 2 + 2?"}\n')
    code = main(["eval", "--model", str(hostile_runs["full"] / "final"), "--prompts", str(tmp_path / "p.jsonl"),
                 "--out", str(tmp_path / "ev"), "--detector", "rules", "--json", *arg])
    err = json.loads(capsys.readouterr().out)["error"]
    assert code == 2 and arg[0].lstrip("-").replace("-", "_") in err.replace("-", "_"), err
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("where", ["prompt", "system prompt"])
def test_eval_refuses_a_prompt_longer_than_the_model_can_read_by_name(hostile, hostile_runs, tmp_path, capsys,
                                                                      where):
    huge = "word " * (400_000 if where == "prompt" else 200_000)  # 2 MB, 1 MB
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "long", "prompt": huge if where == "prompt" else "Hi"})
                                      + "\n")
    extra = ["--system-prompt", huge] if where == "system prompt" else []
    code = main(["eval", "--model", str(hostile_runs["full"] / "final"), "--prompts", str(tmp_path / "p.jsonl"),
                 "--out", str(tmp_path / "ev"), "--detector", "rules", "--json", *extra])
    err = json.loads(capsys.readouterr().out)["error"]
    assert code == 2 and "'long'" in err and "context" in err


def test_a_regex_answer_whose_repeat_count_overflows_is_a_skipped_row(hostile, hostile_runs, tmp_path, capsys):
    rows = [{"id": "rx", "prompt": "Say x", "answer": "x{4294967296}", "answer_type": "regex"},
            {"id": "rx2", "prompt": "Say y", "answer": "(a|aa)+$", "answer_type": "regex"}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["eval", "--model", str(hostile_runs["full"] / "final"), "--prompts", str(tmp_path / "p.jsonl"),
                 "--out", str(tmp_path / "ev"), "--detector", "rules", "--json", "--max-new-tokens", "2",
                 "--conditions", "training_template"])
    out = capsys.readouterr()
    assert code == 1 and "Traceback" not in out.err
    assert "p.jsonl:1" in out.err and "regular expression" in out.err


def _mutations(doc, path=()):
    """Every key path of ``doc`` (lists through their first item)."""
    items = doc.items() if isinstance(doc, dict) else [(0, doc[0])] if isinstance(doc, list) and doc else []
    for k, v in items:
        yield path + (k,)
        yield from _mutations(v, path + (k,))


def _set(doc, path, value):
    doc = json.loads(json.dumps(doc))
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return doc


EVAL_JSON = [{"passed": "yes"}, {"results": 5}, {"results": {"tuned": [1]}}, {"gates": "x"},
             {"gates": [5, {"passed": "no", "name": []}]}, {"pairs": {"a": 1}}, {"summary": []},
             {"results": {"tuned": {"training_template": {"all": {"harmful_refusal_rate": "high"}}}}}]


def test_report_on_run_files_of_the_wrong_type_never_gives_a_traceback(hostile, hostile_runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(hostile_runs["full"], run)
    originals = {n: json.loads((run / "data" / n).read_text()) for n in ("stats.json", "mask_preview.json")}
    cases = [(n, _set(doc, p, v)) for n, doc in originals.items()
             for p, v in zip(list(_mutations(doc))[::7], [None, "x", 5, [1], {"a": 1}, -1.5, True] * 100)]
    cases += [("eval/eval.json", e) for e in EVAL_JSON]
    (run / "eval").mkdir()
    codes = []
    for name, doc in cases:
        for n, original in originals.items():
            (run / "data" / n).write_text(json.dumps(original))
        (run / name).write_text(json.dumps(doc))
        codes.append(main(["report", str(run), "--out", str(tmp_path / "page.html"), "--json"]))
        out = capsys.readouterr()
        assert "Traceback" not in out.err and json.loads(out.out)["report"], (name, doc)
        (run / "eval" / "eval.json").unlink(missing_ok=True)
    assert len(cases) > 20 and set(codes) <= {0, 1}


def test_validate_and_error_lines_show_record_ids_and_paths_escaped(hostile, tmp_path, capsys):
    rec = {"id": "id\x1b[2J\x1b]0;t\x07", "messages": [{"role": "user", "content": "no answer"}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps(_conv(1, "ok")) + "\n")
    assert main(["validate", str(tmp_path / "d.jsonl"), "--quarantine", str(tmp_path / "q.jsonl")]) == 1
    out = capsys.readouterr()
    assert not set(RAW_CONTROL.findall(out.out + out.err)) - {"\n", "\t"} and "\\x1b[2J" in out.out
    evil = tmp_path / "evil\x1b[2J\nname.jsonl"
    code = main(["validate", str(evil)])
    err = hostile.refusal(capsys, code, "\\x1b[2J")
    assert not set(RAW_CONTROL.findall(err)) - {"\n"}
