"""Public data sets in their own layouts (tests/data/public): Glaive v2 transcripts, xLAM, Nemotron, XTuner's and
Capybara's exchanges and LIMA's string turns are read as they are, every field read, metadata or refused; layouts
sftlab does not read (OpenAssistant message rows, pre-rendered text, records inside one object beside other keys)
are refused with a reason that names what the file is and how to read it."""
import json
from pathlib import Path

import pytest

from sftlab.data.formats import Columns, RecordError, to_conversation
from sftlab.data.layouts import columns_kwargs
from sftlab.data.loading import load_files
from sftlab.demo.tiny import build_tokenizer
from sftlab.tokens.encoding import encode, encode_all

HERE = Path(__file__).parent / "data"
PUBLIC = HERE / "public"


def _rows(name):
    return [json.loads(line) for line in (PUBLIC / name).read_text(encoding="utf-8").splitlines()]


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _plain(messages):
    return [(m.role, m.content, [(c.name, json.loads(c.arguments)) for c in m.tool_calls]) for m in messages]


# -- Glaive function calling v2 ------------------------------------------------------------------------------------

def test_glaive_row_reads_its_turns_call_response_and_functions():
    report = load_files([PUBLIC / "glaive_function_calling_v2.sample.jsonl"])
    assert report.accepted == 2 and not report.quarantined
    conv = report.conversations[0]
    assert _plain(conv.messages) == [
        ("system", "You are a helpful assistant with access to the following functions. Use them if required -", []),
        ("user", "I have a text here and I am not sure what language it is. Can you help me identify it?", []),
        ("assistant", "Of course, I can help with that. Please provide me with the text.", []),
        ("user", 'Here it is - "Je suis un étudiant"', []),
        ("assistant", "", [("detect_language", {"text": "Je suis un étudiant"})]),
        ("tool", '{"language": "French"}', []),
        ("assistant", "The text you provided is in French.", []),
    ]
    # the arguments are the single-quoted JSON text as the row writes it
    assert conv.messages[4].tool_calls[0].arguments == '{"text": "Je suis un étudiant"}'
    system = _rows("glaive_function_calling_v2.sample.jsonl")[0]["system"]
    assert json.loads(conv.tools) == [json.loads(system[system.index("{"):])]
    assert conv.extra == {}


def test_glaive_row_without_functions_keeps_its_system_prompt_and_two_newline_turns():
    conv = load_files([PUBLIC / "glaive_function_calling_v2.sample.jsonl"]).conversations[1]
    assert _plain(conv.messages) == [
        ("system", "You are a helpful assistant, with no access to external functions.", []),
        ("user", "Assign this occupation to the appropriate category\nNurse", []),
        ("assistant", "Healthcare", []),
        ("user", "What about an electrician?", []),
        ("assistant", "Skilled Trades", []),
    ]
    assert conv.tools is None


def _glaive_25475(**replace):
    row = dict(_rows("glaive_function_calling_v2.sample.jsonl")[0])
    for old, new in replace.items():
        row["chat"] = row["chat"].replace(*new)
    return row


def test_glaive_words_before_a_call_stay_the_turns_text():
    # row 21816's shape: "Of course, ... Let's start the search.\n<functioncall> {...}"
    row = _glaive_25475(call=("ASSISTANT: <functioncall>", "ASSISTANT: Let me check.\n<functioncall>"))
    assert _plain(to_conversation(row).messages)[4] == (
        "assistant", "Let me check.", [("detect_language", {"text": "Je suis un étudiant"})])


def test_glaive_answer_then_a_call_in_the_next_assistant_turn_is_read():
    # "ASSISTANT: Sure, one moment. <|endoftext|>\n\n\nASSISTANT: <functioncall> ...", as Glaive rows write it
    row = _glaive_25475(edit=("ASSISTANT: <functioncall>",
                              "ASSISTANT: One moment. <|endoftext|>\n\n\nASSISTANT: <functioncall>"))
    assert _plain(to_conversation(row).messages)[4:6] == [
        ("assistant", "One moment.", []), ("assistant", "", [("detect_language", {"text": "Je suis un étudiant"})])]


@pytest.mark.parametrize("edit, code", [
    # row 71039: \' is no JSON escape
    (("'{\"text\": \"Je suis un étudiant\"}'", "'{\"text\": \"Je suis l\\'étudiant\"}'"), "bad_arguments"),
    # row 44369: an ASSISTANT: inside a user turn, so the user turn ends with <|endoftext|>
    (("identify it?\n\n\nASSISTANT: Of course, I can help with that. Please provide me with the text. <|endoftext|>",
      "identify it?\nASSISTANT: Of course, I can help with that. Please provide me with the text. <|endoftext|>"),
     "bad_transcript"),
    # row 2289: "AI:" in the source became "<|endoftext|>\n\n\nASSISTANT:" inside one answer
    (("The text you provided is in French.", "The text you provided is in <|endoftext|>\n\n\nASSISTANT:\nFrench."),
     "bad_transcript"),
])
def test_glaive_damaged_rows_are_refused(edit, code):
    with pytest.raises(RecordError) as e:
        to_conversation(_glaive_25475(edit=edit))
    assert e.value.code == code and e.value.field == "chat"


