"""Hostile records and mixtures: nothing accepted that cannot be trained as asked.

An unpaired surrogate is no character: wherever it sits in a record (a message key, a tool call id,
tool arguments or schemas whose JSON text escapes it once more), ``validate`` quarantines the
record naming the field, so ``prepare`` never meets it. A tool message that answers no call is
named for what it is. A mixture whose loss weights name a slice the data does not have, or give
every slice 0, would train nothing as asked: refused with the slices the data has. Every case runs
under the corpus' time limit. A record with a 5000-digit integer, a weight of 1e39 or a first line
that is an array is quarantined alone; the record size limit refuses values out of range.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.cli import main

pytestmark = pytest.mark.usefixtures("time_limit")  # conftest.py: every case under HOSTILE_LIMIT_S


CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
TOOLS = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {}}}]


def _tool_record(rid: str, *, call=CALL, result_id="c1", tools=None) -> dict:
    rec = {"id": rid, "messages": [{"role": "user", "content": "hi"},
                                   {"role": "assistant", "content": "", "tool_calls": [call]},
                                   {"role": "tool", "tool_call_id": result_id, "content": "r"},
                                   {"role": "assistant", "content": "done"}]}
    return {**rec, "tools": tools} if tools is not None else rec


# Each line is written as JSON text by hand: "\ud800" is the escape a file holds, "\\ud800" the
# escape inside a JSON string that is itself JSON (arguments, schemas given as text).
LONE = {
    "message_key": ('{"id": "k", "messages": [{"role": "user", "content": "hi", "x\\ud800": 1}, '
                    '{"role": "assistant", "content": "ok"}]}', "messages[0]"),
    "call_id": (json.dumps(_tool_record("k", call={**CALL, "id": "c\udc00"}, result_id="c\udc00"))
                .replace("\\udc00", "\\ud800"), "messages[1].tool_calls[0]"),
    "result_id": (json.dumps(_tool_record("k", result_id="c1")).replace('"tool_call_id": "c1"',
                                                                        '"tool_call_id": "c1\\ud800"'),
                  "messages[2].tool_call_id"),
    "arguments_escaped_twice": (json.dumps(_tool_record("k", call={**CALL, "function": {
        "name": "f", "arguments": '{"q": "\\ud800"}'}})), "messages[1].tool_calls[0].function.arguments"),
    "arguments_key": (json.dumps(_tool_record("k", call={**CALL, "function": {"name": "f", "arguments": {
        "q\udc00": 1}}})).replace("\\udc00", "\\udbff"), "messages[1].tool_calls[0]"),
    "schema_escaped_twice": (json.dumps(_tool_record("k", tools=json.dumps(
        [{"type": "function", "function": {"name": "f", "description": "\udfff", "parameters": {}}}]))), "tools"),
    "schema_key": (json.dumps(_tool_record("k", tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"properties": {"q\udc00": {}}}}}])).replace("\\udc00", "\\ud83d"), "tools"),
}


@pytest.mark.parametrize("where", sorted(LONE))
def test_a_lone_surrogate_anywhere_is_quarantined_by_validate(tmp_path, capsys, where):
    line, field = LONE[where]
    good = json.dumps(_tool_record("good", tools=TOOLS))
    data = tmp_path / "a.jsonl"
    data.write_text(good + "\n" + line + "\n")
    source = data.read_bytes()
    q = tmp_path / "q.jsonl"
    assert main(["validate", str(data), "--json", "--quarantine", str(q)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert (out["records"], out["accepted"], out["quarantined"]) == (2, 1, 1)
    (entry,) = [json.loads(x) for x in q.read_text().splitlines()]
    assert (entry["line"], entry["code"], entry["field"]) == (2, "invalid_text", field)
    assert data.read_bytes() == source


def test_what_validate_accepts_prepare_encodes(tmp_path):
    """The same lines through the prepared-data store: no record fails later than validate."""
    from sftlab.demo.tiny import build_tokenizer
    from sftlab.prepare import prepare
    from sftlab.tokens.templates import get_template

    data = tmp_path / "a.jsonl"
    plain = {"id": "good", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data.write_text("".join(line + "\n" for line, _ in LONE.values()) + json.dumps(plain) + "\n")
    tok = build_tokenizer(special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    store = prepare([str(data)], tok, get_template("chatml", tok), options={"max_length": 128},
                    cache_dir=tmp_path / "cache")
    (f,) = store.files
    assert (f["records"], f["accepted"], f["quarantined"]) == (len(LONE) + 1, 1, len(LONE))
    stages = [json.loads(x)["stage"] for x in store.quarantine_path.read_text().splitlines()]
    assert stages == ["load"] * len(LONE)


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}, {"role": "assistant", "content": "a"}],
    [{"role": "system", "content": "s"}, {"role": "tool", "tool_call_id": "x", "content": "r"},
     {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
    [{"role": "tool", "name": "f", "content": "r"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
])
def test_a_tool_message_that_answers_no_call_is_named_so(tmp_path, capsys, messages):
    data = tmp_path / "a.jsonl"
    data.write_text(json.dumps({"id": "t", "messages": messages}) + "\n")
    q = tmp_path / "q.jsonl"
    assert main(["validate", str(data), "--quarantine", str(q)]) == 1
    (entry,) = [json.loads(x) for x in q.read_text().splitlines()]
    assert entry["code"] == "result_without_call" and entry["field"].endswith(".role")
    capsys.readouterr()


@pytest.mark.parametrize("mixture,named", [
    ({"loss_weights": {"maths": 2.0}}, "['maths']"),
    ({"loss_weights": {"unsliced": 0.0}}, "every slice"),
    ({"loss_weights": {"a": 0.0, "b": 0.0}}, "['a', 'b']"),
    ({"sampling_weights": {"maths": 1.0}}, "['maths']"),
])
def test_mixture_weights_that_would_train_nothing_as_asked_are_refused(hostile, hostile_assets, tmp_path, capsys,
                                                                       mixture, named):
    run = tmp_path / "run"
    err = hostile.refusal(capsys, main(["train", str(hostile.config(hostile_assets, run, mixture=mixture))]))
    assert named in err and "unsliced" in err  # what the data has
    assert not (run / "checkpoints").exists() and not (run / "final").exists()


def test_loss_weights_of_the_slices_the_data_has_still_train(hostile, hostile_assets, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = hostile.config(hostile_assets, run, mixture={"loss_weights": {"unsliced": 0.5}})
    assert main(["train", str(cfg), "optim.max_steps=1"]) == 0
    capsys.readouterr()
    assert json.loads((Path(run) / "run.json").read_text())["mixture"]["loss_weights"] == {"unsliced": 0.5}


def test_jsonl_whose_first_line_is_an_array_keeps_every_good_record(hostile, tmp_path, capsys):
    path = hostile.write_jsonl(tmp_path / "a.jsonl", [[1, 2], *hostile.records(5)])
    code, out = hostile.validate_json(capsys, path)
    assert code == 1 and (out["records"], out["accepted"], out["quarantined"]) == (6, 5, 1)
    assert out["reasons"] == {"not_an_object": 1}


@pytest.mark.parametrize("layout", ["jsonl", "json"])
def test_an_integer_of_5000_digits_quarantines_its_record_only(hostile, tmp_path, capsys, layout):
    huge = '{"id": "big", "weight": ' + "9" * 5000 + "}"
    rows = [json.dumps(r) for r in hostile.records(3)]
    path = tmp_path / f"a.{layout}"
    if layout == "jsonl":
        path.write_text("\n".join([rows[0], huge, *rows[1:]]) + "\n")
    else:
        path.write_text("[" + ",\n".join([rows[0], huge, *rows[1:]]) + "]")
    code, out = hostile.validate_json(capsys, path)
    assert code == 1 and (out["accepted"], out["quarantined"]) == (3, 1)
    q = (tmp_path / "quarantine.jsonl").read_text()
    assert "4,300 digits" in q
    assert main(["stats", str(path)]) in (0, 1)
    capsys.readouterr()


@pytest.mark.parametrize("extra", [{"id": "\ud800"}, {"meta": {"source": "x\udfff"}},
                                   {"meta": {"\ud800key": 1}}, {"tags": [{"a": "\udc00"}]}])
def test_a_lone_surrogate_anywhere_in_a_record_is_quarantined_by_validate(hostile, tmp_path, capsys, extra):
    from sftlab.data.loading import load_files

    rows = hostile.records(2)
    rows[1].update(extra)
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json.dumps writes \ud800 escapes
    code, out = hostile.validate_json(capsys, path)
    assert code == 1 and out["reasons"] == {"invalid_text": 1}
    report = load_files([path])
    assert len(report.conversations) == 1


def test_a_message_weight_of_1e39_is_quarantined_not_a_nan_at_step_one(hostile, tmp_path, capsys):
    rows = hostile.records(2)
    rows[1]["messages"][1]["weight"] = 1e39
    code, out = hostile.validate_json(capsys, hostile.write_jsonl(tmp_path / "a.jsonl", rows))
    assert code == 1 and out["reasons"] == {"bad_weight": 1}


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-3"])
def test_max_record_mb_out_of_range_is_refused(hostile, tmp_path, capsys, value):
    path = hostile.write_jsonl(tmp_path / "a.jsonl", [hostile.good])
    assert "--max-record-mb" in hostile.refusal(capsys, main(["validate", str(path), "--max-record-mb", value]))
