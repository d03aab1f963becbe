"""Every key of a message is accounted for (DESIGN.md, invariant 9): read with its documented meaning
(ms-swift's ``loss`` and ``loss_scale``, OpenAI's ``refusal`` and legacy ``function_call``), empty,
message metadata, or declared ignored (``ignore_fields: [messages[].KEY]``); any other key refuses
the record naming the file, the line and the field (``messages[i].KEY`` in the layout's own names)."""
from __future__ import annotations

import json

import pytest

from sftlab.data import message_fields
from sftlab.data.formats import Columns, RecordError, to_conversation
from sftlab.data.loading import load_files
from sftlab.tokens.weighting import trained_messages
from sftlab.train.config import DataFile

# The records that lost a message key without a word before it was accounted for.
SILENT = [
    {"messages": [{"role": "user", "content": "hi", "name": "alice"}, {"role": "assistant", "content": "hello"}]},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello",
                                                      "annotations": {"quality": 3}}]},
    {"conversations": [{"from": "human", "value": "hi", "loss": False}, {"from": "gpt", "value": "hello",
                                                                          "mask": True}]},
    {"messages": [{"role": "user", "content": "hi", "tool_call_id": "call_1"},
                  {"role": "assistant", "content": "hello"}]},
    {"messages": [{"role": "user", "content": "hi", "from": "human"}, {"role": "assistant", "content": "hello"}]},
]
FIELDS = ["messages[0].name", "messages[1].annotations", "conversations[1].mask", "messages[0].tool_call_id",
          "messages[0].from"]


def _write(tmp_path, records) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_unknown_message_keys_are_refused_naming_file_line_and_field(tmp_path):
    path = _write(tmp_path, SILENT)
    report = load_files([path])
    assert report.accepted == 0
    assert [(e.file, e.line, e.code, e.field) for e in report.quarantined] == [
        (path, i + 1, "unused_field", f) for i, f in enumerate(FIELDS)]
    name, annotations, mask = (e.reason for e in report.quarantined[:3])
    assert "chat templates do not show names" in name and "ignore_fields: [messages[].name]" in name
    assert "--ignore-field 'messages[].annotations'" in annotations
    assert "ignore_fields: [conversations[].mask]" in mask and "train: true or false" in mask


def test_declared_ignored_message_keys_go_through(tmp_path):
    """Each spelling ignores its key in its list only: ``messages[].name`` leaves ``conversations`` alone."""
    path = _write(tmp_path, SILENT)
    ignore = [f.split("[")[0] + "[]." + f.split(".")[1] for f in FIELDS]
    entry = DataFile(path=path, ignore_fields=ignore)
    report = load_files([path], columns=[entry.mapping()])
    assert report.accepted == len(SILENT) and report.quarantined == []
    assert [m.content for m in report.conversations[0].messages] == ["hi", "hello"]
    only_name = load_files([path], columns=[DataFile(path=path, ignore_fields=["conversations[].name"]).mapping()])
    assert [e.field for e in only_name.quarantined][0] == "messages[0].name"


def test_empty_keys_and_message_metadata_are_accounted_for():
    """What OpenAI's API returns beside an answer (refusal, annotations, audio, function_call: null or
    empty) and message ids and times are no content."""
    conv = to_conversation({"messages": [
        {"role": "user", "content": "hi", "id": "m1", "timestamp": "2024-01-01T00:00:00Z", "name": ""},
        {"role": "assistant", "content": "hello", "refusal": None, "annotations": [], "audio": None,
         "function_call": None, "tool_calls": [], "created_at": 1700000000, "type": "message"}]})
    assert [(m.role, m.content) for m in conv.messages] == [("user", "hi"), ("assistant", "hello")]


def test_mapped_message_keys_are_read_and_others_named_in_the_entry_field():
    cols = Columns(field_messages="dialog", role_key="speaker", content_key="text",
                   roles={"Kunde": "user", "Agent": "assistant"})
    record = {"dialog": [{"speaker": "Kunde", "text": "Hallo", "mood": "froh"},
                         {"speaker": "Agent", "text": "Guten Tag"}]}
    with pytest.raises(RecordError) as e:
        to_conversation(record, columns=cols)
    assert (e.value.code, e.value.field) == ("unused_field", "dialog[0].mood")
    assert "ignore_fields: [dialog[].mood]" in e.value.reason
    kept = Columns(**{**cols.__dict__, "ignore": ("dialog[].mood",)})
    assert [m.content for m in to_conversation(record, columns=kept).messages] == ["Hallo", "Guten Tag"]


