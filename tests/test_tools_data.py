"""Tool calls, tool results, tool schemas and reasoning as conversation content (data layer).

Fixtures in tests/data/tools are real public samples (see the NOTICE there): Glaive-style ShareGPT
function calling from LLaMA-Factory and its reasoning + tool-use demo (content parts).
"""
import json
from pathlib import Path

import pytest

from sftlab.data.formats import to_conversation
from sftlab.data.loading import load_files

DATA = Path(__file__).parent / "data" / "tools"
GLAIVE = DATA / "glaive_toolcall_en_demo.sample.json"
REASON = DATA / "reason_tool_use_demo.sample.jsonl"


def test_glaive_function_call_and_observation_turns_map_onto_tool_calls_and_results():
    report = load_files([GLAIVE])
    assert report.quarantined_count == 0 and report.accepted == 11
    conv = next(c for c in report.conversations if any(m.tool_calls for m in c.messages))
    i = next(i for i, m in enumerate(conv.messages) if m.tool_calls)
    call_msg, result = conv.messages[i], conv.messages[i + 1]
    raw = json.loads(GLAIVE.read_text())[report.conversations.index(conv)]
    value = json.loads(raw["conversations"][i]["value"])
    assert call_msg.role == "assistant" and call_msg.content == ""
    assert call_msg.tool_calls[0].name == value["name"]
    assert json.loads(call_msg.tool_calls[0].arguments) == value["arguments"]
    assert result.role == "tool" and result.content == raw["conversations"][i + 1]["value"]
    assert conv.tools == raw["tools"]  # the JSON string exactly as the dataset ships it
    assert value["name"] in conv.tool_names()


def test_reasoning_and_tool_call_content_parts_are_read():
    report = load_files([REASON])
    assert report.quarantined_count == 0 and report.accepted == 8
    rows = [json.loads(line) for line in REASON.read_text().splitlines()]
    for conv, row in zip(report.conversations, rows):
        for m, raw in zip(conv.messages, row["messages"]):
            parts = raw["content"]
            assert m.reasoning == ("".join(p["value"] for p in parts if p["type"] == "reasoning") or None)
            assert m.content == "".join(p["value"] for p in parts if p["type"] == "text")
            calls = [json.loads(p["value"]) for p in parts if p["type"] == "tool_call"]
            assert [(c.name, json.loads(c.arguments)) for c in m.tool_calls] == \
                [(c["name"], c["arguments"]) for c in calls]
    n_parts = sum(p["type"] == "tool_call" for r in rows for m in r["messages"] for p in m["content"])
    assert sum(len(m.tool_calls) for c in report.conversations for m in c.messages) == n_parts == 12


def test_reasoning_spellings_and_a_conflict():
    base = [{"role": "user", "content": "q"}]
    for key in ("reasoning_content", "reasoning", "thinking"):
        conv = to_conversation({"messages": base + [{"role": "assistant", "content": "a", key: "think"}]})
        assert conv.messages[1].reasoning == "think"
        assert conv.to_dict()["messages"][1]["reasoning_content"] == "think"
    with pytest.raises(Exception) as e:
        to_conversation({"messages": base + [{"role": "assistant", "content": "a", "reasoning": "x",
                                              "thinking": "y"}]})
    assert e.value.code == "bad_reasoning"


def call(name, arguments, cid=None):
    c = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return {**c, "id": cid} if cid else c


TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
Q = {"role": "user", "content": "Weather in Oslo?"}
RULES = [  # messages, tools, code, field, message index
    ([Q, {"role": "assistant", "tool_calls": [call("weather", '{"city": "Oslo"')]}], TOOLS,
     "bad_arguments", "messages[1].tool_calls[0].function.arguments", 1),
    ([Q, {"role": "assistant", "tool_calls": [call("weather", "[1, 2]")]}], TOOLS,
     "bad_arguments", "messages[1].tool_calls[0].function.arguments", 1),
    ([Q, {"role": "assistant", "content": "Checking."}, {"role": "tool", "content": "-3"},
      {"role": "assistant", "content": "-3 °C"}], None, "result_without_call", "messages[2].role", 2),
    ([Q, {"role": "assistant", "tool_calls": [call("weather", {"city": "Oslo"}, "c1")]},
      {"role": "tool", "tool_call_id": "c2", "content": "-3"}, {"role": "assistant", "content": "-3 °C"}],
     TOOLS, "unknown_tool_call_id", "messages[2].tool_call_id", 2),
    ([Q, {"role": "assistant", "tool_calls": [call("stocks", {"s": "X"})]}], TOOLS,
     "unknown_function", "messages[1].tool_calls[0].function.name", 1),
    ([Q, {"role": "assistant", "tool_calls": [call("weather", {"city": "Oslo"})]}, Q,
      {"role": "assistant", "content": "?"}], TOOLS, "call_without_result", "messages[2].role", 2),
    ([Q, {"role": "assistant", "tool_calls": [call("weather", {"city": "Oslo"}, "c1"),
                                              call("weather", {"city": "Bergen"}, "c2")]},
      {"role": "tool", "tool_call_id": "c1", "content": "-3"}, {"role": "assistant", "content": "?"}],
     TOOLS, "call_without_result", "messages[3].role", 3),
]


@pytest.mark.parametrize("messages,tools,code,field,index", RULES, ids=[r[2] + str(i) for i, r in enumerate(RULES)])
def test_tool_rules_quarantine_with_file_line_field_and_reason(tmp_path, messages, tools, code, field, index):
    good = {"id": "ok", "tools": TOOLS, "messages": [Q, {"role": "assistant", "tool_calls": [
        call("weather", {"city": "Oslo"}, "c1")]}, {"role": "tool", "tool_call_id": "c1", "content": "-3"},
        {"role": "assistant", "content": "-3 °C"}]}
    bad = {"id": "bad", "messages": messages, **({"tools": tools} if tools else {})}
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in (good, bad)) + "\n", encoding="utf-8")
    report = load_files([path])
    assert report.accepted == 1 and report.quarantined_count == 1
    e = report.quarantined[0]
    assert (e.file, e.line, e.id, e.code, e.field, e.message_index) == (str(path), 2, "bad", code, field, index)
    assert e.message.startswith(f"{path}:2: record 'bad': {field}: ") and "fix:" in e.reason


def test_a_conversation_may_end_on_calls_and_results_may_come_by_name():
    conv = {"tools": TOOLS, "messages": [Q, {"role": "assistant", "tool_calls": [call("weather", {"city": "Oslo"})]}]}
    by_name = {"tools": TOOLS, "messages": [Q, {"role": "assistant", "tool_calls": [call("weather", {})]},
                                            {"role": "tool", "name": "weather", "content": "-3"},
                                            {"role": "assistant", "content": "-3"}]}
    from sftlab.data.loading import check_conversation
    check_conversation(to_conversation(conv))
    check_conversation(to_conversation(by_name))


# -- the mixed-type round trip ---------------------------------------------------------------------

MIXED = [  # the same fields, differently typed and shaped from row to row
    {"id": "obj", "tools": TOOLS, "messages": [
        Q, {"role": "assistant", "content": None, "tool_calls": [call("weather", {"city": "Oslo", "days": 3}, "a")]},
        {"role": "tool", "tool_call_id": "a", "content": "-3"}, {"role": "assistant", "content": "Cold."}]},
    {"id": "str", "tools": json.dumps(TOOLS), "messages": [
        Q, {"role": "assistant", "content": "", "tool_calls": [call("weather", '{"city":"Oslo","units":["C",1.5,null,true]}', "b")]},
        {"role": "tool", "tool_call_id": "b", "content": "{\"t\": -3}"}, {"role": "assistant", "content": "Cold."}]},
    {"id": "nested", "tools": [{"name": "weather", "parameters": {"type": "object", "properties": {"when": {"type": "integer"}}}}],
     "messages": [Q, {"role": "assistant", "reasoning_content": "Call it.", "tool_calls": [
         call("weather", {"city": {"name": "Oslo", "id": 3}, "days": "3"})]},
         {"role": "tool", "name": "weather", "content": "-3"},
         {"role": "assistant", "content": "Cold.", "thinking": "Say it."}]},
    {"id": "plain", "messages": [Q, {"role": "assistant", "content": "I cannot check."}]},
]


