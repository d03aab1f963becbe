"""Row adapters: each layout -> the same Conversation; field-level errors name the field."""
import math

import pytest

from sftlab.data.conversation import Message, Origin
from sftlab.data.formats import Columns, RecordError, detect_format, to_conversation

USER_ASSISTANT = (Message("user", "What is 2+2?"), Message("assistant", "4"))


def roles_contents(conv):
    return [(m.role, m.content) for m in conv.messages]


def error(row) -> RecordError:
    with pytest.raises(RecordError) as e:
        to_conversation(row)
    return e.value


def test_openai_messages():
    row = {"messages": [{"role": "user", "content": "What is 2+2?"},
                        {"role": "assistant", "content": "4"}]}
    assert detect_format(row) == "openai"
    assert to_conversation(row).messages == USER_ASSISTANT


def test_openai_content_parts_are_joined():
    row = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is "},
                                     {"type": "text", "text": "2+2?"}]},
        {"role": "assistant", "content": ["4"]}]}
    assert to_conversation(row).messages == USER_ASSISTANT


def test_openai_non_text_part_is_rejected():
    e = error({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
                            {"role": "assistant", "content": "x"}]})
    assert e.code == "non_string_content"
    assert e.field == "messages[0].content[0]" and e.message_index == 0
    assert "image_url" in str(e)


def test_tool_calls_are_read_with_arguments_as_json_text():
    conv = to_conversation({"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]})
    call = conv.messages[1].tool_calls[0]
    assert (conv.messages[1].content, call.name, call.arguments, call.id) == ("", "w", '{"city":"Oslo"}', "c1")
    assert conv.messages[2].tool_call_id == "c1"


def test_empty_tool_calls_with_plain_content_is_fine():
    conv = to_conversation({"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello", "tool_calls": []}]})
    assert roles_contents(conv) == [("user", "hi"), ("assistant", "hello")]


def test_sharegpt_roles_and_system():
    row = {"system": "Be brief.", "conversations": [
        {"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4"},
        {"from": "user", "value": "and 3+3?"}, {"from": "model", "value": "6"},
        {"from": "observation", "value": "tool output"}, {"from": "assistant", "value": "ok"}]}
    assert detect_format(row) == "sharegpt"
    assert [m.role for m in to_conversation(row).messages] == [
        "system", "user", "assistant", "user", "assistant", "tool", "assistant"]


def test_sharegpt_unknown_speaker_and_function_call():
    e = error({"conversations": [{"from": "bot", "value": "x"}]})
    assert e.code == "unknown_role" and e.field == "conversations[0].from"
    e = error({"conversations": [{"from": "human", "value": "x"},
                                 {"from": "function_call", "value": "{}"}]})
    assert e.code == "bad_tool_call" and e.message_index == 1


def test_sharegpt_keys_inside_messages_are_understood():
    conv = to_conversation({"messages": [{"from": "human", "value": "What is 2+2?"},
                                         {"from": "gpt", "value": "4"}]})
    assert conv.messages == USER_ASSISTANT


def test_alpaca_with_input_and_system():
    row = {"instruction": "Translate.", "input": "bonjour", "output": "hello", "system": "S"}
    assert detect_format(row) == "alpaca"
    assert roles_contents(to_conversation(row)) == [
        ("system", "S"), ("user", "Translate.\n\nbonjour"), ("assistant", "hello")]
    no_input = to_conversation({"instruction": "What is 2+2?", "input": "", "output": "4"})
    assert no_input.messages == USER_ASSISTANT


def test_alpaca_output_must_be_text():
    e = error({"instruction": "x", "output": 4})
    assert e.code == "non_string_content" and e.field == "output"


def test_prompt_completion_strings_and_lists():
    assert to_conversation({"prompt": "What is 2+2?", "completion": "4"}).messages == USER_ASSISTANT
    conv = to_conversation({"prompt": [{"role": "system", "content": "S"},
                                       {"role": "user", "content": "What is 2+2?"}],
                            "completion": [{"role": "assistant", "content": "4"}]})
    assert conv.messages == (Message("system", "S"), *USER_ASSISTANT)
    e = error({"prompt": [{"role": "user", "content": "q"}],
               "completion": [{"role": "robot", "content": "a"}]})
    assert e.field == "completion[0].role" and e.message_index == 1


def test_unknown_layout_lists_the_keys():
    e = error({"question": "q", "answer": "a"})
    assert e.code == "unknown_format"
    assert "answer, question" in str(e) and "'messages'" in str(e)