def test_glaive_call_to_a_function_it_does_not_declare_is_refused(tmp_path):
    # row 3871's shape: the call's name differs from the declared one
    row = _glaive_25475(edit=('"name": "detect_language"', '"name": "detect-language"'))
    report = load_files([_write(tmp_path / "g.jsonl", [row])])
    assert [q.code for q in report.quarantined] == ["unknown_function"]


# -- xLAM -----------------------------------------------------------------------------------------------------------

def test_xlam_record_reads_query_calls_and_tools():
    report = load_files([PUBLIC / "xlam_function_calling_60k.sample.jsonl"])
    assert report.accepted == 1, [q.reason for q in report.quarantined]
    conv, row = report.conversations[0], _rows("xlam_function_calling_60k.sample.jsonl")[0]
    assert _plain(conv.messages) == [
        ("user", "Where can I find live giveaways for beta access and games?", []),
        ("assistant", "", [("live_giveaways_by_type", {"type": "beta"}), ("live_giveaways_by_type", {"type": "game"})]),
    ]
    assert conv.tools == row["tools"] and conv.extra == {}


def test_xlam_answers_that_are_not_calls_are_refused():
    row = {**_rows("xlam_function_calling_60k.sample.jsonl")[0], "answers": "[{\"arguments\": {}}]"}
    with pytest.raises(RecordError) as e:
        to_conversation(row)
    assert e.value.code == "bad_tool_call" and e.value.field.startswith("answers")


# -- tool calls of these layouts go through the template's tool path ---------------------------------------------------