def normalised(report):
    return [json.dumps(c.to_dict(), ensure_ascii=False) for c in report.conversations]


def test_mixed_type_rows_survive_every_reader_byte_for_byte(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in MIXED) + "\n", encoding="utf-8")
    array = tmp_path / "m.json"
    array.write_text(json.dumps(MIXED, ensure_ascii=False, indent=1), encoding="utf-8")
    first = load_files([jsonl])
    assert first.accepted == 4, [q.reason for q in first.quarantined]
    texts = normalised(first)
    args = [c.arguments for conv in first.conversations for m in conv.messages for c in m.tool_calls]
    assert args[1] == '{"city":"Oslo","units":["C",1.5,null,true]}'  # a string is kept exactly as given
    assert normalised(load_files([array])) == texts
    # The normalised records hold arguments and schemas as text, so Arrow has one type per column.
    rows = [c.to_dict() for c in first.conversations]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    assert normalised(load_files([tmp_path / "m.parquet"])) == texts
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    assert normalised(load_files([tmp_path / "ds"])) == texts


def test_arrow_unifies_object_arguments_which_is_why_they_are_kept_as_text():
    """What a peer that keeps arguments as objects gets from a table: keys of other rows, as nulls."""
    import pyarrow as pa

    rows = [{"a": {"city": "Oslo"}}, {"a": {"days": 3}}]
    assert pa.Table.from_pylist(rows).to_pylist()[0]["a"] == {"city": "Oslo", "days": None}


def test_stats_count_tool_use_and_reasoning_per_slice():
    import dataclasses

    from sftlab.data.stats import compute_stats

    convs = load_files([GLAIVE, REASON]).conversations
    convs = [dataclasses.replace(c, slice="glaive" if i < 11 else "reason") for i, c in enumerate(convs)]
    t = compute_stats(convs)["tools"]["slices"]
    assert list(t) == ["all", "glaive", "reason"]
    assert (t["glaive"]["with_tools"], t["glaive"]["records"], t["reason"]["with_tools"]) == (10, 11, 8)
    assert t["glaive"]["reasoning_share"] == 0.0 and 0.3 < t["reason"]["reasoning_share"] < 0.7
    calls = [sum(len(m.tool_calls) for m in c.messages) for c in convs[11:]]
    assert t["reason"]["calls"]["max"] == max(calls) and t["all"]["calls"]["n"] == 19


def test_eval_prompts_carry_tools_and_an_expected_tool_call(tmp_path):
    from sftlab.evaluation.answers import check_answer
    from sftlab.evaluation.prompts import load_prompt_set

    rows = [{"id": "t1", "prompt": "Weather in Oslo?", "tools": TOOLS,
             "tool_call": {"name": "weather", "arguments": {"city": "Oslo", "days": 2}}},
            {"id": "t2", "prompt": "x", "tool_call": {"name": "weather"}},
            {"id": "t3", "prompt": "x", "tools": "[{\"description\": 1}]"}]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    ps = load_prompt_set(str(path))
    (p,) = ps.prompts
    assert p.answer_type == "tool_call" and json.loads(p.tools) == TOOLS
    assert [b["line"] for b in ps.bad_rows] == [2, 3] and "tools[0]" in ps.bad_rows[1]["reason"]
    # Each family's way of writing the call is read; arguments compare as JSON.
    for response in ('<tool_call>\n{"name": "weather", "arguments": {"days": 2, "city": "Oslo"}}\n</tool_call>',
                     '{"name": "weather", "parameters": {"city": "Oslo", "days": 2.0}}',
                     '[TOOL_CALLS] [{"name": "weather", "arguments": {"city": "Oslo", "days": 2}, "id": "abcdefghi"}]'):
        assert check_answer(response, p.answer, "tool_call"), response
    for response in ('<tool_call>\n{"name": "weather", "arguments": {"city": "Bergen", "days": 2}}\n</tool_call>',
                     '{"name": "forecast", "arguments": {"city": "Oslo", "days": 2}}', "It is cold in Oslo.",
                     '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo", "days": 2}\n</tool_call>'):
        assert not check_answer(response, p.answer, "tool_call"), response
