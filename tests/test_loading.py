"""Readers, validation rules and the quarantine: every record accepted or quarantined, with
file, line, id and field in its reason."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftlab.errors import UsageError
from sftlab.data.loading import check_conversation, load_files
from sftlab.data.policy import Policy

GOOD = {"messages": [{"role": "user", "content": "What is 2+2?"},
                     {"role": "assistant", "content": "4"}]}


def good(i, **meta):
    return {**GOOD, "id": f"r{i}", **meta}


def write_jsonl(path, rows):
    """Rows are dicts (dumped as JSON), str (written as they are) or bytes (raw)."""
    with open(path, "wb") as f:
        for row in rows:
            if isinstance(row, dict):
                row = json.dumps(row)
            if isinstance(row, str):
                row = row.encode("utf-8")
            f.write(row + b"\n")
    return path


def only_entry(report):
    assert len(report.quarantined) == 1, [e.message for e in report.quarantined]
    return report.quarantined[0]


def check_counts(report):
    for f in report.files:
        assert f.records == f.accepted + f.quarantined
        assert f.quarantined == sum(e.file == f.path for e in report.quarantined)
    assert report.records == report.accepted + report.quarantined_count


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


# (messages, code, field, message_index) for each conversation-level rule
RULES = [
    (msgs(("user", "q"), ("bot", "a")), "unknown_role", "messages[1].role", 1),
    ([{"role": "user", "content": None}, {"role": "assistant", "content": "a"}],
     "non_string_content", "messages[0].content", 0),
    (msgs(("system", "s"), ("user", "q")), "no_assistant", "messages", None),
    (msgs(("user", "q"), ("assistant", "  \n")), "empty_assistant", "messages[1].content", 1),
    (msgs(("user", "q"), ("system", "s"), ("assistant", "a")), "system_not_first",
     "messages[1].role", 1),
    (msgs(("user", "q"), ("user", "q2"), ("assistant", "a")), "broken_alternation",
     "messages[1].role", 1),
    (msgs(("assistant", "hello"), ("user", "q"), ("assistant", "a")), "broken_alternation",
     "messages[0].role", 0),
    (msgs(("user", "q"), ("tool", "t"), ("assistant", "a")), "broken_alternation",
     "messages[1].role", 1),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": -0.5}],
     "bad_weight", "messages[1].weight", 1),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "train": "no"}],
     "bad_train", "messages[1].train", 1),
]


@pytest.mark.parametrize("messages,code,field,index", RULES, ids=[r[1] + str(i) for i, r in enumerate(RULES)])
def test_each_rule_names_file_line_id_and_field(tmp_path, messages, code, field, index):
    path = write_jsonl(tmp_path / "d.jsonl", [good(0), {"id": "bad-1", "messages": messages},
                                              good(2)])
    report = load_files([path])
    e = only_entry(report)
    assert (e.code, e.line, e.id, e.field, e.message_index) == (code, 2, "bad-1", field, index)
    assert e.message.startswith(f"{path}:2: record 'bad-1': {field}: ")
    assert "expected" in e.reason and "fix:" in e.reason
    assert e.record == {"id": "bad-1", "messages": messages}
    assert [c.id for c in report.conversations] == ["r0", "r2"]
    check_counts(report)


def test_tool_messages_between_assistant_turns_are_accepted():
    from sftlab.data.formats import to_conversation

    messages = msgs(("system", "s"), ("user", "q"), ("assistant", "calling"), ("tool", "t1"), ("tool", "t2"),
                    ("assistant", "a"), ("user", "thanks"), ("assistant", "welcome"))
    messages[2]["tool_calls"] = [{"type": "function", "function": {"name": "f", "arguments": {}}}] * 2
    check_conversation(to_conversation({"messages": messages}))  # does not raise


def test_malformed_json_blank_lines_and_non_objects(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [good(0), "", "   ", '{"messages": [', "[1, 2]",
                                              '"text"', good(6)])
    report = load_files([path])
    assert [(e.line, e.code) for e in report.quarantined] == [
        (4, "bad_json"), (5, "not_an_object"), (6, "not_an_object")]
    assert report.quarantined[0].record == '{"messages": ['
    assert report.files[0].records == 5  # blank lines are not records
    check_counts(report)


def test_invalid_utf8_line_is_quarantined_and_the_rest_is_read(tmp_path):
    bad = b'{"id": "x", "instruction": "caf\xe9", "output": "ok"}'
    path = write_jsonl(tmp_path / "d.jsonl", [good(0), bad, good(2)])
    report = load_files([path])
    e = only_entry(report)
    assert (e.code, e.line) == ("invalid_utf8", 2)
    assert e.record == '{"id": "x", "instruction": "caf\\xe9", "output": "ok"}'
    assert e.record.encode("ascii").decode("unicode_escape").encode("latin-1") == bad  # lossless
    assert report.accepted == 2


def test_unpaired_surrogate_escape_is_quarantined_and_written_back_losslessly(tmp_path):
    """JSON may spell "\\ud800", which no tokenizer can encode: refused at load, never a crash later."""
    bad = '{"id": "s", "messages": [{"role": "user", "content": "caf\\u00e9 \\ud800!"}, {"role": "assistant", "content": "ok"}]}'
    path = write_jsonl(tmp_path / "d.jsonl", [good(0), bad, good(2)])
    report = load_files([path])
    e = only_entry(report)
    assert (e.code, e.line, e.field, e.message_index) == ("invalid_text", 2, "messages[0].content", 0)
    assert "U+D800 at character 5" in e.reason and report.accepted == 2
    out = report.write_quarantine(tmp_path / "q.jsonl")
    (line,) = out.read_text(encoding="utf-8").splitlines()
    assert json.loads(line)["record"] == json.loads(bad)  # the record as it was read, escapes kept


def test_invalid_utf8_inside_a_json_array(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[' + json.dumps(good(0)).encode() + b', {"instruction": "caf\xe9", '
                     b'"output": "ok"}, ' + json.dumps(good(2)).encode() + b']')
    report = load_files([path])
    e = only_entry(report)
    assert (e.code, e.line, e.record) == ("invalid_utf8", 2,
                                          {"instruction": "caf\\xe9", "output": "ok"})
    assert report.accepted == 2
    report.write_quarantine(tmp_path / "q.jsonl")  # writable: no lone surrogates left


def test_absurd_nesting_and_size(tmp_path):
    deep = {"messages": GOOD["messages"], "meta": {"x": json.loads("[" * 70 + "]" * 70)}}
    ok_depth = {"messages": GOOD["messages"], "meta": {"x": json.loads("[" * 50 + "]" * 50)}}
    very_deep = '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    big = {**GOOD, "id": "big", "meta": {"blob": "x" * 300_000}}
    path = write_jsonl(tmp_path / "d.jsonl", [deep, ok_depth, very_deep, big])
    report = load_files([path], max_record_bytes=250_000)
    assert [(e.line, e.code) for e in report.quarantined] == [
        (1, "too_deep"), (3, "too_deep"), (4, "too_large")]
    assert "nested more than 64 levels" in report.quarantined[0].reason
    assert "over the limit of 250,000" in report.quarantined[2].reason
    assert len(report.quarantined[2].record) == 2000  # a preview, not 300 kB
    assert report.accepted == 1
    arr = tmp_path / "d.json"
    arr.write_text(json.dumps([deep, big, good(3)]))
    report = load_files([arr], max_record_bytes=250_000)
    assert [(e.line, e.code) for e in report.quarantined] == [(1, "too_deep"), (2, "too_large")]


def test_duplicate_ids_name_the_first_occurrence(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [good(0), good(1)])
    b = write_jsonl(tmp_path / "b.jsonl", [good(2), good(1), good(1)])
    report = load_files([a, b])
    assert [(e.file, e.line, e.code) for e in report.quarantined] == [
        (str(b), 2, "duplicate_id"), (str(b), 3, "duplicate_id")]
    assert f"first seen at {a}:2" in report.quarantined[0].reason
    assert [f.to_dict() for f in report.files] == [
        {"path": str(a), "records": 2, "accepted": 2, "quarantined": 0},
        {"path": str(b), "records": 3, "accepted": 1, "quarantined": 2}]


def test_policy_categories(tmp_path):
    policy = Policy.model_validate({"version": "v1", "categories": [
        {"name": "weapons", "benign_contrast": ["weapons_history"]}]})
    rows = [good(0, expected="refuse", policy_category="weapons"),
            good(1, expected="refuse", policy_category="drugs"),
            good(2, expected="refuse"),
            good(3, expected="comply", policy_category="weapons_history"),
            good(4, expected="comply", policy_category="weapons"),
            good(5, expected="comply", policy_category="cooking"),
            good(6, expected="comply"),
            {**good(7), "meta": {"expected": "refuse", "policy_category": "drugs"}}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    report = load_files([path], policy=policy)
    assert [(e.line, e.code, e.field) for e in report.quarantined] == [
        (2, "unknown_category", "policy_category"), (3, "unknown_category", "policy_category"),
        (6, "unknown_category", "policy_category"), (8, "unknown_category", "policy_category")]
    assert "'drugs'" in report.quarantined[0].reason and "known: weapons" in report.quarantined[0].reason
    assert "'cooking'" in report.quarantined[2].reason
    assert load_files([path]).accepted == 8  # without a policy nothing is checked


def test_every_file_counts_add_up_with_mixed_problems(tmp_path):
    rows = [good(i) if i % 3 else {"id": f"r{i}", "messages": msgs(("user", "q"))}
            for i in range(30)] + ["not json", b"\xff\xfe"]
    report = load_files([write_jsonl(tmp_path / "d.jsonl", rows)])
    assert (report.records, report.accepted, report.quarantined_count) == (32, 20, 12)
    assert report.reasons() == {"no_assistant": 10, "bad_json": 1, "invalid_utf8": 1}
    check_counts(report)


def test_write_quarantine_roundtrip(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [good(0), {"id": "x", "messages": msgs(("bot", "a"))},
                                              "{oops"])
    report = load_files([path])
    out = report.write_quarantine(tmp_path / "sub" / "q.jsonl")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0] == {"file": str(path), "line": 2, "id": "x", "code": "unknown_role", "stage": "load",
                        "reason": report.quarantined[0].reason, "field": "messages[0].role",
                        "message_index": 0, "record": {"id": "x", "messages": msgs(("bot", "a"))}}
    assert lines[1]["record"] == "{oops" and lines[1]["line"] == 3
    empty = load_files([write_jsonl(tmp_path / "ok.jsonl", [good(0)])])
    assert empty.write_quarantine(tmp_path / "q0.jsonl").read_text() == ""


def test_json_array_single_object_and_jsonl_named_json(tmp_path):
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([good(0), {"bad": 1}, good(2)], indent=2))
    report = load_files([arr])
    assert report.accepted == 2 and only_entry(report).line == 2
    single = tmp_path / "one.json"
    single.write_text(json.dumps(good(0), indent=2))
    assert [c.id for c in load_files([single]).conversations] == ["r0"]
    lines = write_jsonl(tmp_path / "lines.json", [good(0), good(1)])
    assert load_files([lines]).accepted == 2
    broken = tmp_path / "broken.json"
    broken.write_text('[{"messages": []}, {oops}]')
    with pytest.raises(UsageError, match=r"broken.json: not valid JSON at line 1 column 21"):
        load_files([broken])


def test_parquet(tmp_path):
    rows = [good(0, slice="a"),
            {"id": "r1", "messages": msgs(("user", "q"), ("robot", "a")), "slice": "b"},
            {"id": "r2", "messages": [{"role": "user", "content": "q"},
                                      {"role": "assistant", "content": "a", "weight": 0.5}],
             "slice": None}]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    report = load_files([path])
    assert [c.id for c in report.conversations] == ["r0", "r2"]
    assert report.conversations[1].messages[1].weight == 0.5
    assert report.conversations[0].messages[0].weight is None  # a null column value = absent
    e = only_entry(report)
    assert (e.line, e.code, e.field) == (2, "unknown_role", "messages[1].role")


def test_saved_datasets_dataset_and_dataset_dict(tmp_path):
    import datasets

    sharegpt = [{"id": f"s{i}", "conversations": [{"from": "human", "value": "q"},
                                                  {"from": "gpt", "value": "a" if i else ""}]}
                for i in range(3)]
    datasets.Dataset.from_list(sharegpt).save_to_disk(tmp_path / "one")
    report = load_files([tmp_path / "one"])
    assert report.files[0].to_dict() == {"path": str(tmp_path / "one"), "records": 3,
                                         "accepted": 2, "quarantined": 1}
    assert only_entry(report).code == "empty_assistant"
    alpaca = [{"instruction": f"i{i}", "output": "o", "id": f"a{i}"} for i in range(2)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(alpaca),
                          "test": datasets.Dataset.from_list(alpaca[:1])}).save_to_disk(tmp_path / "dd")
    report = load_files([tmp_path / "dd"])
    assert [(f.path, f.records) for f in report.files] == [
        (f"{tmp_path / 'dd'}[train]", 2), (f"{tmp_path / 'dd'}[test]", 1)]
    # the test split repeats id a0: a duplicate of the train split's first row
    assert only_entry(report).reason.startswith(f"id: duplicate id 'a0', first seen at {tmp_path / 'dd'}[train]:1")


def test_unusable_inputs_raise_usage_error(tmp_path):
    with pytest.raises(UsageError, match="missing.jsonl: no such file"):
        load_files([tmp_path / "missing.jsonl"])
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(UsageError, match="plain_dir: is a directory but neither a saved datasets"):
        load_files([tmp_path / "plain_dir"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n \n")
    with pytest.raises(UsageError, match="empty.jsonl: no records"):
        load_files([empty])
    assert load_files([empty], allow_empty=True).records == 0
    notpq = tmp_path / "x.parquet"
    notpq.write_text("hello")
    with pytest.raises(UsageError, match="x.parquet: not a readable Parquet file"):
        load_files([notpq])


def test_bom_and_crlf(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(good(0)).encode() + b"\r\n"
                     + json.dumps(good(1)).encode() + b"\r\n")
    assert load_files([path]).accepted == 2


def test_twenty_thousand_records_load_in_order(tmp_path):
    """Every record of a 20k-record file accepted, in order (load speed is measured in bench/,
    never asserted here)."""
    rows = [{"id": f"r{i}", "slice": f"s{i % 4}", "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": f"question {i} " * 5},
        {"role": "assistant", "content": f"answer {i} " * 10}]} for i in range(20_000)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    report = load_files([path])
    assert report.accepted == 20_000
    assert [c.id for c in report.conversations[::5000]] == ["r0", "r5000", "r10000", "r15000"]


def test_parquet_too_large_rows_are_quarantined(tmp_path):
    rows = [good(0, meta={"blob": "x" * 10}), good(1, meta={"blob": "y" * 300_000}), good(2, meta={"blob": "z"})]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    report = load_files([path], max_record_bytes=250_000)
    e = only_entry(report)
    assert (e.line, e.code) == (2, "too_large") and len(e.record) == 2000
    assert [c.id for c in report.conversations] == ["r0", "r2"]


def test_json_array_with_trailing_garbage_is_unusable(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([good(0)]) + "\n]")
    with pytest.raises(UsageError, match=r"d.json: not valid JSON at line 2 column 1: Extra data"):
        load_files([path])
    path.write_text("[" + json.dumps(good(0)) + " " + json.dumps(good(1)) + "]")
    with pytest.raises(UsageError, match="Expecting ',' delimiter"):
        load_files([path])