def test_ms_swift_loss_and_loss_scale_are_train_and_weight():
    """ms-swift: ``loss: false`` does not train that assistant turn, ``true`` trains it whatever the
    strategy; ``loss_scale`` is its loss weight (docs/source_en/Customization/Custom-dataset.md)."""
    conv = to_conversation({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "loss": False},
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "loss_scale": 2.0},
        {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": "6"}]})
    assert [(m.train, m.weight) for m in conv.messages[1::2]] == [(False, None), (None, 2.0), (None, None)]
    assert trained_messages(conv.messages, last_turn_only=False) == {3: 2.0, 5: 1.0}
    forced = to_conversation({"messages": [{"role": "user", "content": "hi"},
                                           {"role": "assistant", "content": "hello", "loss": True},
                                           {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]})
    assert trained_messages(forced.messages, last_turn_only=True) == {1: 1.0, 3: 1.0}


@pytest.mark.parametrize("message, code, field, phrase", [
    ({"role": "assistant", "content": "x", "loss": "no"}, "bad_train", "messages[1].loss", "true or false"),
    ({"role": "assistant", "content": "x", "loss": [False]}, "bad_train", "messages[1].loss", "true or false"),
    ({"role": "assistant", "content": "x", "loss": False, "train": True}, "bad_train", "messages[1].loss",
     "given twice"),
    ({"role": "assistant", "content": "x", "loss_scale": 2, "weight": 1}, "bad_weight", "messages[1].loss_scale",
     "given twice"),
    ({"role": "assistant", "content": "x", "loss_scale": -1}, "bad_weight", "messages[1].loss_scale", ">= 0"),
])
def test_bad_per_message_training_fields_are_refused(message, code, field, phrase):
    with pytest.raises(RecordError) as e:
        to_conversation({"messages": [{"role": "user", "content": "hi"}, message]})
    assert (e.value.code, e.value.field) == (code, field) and phrase in e.value.reason


@pytest.mark.parametrize("key", ["train", "loss"])
def test_training_a_user_message_is_refused(key):
    """Only assistant messages are trained: ``train: true`` on a user message would be a no-op."""
    with pytest.raises(RecordError) as e:
        to_conversation({"messages": [{"role": "user", "content": "hi", key: True},
                                      {"role": "assistant", "content": "x"}]})
    assert (e.value.code, e.value.field) == ("bad_train", f"messages[0].{key}")
    assert to_conversation({"messages": [{"role": "user", "content": "hi", key: False},
                                         {"role": "assistant", "content": "x"}]}).messages[0].train is False


def test_openai_refusal_is_the_assistant_content():
    conv = to_conversation({"messages": [{"role": "user", "content": "How do I pick a lock?"},
                                         {"role": "assistant", "content": None, "refusal": "I can't help with that."}]})
    assert conv.messages[1].content == "I can't help with that."
    same = {"role": "assistant", "content": "I can't.", "refusal": "I can't."}
    assert to_conversation({"messages": [{"role": "user", "content": "x"}, same]}).messages[1].content == "I can't."


@pytest.mark.parametrize("message, phrase", [
    ({"role": "assistant", "content": "Sure, here is how.", "refusal": "I can't help with that."},
     "both content and a refusal"),
    ({"role": "assistant", "content": None, "refusal": {"text": "no"}}, "refusal as a string"),
])
def test_conflicting_or_malformed_refusals_are_refused(message, phrase):
    with pytest.raises(RecordError) as e:
        to_conversation({"messages": [{"role": "user", "content": "x"}, message]})
    assert e.value.field == "messages[1].refusal" and phrase in e.value.reason


def test_openai_legacy_function_call_is_a_tool_call(tmp_path):
    record = {"messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None,
         "function_call": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}},
        {"role": "function", "name": "get_weather", "content": "{\"temp\": 3}"},
        {"role": "assistant", "content": "3 degrees."}]}
    report = load_files([_write(tmp_path, [record])])
    assert report.quarantined == []
    call, result = report.conversations[0].messages[1:3]
    assert [(c.name, c.arguments) for c in call.tool_calls] == [("get_weather", "{\"city\": \"Oslo\"}")]
    assert (result.role, result.name, result.content) == ("tool", "get_weather", "{\"temp\": 3}")
    both = dict(record["messages"][1], tool_calls=[{"function": {"name": "f", "arguments": {}}}])
    with pytest.raises(RecordError) as e:
        to_conversation({"messages": [record["messages"][0], both]})
    assert e.value.field == "messages[1].function_call" and "keep one" in e.value.reason