@pytest.fixture(scope="module")
def qwen():
    tok = build_tokenizer(special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    tok.eos_token = "<|im_end|>"
    tok.chat_template = (HERE / "templates" / "qwen2.5-0.5b-instruct.jinja").read_text(encoding="utf-8")
    return tok


def test_glaive_and_xlam_calls_are_trained_by_a_template_that_writes_tools(qwen):
    convs = load_files([PUBLIC / "glaive_function_calling_v2.sample.jsonl",
                        PUBLIC / "xlam_function_calling_60k.sample.jsonl"]).conversations
    trained = []
    for conv in (convs[0], convs[2]):
        ex = encode(conv, qwen, None)
        trained.append(qwen.decode([t for t, w in zip(ex.input_ids, ex.loss_weights) if w > 0]))
    assert trained == [
        "Of course, I can help with that. Please provide me with the text.<|im_end|>"
        '<tool_call>\n{"name": "detect_language", "arguments": {"text": "Je suis un étudiant"}}\n</tool_call><|im_end|>'
        "The text you provided is in French.<|im_end|>",
        '<tool_call>\n{"name": "live_giveaways_by_type", "arguments": {"type": "beta"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "live_giveaways_by_type", "arguments": {"type": "game"}}\n</tool_call><|im_end|>']


def test_a_template_without_a_tool_format_refuses_their_calls():
    tok = build_tokenizer(special_tokens=("<|endoftext|>", "<start_of_turn>", "<end_of_turn>", "<bos>"))
    tok.eos_token = "<end_of_turn>"
    convs = load_files([PUBLIC / "glaive_function_calling_v2.sample.jsonl",
                        PUBLIC / "xlam_function_calling_60k.sample.jsonl"]).conversations
    examples, quarantined = encode_all([convs[0], convs[2]], tok, "gemma")
    assert not examples and len(quarantined) == 2
    assert all("no tool-call format" in q["reason"] for q in quarantined)


# -- Nemotron -------------------------------------------------------------------------------------------------------

def test_nemotron_record_reads_system_prompt_input_and_output_and_keeps_its_metadata():
    report = load_files([PUBLIC / "nemotron_post_training.sample.jsonl"])
    assert report.accepted == 1, [q.reason for q in report.quarantined]
    conv, row = report.conversations[0], _rows("nemotron_post_training.sample.jsonl")[0]
    assert _plain(conv.messages) == [("system", "detailed thinking on", []),
                                     ("user", "Can you explain the Pythagorean theorem?", []),
                                     ("assistant", row["output"], [])]
    assert conv.license == "apache_v2"
    assert conv.extra == {k: row[k] for k in ("reasoning", "category", "generator", "used_in_training", "version")}


def test_nemotron_closing_eot_is_the_end_of_the_turn_and_a_rendered_input_is_named():
    row = _rows("nemotron_post_training.sample.jsonl")[0]
    conv = to_conversation({**row, "output": row["output"] + "<|eot_id|>"})
    assert conv.messages[-1].content == row["output"]
    rendered = ("<|start_header_id|>user<|end_header_id|>\n\n" + row["input"][0]["content"] + "<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
    with pytest.raises(RecordError) as e:
        to_conversation({**row, "input": rendered})
    assert e.value.code == "unknown_format" and "already rendered with a chat template" in e.value.reason
    assert "--column" not in e.value.reason  # no mapping of input/output would read it


def test_nemotron_field_it_does_not_know_is_refused_naming_the_layout():
    row = {**_rows("nemotron_post_training.sample.jsonl")[0], "judge_score": 0.9}
    with pytest.raises(RecordError) as e:
        to_conversation(row)
    assert e.value.code == "unused_field" and "Nemotron input/output layout" in e.value.reason


def test_nemotron_system_prompt_beside_another_system_message_is_refused():
    row = _rows("nemotron_post_training.sample.jsonl")[0]
    row = {**row, "input": [{"role": "system", "content": "Be brief."}, *row["input"]]}
    with pytest.raises(RecordError) as e:
        to_conversation(row)
    assert e.value.code == "ambiguous_system"


# -- XTuner / Capybara exchanges ---------------------------------------------------------------------------------------

def test_exchanges_read_each_input_and_output():
    report = load_files([PUBLIC / "xtuner_multi_turn_conversation.json"])
    assert report.accepted == 2 and not report.quarantined
    source = json.loads((PUBLIC / "xtuner_multi_turn_conversation.json").read_text(encoding="utf-8"))
    for conv, row in zip(report.conversations, source):
        assert [(m.role, m.content) for m in conv.messages] == [
            (role, ex[key]) for ex in row["conversation"] for role, key in (("user", "input"), ("assistant", "output"))]


def test_exchange_system_and_capybara_source_are_read(tmp_path):
    row = json.loads((PUBLIC / "xtuner_multi_turn_conversation.json").read_text(encoding="utf-8"))[0]
    row = {"source": "Know-Logic", "conversation": [{"system": "Be kind.", **row["conversation"][0]},
                                                    *row["conversation"][1:]]}
    conv = to_conversation(row)
    assert conv.source == "Know-Logic" and conv.messages[0].content == "Be kind."
    assert [m.role for m in conv.messages] == ["system"] + ["user", "assistant"] * 3


def test_exchange_key_it_does_not_read_is_refused_unless_ignored():
    row = json.loads((PUBLIC / "xtuner_multi_turn_conversation.json").read_text(encoding="utf-8"))[0]
    row["conversation"][1]["mood"] = "curious"
    with pytest.raises(RecordError) as e:
        to_conversation(row)
    assert (e.value.code, e.value.field) == ("unused_field", "conversation[1].mood")
    assert "--ignore-field 'conversation[].mood'" in e.value.reason
    assert len(to_conversation(row, columns=Columns(ignore=("conversation[].mood",))).messages) == 6


# -- LIMA -------------------------------------------------------------------------------------------------------------

def test_lima_string_turns_alternate_from_the_user_and_a_prompt_alone_is_refused():
    report = load_files([PUBLIC / "lima_turns.sample.jsonl"])
    rows = _rows("lima_turns.sample.jsonl")
    assert report.accepted == 1
    assert [(m.role, m.content) for m in report.conversations[0].messages] == [
        ("user", rows[0]["conversations"][0]), ("assistant", rows[0]["conversations"][1])]
    assert [q.code for q in report.quarantined] == ["no_assistant"]  # the test split: prompts without answers


def test_lima_turns_mixed_with_message_objects_are_refused():
    row = {"conversations": [_rows("lima_turns.sample.jsonl")[0]["conversations"][0], {"from": "gpt", "value": "x"}]}
    with pytest.raises(RecordError) as e:
        to_conversation(row)
    assert (e.value.code, e.value.field) == ("bad_message", "conversations[1]")


# -- what sftlab does not read: refused with what it is and how to read it ---------------------------------------------

def test_openassistant_message_row_is_named(capsys, tmp_path):
    row = {"message_id": "6ab24d72-0181-4594-a9cd-deaf170242fb", "parent_id": None, "user_id": "c3fe8c76",
           "created_date": "2023-02-05T14:23:50.983374+00:00", "text": "Can you write a short introduction?",
           "role": "prompter", "lang": "en", "review_count": 3, "review_result": True, "deleted": False,
           "rank": None, "synthetic": False, "model_name": None, "detoxify": None,
           "message_tree_id": "6ab24d72-0181-4594-a9cd-deaf170242fb", "tree_state": "ready_for_export",
           "emojis": None, "labels": None}
    with pytest.raises(RecordError) as e:
        to_conversation(row)
    assert "OpenAssistant message row" in e.value.reason and "parent_id" in e.value.reason


def test_pre_rendered_text_is_named():
    with pytest.raises(RecordError) as e:
        to_conversation({"text": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"})
    assert "already rendered with a chat template" in e.value.reason and "messages" in e.value.reason


def test_records_in_one_object_are_read_from_its_only_key(tmp_path):
    source = json.loads((PUBLIC / "xtuner_multi_turn_conversation.json").read_text(encoding="utf-8"))
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"train": source}, indent=2), encoding="utf-8")
    report = load_files([path])
    assert report.accepted == 2 and report.conversations[1].messages[3].content.startswith("The weather in Rosso")
    path.write_text(json.dumps({"data": [*source, {"x": 1}]}), encoding="utf-8")  # on one line
    report = load_files([path])
    assert report.accepted == 2 and [(q.line, q.code) for q in report.quarantined] == [(3, "unknown_format")]


def test_records_in_one_object_beside_other_keys_are_refused_with_the_list_named(tmp_path):
    source = json.loads((PUBLIC / "xtuner_multi_turn_conversation.json").read_text(encoding="utf-8"))
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": "1.0", "data": source}, indent=2), encoding="utf-8")
    report = load_files([path])
    assert report.records == 1 and "jq '.data'" in report.quarantined[0].reason


def test_flan_inputs_targets_hint_names_the_columns():
    with pytest.raises(RecordError) as e:
        to_conversation({"inputs": "Translate to German: hello", "targets": "hallo", "task": "wmt16"})
    assert "--column prompt=inputs --column response=targets" in e.value.reason


def test_every_unread_key_of_a_message_is_named_at_once():
    # WildChat's messages carry language, redacted, toxic, turn_identifier, country, state, hashed_ip, header
    row = {"conversation": [{"content": "Hi", "role": "user", "language": "English", "redacted": False, "toxic": False,
                             "turn_identifier": 1, "country": "Norway", "state": None, "hashed_ip": "9f2b",
                             "header": {"accept-language": "en"}},
                            {"content": "Hello", "role": "assistant", "language": "English"}]}
    cols = Columns(field_messages="conversation")
    with pytest.raises(RecordError) as e:
        to_conversation(row, columns=cols)
    unread = ["language", "redacted", "toxic", "turn_identifier", "country", "hashed_ip", "header"]
    assert e.value.field == "conversation[0].language"
    assert all(f"--ignore-field 'conversation[].{k}'" in e.value.reason for k in unread)
    assert "conversation[].state" not in e.value.reason  # empty: nothing to lose
    ignored = Columns(field_messages="conversation", ignore=tuple(f"conversation[].{k}" for k in unread))
    assert [m.content for m in to_conversation(row, columns=ignored).messages] == ["Hi", "Hello"]


def test_a_system_prompt_field_beside_a_message_list_is_named_and_read_with_one_column():
    # OpenHermes 2.5's records: conversations with weight null, a system_prompt and many null fields
    row = {"conversations": [{"from": "human", "value": "Hi", "weight": None}, {"from": "gpt", "value": "Hello",
                                                                               "weight": None}],
           "source": "airoboros2.2", "category": "orca", "system_prompt": "Be terse.", "custom_instruction": None,
           "topic": None, "model_name": None, "hash": None, "avatarUrl": None, "idx": None, "title": None}
    with pytest.raises(RecordError) as e:
        to_conversation(row)
    assert e.value.field == "system_prompt" and "--column system=system_prompt" in e.value.reason
    conv = to_conversation(row, columns=Columns(**columns_kwargs(None, {"system": "system_prompt"}, {})))
    assert [(m.role, m.content) for m in conv.messages] == [("system", "Be terse."), ("user", "Hi"),
                                                           ("assistant", "Hello")]


@pytest.mark.parametrize("name, expected", [
    ("glaive_function_calling_v2.sample.jsonl", ["system"] + ["chat"] * 6),
    ("xlam_function_calling_60k.sample.jsonl", ["query", "answers"]),
    ("nemotron_post_training.sample.jsonl", ["system_prompt", "input[0]", "output"]),
    ("lima_turns.sample.jsonl", ["conversations[0]", "conversations[1]"]),
    ("xtuner_multi_turn_conversation.json", [f"conversation[{i}].{k}" for i in range(3) for k in ("input", "output")]),
])
def test_reasons_name_each_message_where_the_record_holds_it(name, expected):
    assert list(load_files([PUBLIC / name]).conversations[0].fields) == expected