def test_null_or_wrongly_typed_conversation_fields_name_the_field():
    """Table formats (Parquet, datasets) give every row every column, null where a row has none."""
    for row, field, got in (({"messages": None}, "messages", "null"),
                            ({"conversations": None, "id": "x"}, "conversations", "null"),
                            ({"prompt": None, "completion": "c"}, "prompt", "null"),
                            ({"instruction": None, "output": "o"}, "instruction", "null"),
                            ({"prompt": b"bytes", "completion": "c"}, "prompt", "bytes")):
        e = error(row)
        assert e.field == field and f"got {got}" in e.reason, (row, e)
    # A null column next to a filled one of another format is simply not that format.
    assert to_conversation({"messages": None, "prompt": "What is 2+2?", "completion": "4"}).messages \
        == USER_ASSISTANT


def test_metadata_top_level_and_under_meta_and_extra_fields():
    row = {"messages": [{"role": "user", "content": "What is 2+2?"},
                        {"role": "assistant", "content": "4"}],
           "id": 7, "slice": "math", "difficulty": "easy",
           "meta": {"task": "arith", "source": "hand", "license": "CC0", "expected": "comply",
                    "policy_category": "weapons_history", "annotator": "ana"}}
    with pytest.raises(RecordError) as e:  # a top-level field nothing reads is refused, named
        to_conversation(row)
    assert e.value.code == "unused_field" and e.value.field == "difficulty" and "ignore_fields" in e.value.reason
    conv = to_conversation(row, origin=Origin("f.jsonl", 3), columns=Columns(ignore=("difficulty",)))
    assert (conv.id, conv.task, conv.slice, conv.source, conv.license) == (
        "7", "arith", "math", "hand", "CC0")
    assert conv.expected == "comply" and conv.policy_category == "weapons_history"
    assert conv.extra == {"difficulty": "easy", "annotator": "ana"}
    assert conv.origin == Origin("f.jsonl", 3)
    assert conv.to_dict()["meta"] == {"difficulty": "easy", "annotator": "ana"}
    assert to_conversation(conv.to_dict()) == conv and to_conversation(conv.to_dict()).extra == conv.extra


def test_metadata_conflict_and_bad_values():
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    e = error({"messages": msgs, "id": "a", "meta": {"id": "b"}})
    assert e.field == "id" and "'a'" in str(e) and "'b'" in str(e)
    assert error({"messages": msgs, "expected": "maybe"}).field == "expected"
    assert error({"messages": msgs, "task": ["x"]}).field == "task"
    assert error({"messages": msgs, "meta": "x"}).field == "meta"
    same = to_conversation({"messages": msgs, "id": "a", "meta": {"id": "a"}})
    assert same.id == "a"


def test_train_and_weight_flags():
    conv = to_conversation({"messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "train": False, "weight": 2}]})
    assert conv.messages[1] == Message("assistant", "a", train=False, weight=2.0)
    assert isinstance(conv.messages[1].weight, float)


@pytest.mark.parametrize("weight", [-1, math.nan, math.inf, 1e39, "1", True, [1]])
def test_bad_weight(weight):
    e = error({"messages": [{"role": "user", "content": "q"},
                            {"role": "assistant", "content": "a", "weight": weight}]})
    assert e.code == "bad_weight" and e.field == "messages[1].weight" and e.message_index == 1
    assert ">= 0" in str(e)


@pytest.mark.parametrize("train", ["yes", 1, 0, "false"])
def test_bad_train(train):
    e = error({"messages": [{"role": "user", "content": "q", "train": train},
                            {"role": "assistant", "content": "a"}]})
    assert e.code == "bad_train" and e.field == "messages[0].train"
    assert "true or false" in str(e)


def test_unknown_role_and_non_string_content():
    e = error({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]})
    assert (e.code, e.field, e.message_index) == ("unknown_role", "messages[1].role", 1)
    assert "expected one of system, user, assistant, tool" in str(e)
    e = error({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]})
    assert (e.code, e.field, e.message_index) == ("non_string_content", "messages[0].content", 0)
    e = error({"messages": "hello"})
    assert e.code == "bad_messages"
    e = error({"messages": ["hello"]})
    assert e.code == "bad_message" and e.field == "messages[0]"


def test_conversation_doctests():
    import doctest

    import sftlab.data.conversation

    assert doctest.testmod(sftlab.data.conversation).failed == 0


def test_a_top_level_system_beside_messages_is_the_system_prompt():
    """Before: kept as an unused extra field, the conversation trained without its system prompt."""
    messages = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
    assert to_conversation({"system": "S", "messages": messages}).messages == (Message("system", "S"), *USER_ASSISTANT)
    same = to_conversation({"system": "S", "messages": [{"role": "system", "content": "S"}, *messages]})
    assert same.messages == (Message("system", "S"), *USER_ASSISTANT)
    e = error({"system": "T", "messages": [{"role": "system", "content": "S"}, *messages]})
    assert e.code == "ambiguous_system" and e.field == "system"