def test_developer_is_the_system_message_and_unknown_speakers_get_the_likely_role():
    conv = to_conversation({"messages": [{"role": "developer", "content": "Answer briefly."},
                                         {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi"}]})
    assert [m.role for m in conv.messages] == ["system", "user", "assistant"]
    for speaker, hint in [("ipython", "{'ipython': tool}"), ("bot", "{'bot': assistant}"),
                          ("prompter", "{'prompter': user}"), ("narrator", "{'narrator': ROLE}, ROLE one of")]:
        with pytest.raises(RecordError) as e:
            to_conversation({"messages": [{"role": "user", "content": "x"}, {"role": speaker, "content": "y"}]})
        assert e.value.field == "messages[1].role" and hint in e.value.reason, e.value.reason


def test_the_usual_two_key_message_takes_the_fast_path(monkeypatch):
    """A role/content or from/value message is read without any of the per-key checks (this runs once
    per message of every record)."""
    def refuse(*args):
        raise AssertionError("slow path")

    monkeypatch.setattr(message_fields, "account_keys", refuse)
    monkeypatch.setattr(message_fields, "_reasoning", refuse)
    conv = to_conversation({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    assert [m.content for m in conv.messages] == ["hi", "yo"]
    conv = to_conversation({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]})
    assert [(m.role, m.content) for m in conv.messages] == [("user", "hi"), ("assistant", "yo")]
    with pytest.raises(AssertionError, match="slow path"):
        to_conversation({"messages": [{"role": "user", "content": "hi", "name": "a"},
                                      {"role": "assistant", "content": "yo"}]})


def test_ms_swift_tool_calls_made_together_are_one_assistant_turn():
    """ms-swift's agent layout: consecutive ``tool_call`` messages are the calls of one assistant turn
    (its template merges them, keeping the first one's loss), answered by ``tool_response`` messages."""
    calls = [{"role": "tool_call", "content": json.dumps({"name": "aqi", "arguments": {"city": c}}), "loss": False}
             for c in ("Beijing", "Shanghai")]
    record = {"messages": [{"role": "user", "content": "AQI?"}, *calls,
                           {"role": "tool_response", "content": "10"}, {"role": "tool_response", "content": "72"},
                           {"role": "assistant", "content": "10 and 72."}]}
    conv = to_conversation(record)
    assert [(m.role, m.train, [c.arguments for c in m.tool_calls]) for m in conv.messages] == [
        ("user", None, []), ("assistant", False, ['{"city": "Beijing"}', '{"city": "Shanghai"}']),
        ("tool", None, []), ("tool", None, []), ("assistant", None, [])]
    record["messages"][2] = {**calls[1], "loss": True}
    with pytest.raises(RecordError) as e:
        to_conversation(record)
    assert (e.value.code, e.value.field) == ("bad_train", "messages[2]") and "calls made together" in e.value.reason


def test_content_parts_of_the_responses_api_and_anthropic_thinking_are_read():
    """OpenAI's Responses API writes ``input_text``/``output_text`` parts (``annotations`` empty
    when nothing is cited); Anthropic's Messages API writes thinking as ``{"type": "thinking",
    "thinking": ..., "signature": ...}`` and steers caching with ``cache_control``."""
    conv = to_conversation({"messages": [
        {"role": "user", "content": [{"type": "input_text", "text": "What is 2 + 2?",
                                      "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "Two and two make four.",
                                           "signature": "EqQBCgIYAhIM"},
                                          {"type": "output_text", "text": "4", "annotations": []}]}]})
    assert [(m.role, m.content, m.reasoning) for m in conv.messages] == \
           [("user", "What is 2 + 2?", None), ("assistant", "4", "Two and two make four.")]


def test_a_content_part_key_that_holds_more_is_refused_naming_it():
    record = {"messages": [{"role": "user", "content": "Who wrote it?"}, {"role": "assistant", "content": [
        {"type": "text", "text": "Tolstoy.", "citations": [{"cited_text": "War and Peace, by Leo Tolstoy"}]}]}]}
    with pytest.raises(RecordError) as e:
        to_conversation(record)
    assert e.value.code == "unused_field" and e.value.field == "messages[1].content[0].citations"
    assert "'citations' besides its 'text'" in str(e.value)


def test_openai_fine_tuning_records_with_tools_and_parallel_tool_calls_are_read():
    """OpenAI's function-calling fine-tuning layout puts ``parallel_tool_calls`` beside ``messages``
    and ``tools``: a flag about how the API called tools, kept as metadata, not a reason to refuse."""
    record = {"messages": [{"role": "user", "content": "Weather in Paris?"},
                           {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
                               "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}],
              "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                  "type": "object", "properties": {"city": {"type": "string"}}}}}],
              "parallel_tool_calls": False}
    conv = to_conversation(record)
    assert conv.extra == {"parallel_tool_calls": False}
    assert conv.messages[1].tool_calls[0].name == "get_weather" and "get_weather" in conv.tools


def test_every_key_of_a_tool_call_is_read_or_the_record_is_refused():
    """A call's ``id``, ``type``, ``function.name`` and ``function.arguments`` are read (and a
    streamed call's ``index`` is bookkeeping); any other key would be lost, so it is named."""
    call = {"id": "call_1", "type": "function", "index": 0,
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}
    record = {"messages": [{"role": "user", "content": "Weather in Paris?"},
                           {"role": "assistant", "content": None, "tool_calls": [call]}]}
    assert to_conversation(record).messages[1].tool_calls[0].name == "get_weather"
    for extra, field in (({"reason": "the user asked"}, "messages[1].tool_calls[0].reason"),
                         ({"function": {**call["function"], "unit": "C"}}, "messages[1].tool_calls[0].function.unit")):
        bad = {"messages": [record["messages"][0], {**record["messages"][1], "tool_calls": [{**call, **extra}]}]}
        with pytest.raises(RecordError) as e:
            to_conversation(bad)
        assert (e.value.code, e.value.field) == ("unused_field", field)


def test_a_call_with_an_unread_key_beside_its_function_and_id_is_refused():
    """Three keys, as many as the usual call has, are no proof the call is the usual one."""
    record = {"messages": [{"role": "user", "content": "Weather in Paris?"},
                           {"role": "assistant", "content": None, "tool_calls": [
                               {"id": "call_1", "function": {"name": "get_weather", "arguments": "{}"},
                                "reason": "the user asked"}]}]}
    with pytest.raises(RecordError) as e:
        to_conversation(record)
    assert (e.value.code, e.value.field) == ("unused_field", "messages[1].tool_calls[0].reason")


def test_arguments_beside_a_calls_function_are_not_taken_for_its_own():
    """A nested call reads its function's name and arguments; the same keys beside ``function``
    would be lost, so they are named."""
    record = {"messages": [{"role": "user", "content": "Weather in Paris?"},
                           {"role": "assistant", "content": None, "tool_calls": [
                               {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"},
                                "arguments": {"city": "Paris"}}]}]}
    with pytest.raises(RecordError) as e:
        to_conversation(record)
    assert (e.value.code, e.value.field) == ("unused_field", "messages[1].tool_calls[0].arguments")


def test_calls_made_together_keep_the_reasoning_of_their_turn():
    """ms-swift's consecutive ``tool_call`` messages are one assistant turn: a reasoning block on one
    of them is that turn's (it was dropped when they were merged); on two, the record is refused."""
    call = lambda name: json.dumps({"name": name, "arguments": {}})  # noqa: E731
    record = {"messages": [{"role": "user", "content": "Weather and time in Paris?"},
                           {"role": "tool_call", "content": call("get_weather"), "reasoning_content": "Two lookups."},
                           {"role": "tool_call", "content": call("get_time")},
                           {"role": "tool_response", "content": "sunny"}, {"role": "tool_response", "content": "noon"},
                           {"role": "assistant", "content": "Sunny, and it is noon."}]}
    turn = to_conversation(record).messages[1]
    assert [c.name for c in turn.tool_calls] == ["get_weather", "get_time"] and turn.reasoning == "Two lookups."
    record["messages"][2]["reasoning_content"] = "Then the time."
    with pytest.raises(RecordError, match="one reasoning block"):
        to_conversation(record)
