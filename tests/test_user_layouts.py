"""Public instruction data in its own layouts (tests/data/public): loads as it is, or is
quarantined with a message that says what is wrong and what would be right."""
import json
from pathlib import Path

import pytest

from sftlab.data.formats import Columns, RecordError, to_conversation
from sftlab.data.loading import load_files

PUBLIC = Path(__file__).parent / "data" / "public"


def _write(path, rows, array=True):
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False) if array
                    else "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _fastchat():
    return json.loads((PUBLIC / "fastchat_dummy_conversation.json").read_text())


def test_fastchat_sharegpt_sample_loads():
    report = load_files([PUBLIC / "fastchat_dummy_conversation.json"])
    assert report.accepted == 30 and not report.quarantined
    assert [m.role for m in report.conversations[0].messages] == ["user", "assistant"] * 2


def test_sharegpt_with_role_content_keys_loads(tmp_path):
    """Before: ``unknown ShareGPT speaker None``."""
    rows = [{"id": r["id"], "conversations": [
        {"role": {"human": "user", "gpt": "assistant"}[m["from"]], "content": m["value"]}
        for m in r["conversations"]]} for r in _fastchat()]
    report = load_files([_write(tmp_path / "rc.json", rows)])
    assert report.accepted == 30, [e.reason for e in report.quarantined]
    assert report.conversations[1].messages[1].content.startswith("My name is Vicuna")


def test_other_speaker_names_need_a_map_and_load_with_one(tmp_path):
    rows = [{"id": r["id"], "conversations": [
        {"from": {"human": "Kunde", "gpt": "Vicuna"}[m["from"]], "value": m["value"]}
        for m in r["conversations"]]} for r in _fastchat()]
    path = _write(tmp_path / "names.jsonl", rows, array=False)
    report = load_files([path])
    assert report.accepted == 0
    reason = report.quarantined[0].reason
    assert "unknown speaker 'Kunde'" in reason and "roles" in reason and "user" in reason
    mapped = load_files([path], columns=[Columns(roles={"Kunde": "user", "Vicuna": "assistant"})])
    assert mapped.accepted == 30 and not mapped.quarantined


def test_field_messages_and_key_names(tmp_path):
    rows = [{"id": r["id"], "dialog": [{"speaker": m["from"], "text": m["value"]}
                                        for m in r["conversations"]]} for r in _fastchat()]
    path = _write(tmp_path / "dialog.json", rows)
    cols = Columns(field_messages="dialog", role_key="speaker", content_key="text",
                   roles={"human": "user", "gpt": "assistant"})
    report = load_files([path], columns=[cols])
    assert report.accepted == 30
    assert "dialog" not in report.conversations[0].extra
    with pytest.raises(ValueError, match="expected one of"):
        Columns(roles={"bot": "robot"})


def test_llamafactory_text_parts_with_value(tmp_path):
    """Before: ``content part of type 'text' is not text``."""
    rows = json.loads((PUBLIC / "llamafactory_mllm_demo.json").read_text())
    parts = [{**r, "messages": [{"role": m["role"], "content": [{"type": "text", "value": m["content"]}]}
                                for m in r["messages"]]} for r in rows]
    report = load_files([_write(tmp_path / "parts.json", parts)], columns=[Columns(ignore=("images",))])
    assert report.accepted == 2
    assert report.conversations[1].messages[0].content == "他们是谁？"


def test_images_are_refused_unless_declared_ignored():
    """Before: accepted with an ``ignored_field`` warning, the text trained without its images."""
    report = load_files([PUBLIC / "llamafactory_mllm_demo.json"])
    assert report.accepted == 0 and report.reasons() == {"unused_field": 2}
    e = report.quarantined[0]
    assert e.field == "images" and "text only" in e.reason and "ignore_fields: [images]" in e.reason
    ignored = load_files([PUBLIC / "llamafactory_mllm_demo.json"], columns=[Columns(ignore=("images",))])
    assert ignored.accepted == 2 and not ignored.warnings


def test_alpaca_demo_loads():
    report = load_files([PUBLIC / "llamafactory_alpaca_en_demo.json"])
    assert report.accepted == 3 and not report.warnings


def test_alpaca_seed_tasks_say_what_is_missing():
    """Before: ``instruction: expected a string, got a string``."""
    report = load_files([PUBLIC / "stanford_alpaca_seed_tasks.jsonl"])
    assert report.accepted == 0
    e = report.quarantined[0]
    assert e.code == "missing_field" and e.field == "output"
    assert "expected 'output'" in e.reason and "instances" in e.reason
    assert "got a string" not in e.reason


def test_preference_row_says_what_it_is():
    """Before: ``prompt: expected a string or a list of messages, got a string``."""
    with pytest.raises(RecordError) as e:
        to_conversation({"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."})
    assert e.value.code == "preference_record" and e.value.field == "chosen"
    assert "preference record" in str(e.value) and "layout: chosen" in str(e.value)
    assert "got a string" not in str(e.value)


def test_text_part_without_text_names_the_keys():
    with pytest.raises(RecordError) as e:
        to_conversation({"messages": [{"role": "user", "content": [{"type": "text", "body": "x"}]},
                                      {"role": "assistant", "content": "y"}]})
    assert "is not text" not in str(e.value) and "part keys: body, type" in str(e.value)


def test_json_array_quarantine_gives_record_number_and_line(tmp_path):
    rows = _fastchat()
    rows[2]["conversations"][1]["from"] = "robot"
    path = _write(tmp_path / "arr.json", rows)
    e = load_files([path]).quarantined[0]
    assert e.line == 3  # the record number
    text = path.read_text().splitlines()
    assert text[e.file_line - 1].strip() == "{" and '"identity_2"' in text[e.file_line]
    assert f"record 3 (line {e.file_line})" in e.message
    assert e.to_dict()["file_line"] == e.file_line


def test_accepted_without_a_word_before(tmp_path):
    """Empty user content and both layouts are quarantined; ending on a user turn is a counted warning."""
    ua = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    rows = [{"id": "empty_user", "messages": [{"role": "user", "content": " "}, ua[1]]},
            {"id": "both", "messages": ua, "conversations": [{"from": "human", "value": "x"}]},
            {"id": "ends_user", "messages": [*ua, {"role": "user", "content": "and?"}]},
            {"id": "ok", "messages": ua}]
    report = load_files([_write(tmp_path / "m.jsonl", rows, array=False)])
    assert {e.id: e.code for e in report.quarantined} == {"empty_user": "empty_user",
                                                         "both": "ambiguous_layout"}
    assert [c.id for c in report.conversations] == ["ends_user", "ok"]
    assert report.warning_counts() == {"ends_on_user": 1}


def test_nested_field_messages_reads_the_dotted_path(tmp_path):
    """Before: ``field_messages: body.messages`` read as null."""
    rows = [{"id": r["id"], "body": {"messages": [{"role": {"human": "user", "gpt": "assistant"}[m["from"]],
                                                   "content": m["value"]} for m in r["conversations"]]}}
            for r in _fastchat()[:3]]
    path = _write(tmp_path / "nested.jsonl", rows, array=False)
    report = load_files([path], columns=[Columns(field_messages="body.messages")])
    assert report.accepted == 3 and report.conversations[0].messages[0].content == rows[0]["body"]["messages"][0]["content"]
    missing = load_files([path], columns=[Columns(field_messages="body.turns")]).quarantined[0]
    assert missing.field == "body.turns" and missing.line == 1 and "field_messages" in missing.reason


def test_question_answer_and_dolly_hints_name_a_mapping_that_works(tmp_path):
    qa = [{"question": r["instruction"], "answer": r["response"]} for r in _dolly()[:4]]
    path = _write(tmp_path / "qa.jsonl", qa, array=False)
    e = load_files([path]).quarantined[0]
    assert e.code == "unknown_format" and "columns: {prompt: question, response: answer}" in e.reason
    mapped = load_files([path], columns=[Columns(prompt="question", response="answer")])
    assert mapped.accepted == 4 and mapped.conversations[0].messages[1].content == qa[0]["answer"]
    dolly = load_files([PUBLIC / "dolly_15k_sample.jsonl"]).quarantined[0]
    assert dolly.line == 1 and dolly.field == "output" and "columns: {prompt: instruction, query: context" in dolly.reason


def _dolly():
    return [json.loads(x) for x in (PUBLIC / "dolly_15k_sample.jsonl").read_text().splitlines()]


def test_dolly_through_the_config_keeps_category_as_task_and_context_in_the_prompt():
    from sftlab.train.config import load_config

    cfg = load_config(None, ["model.path=m", "out=o", f"data.train=[{{path: {PUBLIC / 'dolly_15k_sample.jsonl'}, "
                             "columns: {prompt: instruction, query: context, response: response, task: category}}]"])
    report = load_files(cfg.data.paths(cfg.data.train), columns=cfg.data.columns(cfg.data.train))
    first, raw = report.conversations[0], _dolly()[0]
    assert report.accepted == 22 and first.task == "closed_qa"
    assert first.messages[0].content == raw["instruction"] + "\n" + raw["context"]  # joined as LLaMA-Factory does
    assert report.conversations[1].messages[0].content == _dolly()[1]["instruction"]  # empty context: no newline


def test_llamafactory_entry_read_as_it_is_and_written_in_the_config_agree():
    from sftlab.train.config import DataFile

    info = PUBLIC / "llamafactory" / "dataset_info.json"
    as_is = DataFile(dataset_info=str(info), dataset="glaive_toolcall_en_demo")
    written = DataFile(path=as_is.path, formatting="sharegpt", columns={"messages": "conversations", "tools": "tools"})
    a = load_files([as_is.path], columns=[as_is.mapping()])
    b = load_files([written.path], columns=[written.mapping()])
    assert a.accepted == b.accepted == 30
    assert [c.to_dict() for c in a.conversations] == [c.to_dict() for c in b.conversations]
    calls = [m for c in a.conversations for m in c.messages if m.tool_calls]
    assert calls and all(m.role == "assistant" for m in calls)
    alpaca = DataFile(dataset_info=str(info), dataset="alpaca_en_demo")
    conv = load_files([alpaca.path], columns=[alpaca.mapping()]).conversations
    raw = json.loads(Path(alpaca.path).read_text())
    with_input = next(i for i, r in enumerate(raw) if r["input"])
    assert conv[with_input].messages[0].content == raw[with_input]["instruction"] + "\n" + raw[with_input]["input"]


@pytest.mark.parametrize("columns, tags, message", [
    ({"answer": "x"}, {}, "unknown column 'answer'"),
    ({"messages": "conversations"}, {}, "belongs to formatting: sharegpt"),
    ({}, {"speaker_tag": "x"}, "unknown tag 'speaker_tag'"),
])
def test_bad_llamafactory_keys_are_named(columns, tags, message):
    from sftlab.errors import UsageError
    from sftlab.train.config import DataFile

    with pytest.raises(UsageError, match=message):
        DataFile(path="x.json", formatting="sharegpt" if tags else "alpaca", columns=columns, tags=tags).mapping()


PROMPT = "Write a haiku about rain."


@pytest.mark.parametrize("row", [
    {"prompt": PROMPT, "chosen": "Soft rain on the roof.", "rejected": "No."},                       # TRL, strings
    {"prompt": [{"role": "user", "content": PROMPT}],                                              # TRL, explicit prompt
     "chosen": [{"role": "assistant", "content": "Soft rain on the roof."}],
     "rejected": [{"role": "assistant", "content": "No."}]},
    {"chosen": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": "Soft rain on the roof."}],
     "rejected": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": "No."}]},   # implicit prompt
    {"instruction": PROMPT, "input": "", "chosen": "Soft rain on the roof.", "rejected": "No."},   # LLaMA-Factory alpaca
    {"conversations": [{"from": "human", "value": PROMPT}],                                        # LLaMA-Factory sharegpt
     "chosen": {"from": "gpt", "value": "Soft rain on the roof."}, "rejected": {"from": "gpt", "value": "No."}},
])
def test_preference_layouts_are_refused_or_trained_on_the_chosen_answer(row):
    with pytest.raises(RecordError) as e:
        to_conversation(row)
    assert e.value.code == "preference_record" and "layout: chosen" in e.value.reason
    conv = to_conversation(row, columns=Columns(layout="chosen"))
    assert [(m.role, m.content) for m in conv.messages] == [("user", PROMPT), ("assistant", "Soft rain on the roof.")]
    assert "No." not in json.dumps(conv.to_dict())


def test_multi_turn_preference_prompt_never_trains_its_earlier_turns():
    """LLaMA-Factory's dpo layout: the prompt's earlier turns are context; before, they were trained and
    the record accepted with an ``ends_on_user`` warning."""
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
                             {"from": "human", "value": PROMPT}],
           "chosen": {"from": "gpt", "value": "Soft rain."}, "rejected": {"from": "gpt", "value": "No."}}
    with pytest.raises(RecordError):
        to_conversation(row)
    conv = to_conversation(row, columns=Columns(layout="chosen"))
    assert [m.role for m in conv.messages] == ["user", "assistant", "user", "assistant"]
    assert conv.messages[-1].content == "Soft rain."


def test_loss_weight_zero_is_not_trained_and_on_a_user_turn_above_zero_is_refused(hand_tok):
    from sftlab.tokens.encoding import EncodingError, encode

    row = {"messages": [{"role": "user", "content": "hi", "loss_weight": 0.0},
                        {"role": "assistant", "content": "hello", "loss_weight": 0.0}]}
    with pytest.raises(EncodingError) as e:
        encode(to_conversation(row), hand_tok, "chatml")
    assert e.value.code == "no_trained_token"
    row["messages"][0]["loss_weight"] = 1.0
    with pytest.raises(RecordError) as e:
        to_conversation(row)
    assert e.value.field == "messages[0].loss_weight" and "only assistant messages are trained" in e.value.reason


def test_history_must_be_pairs_of_strings():
    with pytest.raises(RecordError) as e:
        to_conversation({"instruction": "q", "output": "a", "history": [["only one"]]})
    assert e.value.code == "bad_history" and e.value.field == "history[0]"


def test_an_unknown_field_names_the_option_and_ignoring_it_is_kept_as_metadata():
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
           "source_url": "https://example.org", "ratings": [4, 5]}
    with pytest.raises(RecordError) as e:
        to_conversation(row)
    assert e.value.code == "unused_field" and e.value.field in ("source_url", "ratings")
    assert "ignore_fields" in e.value.reason and "--ignore-field" in e.value.reason
    conv = to_conversation(row, columns=Columns(ignore=("source_url", "ratings")))
    assert conv.extra == {"source_url": "https://example.org", "ratings": [4, 5]}
    copy = {**row, "prompt": "hi", "ratings": None}  # a copy of a message's text, and an empty column
    del copy["source_url"]
    assert to_conversation(copy).messages == conv.messages


def test_data_ignore_fields_applies_to_every_entry_and_is_part_of_the_config():
    from sftlab.train.config import load_config

    mllm = PUBLIC / "llamafactory" / "mllm_demo.json"
    cfg = load_config(None, ["model.path=m", "out=o", f"data.train=[{mllm}]"])
    assert cfg.data.columns(cfg.data.train) == [None]
    assert load_files([mllm], columns=cfg.data.columns(cfg.data.train)).reasons() == {"unused_field": 6}
    cfg = load_config(None, ["model.path=m", "out=o", f"data.train=[{mllm}]", "data.ignore_fields=[images]"])
    assert load_files([mllm], columns=cfg.data.columns(cfg.data.train)).accepted == 6
    assert cfg.to_dict()["data"]["ignore_fields"] == ["images"]  # what the manifest records


def test_ultrafeedback_shaped_preference_rows_train_the_chosen_conversation():
    """UltraFeedback-binarized rows carry the prompt, the chosen conversation twice (chosen, messages)
    and the scores: the copies are accounted for, the scores must be declared."""
    chosen = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": "Soft rain."}]
    row = {"prompt": PROMPT, "prompt_id": "ab12", "chosen": chosen, "messages": chosen,
           "rejected": [chosen[0], {"role": "assistant", "content": "No."}], "score_chosen": 8.0,
           "score_rejected": 2.0}
    with pytest.raises(RecordError) as e:
        to_conversation(row, columns=Columns(layout="chosen"))
    assert e.value.code == "unused_field" and e.value.field == "score_chosen"
    conv = to_conversation(row, columns=Columns(layout="chosen", ignore=("score_chosen", "score_rejected")))
    assert [(m.role, m.content) for m in conv.messages] == [("user", PROMPT), ("assistant", "Soft rain.")]


def test_a_bad_data_entry_in_the_config_is_named_not_the_plain_path_branch():
    """Before: ``data.train.0.str: Input should be a valid string`` for any problem of a mapping entry."""
    from sftlab.train.config import ConfigError, load_config

    info = PUBLIC / "llamafactory" / "dataset_info.json"
    for entry, message in ((f"{{dataset_info: {info}, dataset: nope}}", "data.train.0: " + str(info) + ": no dataset entry 'nope'"),
                           ("{path: x.json, layout: rejected}", "data.train.0.layout: Input should be 'chosen'")):
        with pytest.raises(ConfigError) as e:
            load_config(None, ["model.path=m", "out=o", f"data.train=[{entry}]"])
        assert str(e.value).startswith(message), str(e.value)


def test_a_record_no_layout_reads_gets_the_mapping_that_reads_it_and_every_unread_field_at_once(tmp_path):
    """LMSYS-Chat-1M's layout (`conversation`, role/content, beside ids and moderation results) and
    OpenOrca's (`system_prompt`, `question`, `response`): the hint names the mapping, and following
    it the record is read or refused naming every field still unread, not one per try."""
    from sftlab.data.formats import Columns, RecordError, to_conversation

    lmsys = {"conversation_id": "c1", "model": "vicuna-13b", "turn": 1, "language": "English", "redacted": False,
             "conversation": [{"content": "hi", "role": "user"}, {"content": "hello", "role": "assistant"}],
             "openai_moderation": [{"flagged": False}]}
    with pytest.raises(RecordError, match=r"field_messages: conversation \(validate: --field-messages conversation\)"):
        to_conversation(lmsys)
    with pytest.raises(RecordError) as e:
        to_conversation(lmsys, None, Columns(field_messages="conversation"))
    assert "fields 'turn', 'redacted', 'openai_moderation' are not read" in str(e.value)
    conv = to_conversation(lmsys, None, Columns(field_messages="conversation", ignore=("turn", "redacted", "openai_moderation")))
    assert [m.content for m in conv.messages] == ["hi", "hello"]
    orca = {"id": "niv.1", "system_prompt": "You are an AI assistant.", "question": "2+2?", "response": "4"}
    with pytest.raises(RecordError, match=r"\{prompt: question, response: response, system: system_prompt\}"):
        to_conversation(orca)
    conv = to_conversation(orca, None, Columns(prompt="question", response="response", system="system_prompt"))
    assert [(m.role, m.content) for m in conv.messages] == [("system", "You are an AI assistant."), ("user", "2+2?"),
                                                           ("assistant", "4")]


@pytest.mark.parametrize("record", [
    {"system": "Be brief.", "conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "hi"},
                                               {"from": "gpt", "value": "hello"}]},
    {"system": "Be brief.", "messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"},
                                          {"role": "assistant", "content": "hello"}]},
])
def test_two_system_prompts_are_named_as_the_record_gives_them_in_every_layout(record):
    """A top-level system prompt beside a system message in the list: one system prompt is kept when
    they agree, the record is refused naming the top-level field when they do not (ShareGPT was
    refused as a misplaced 'messages[1]' before)."""
    with pytest.raises(RecordError) as e:
        to_conversation(record)
    assert e.value.code == "ambiguous_system" and e.value.field == "system"
    same = {**record, "system": "Be kind."}
    assert [m.role for m in to_conversation(same).messages] == ["system", "user", "assistant"]


def test_reasons_name_each_message_as_the_record_does():
    """A record's turn checks name the field in the record's own layout: ShareGPT's
    ``conversations[i].from``/``.value`` (after a top-level system prompt), Alpaca's ``output`` and
    ``history[i][j]``, OpenAI's ``messages[i]``; from FastChat's public dummy conversation."""
    from sftlab.data.loading import check_conversation

    first = _fastchat()[0]
    turns = first["conversations"]
    cases = [
        ({"conversations": [turns[0], turns[0], turns[1]]}, "conversations[1].from", "broken_alternation"),
        ({"system": "Be brief.", "conversations": [turns[0], {**turns[1], "value": " "}]}, "conversations[1].value",
         "empty_assistant"),
        ({"instruction": turns[0]["value"], "output": "  "}, "output", "empty_assistant"),
        ({"instruction": turns[0]["value"], "output": turns[1]["value"], "history": [["", "x"]]}, "history[0][0]",
         "empty_user"),
        ({"messages": [{"role": "user", "content": "hi"}] * 2 + [{"role": "assistant", "content": "yo"}]},
         "messages[1].role", "broken_alternation"),
    ]
    for record, field, code in cases:
        with pytest.raises(RecordError) as e:
            check_conversation(to_conversation(record))
        assert (e.value.field, e.value.code) == (field, code)
    with pytest.raises(RecordError, match="right after a user message; expected a user message"):
        check_conversation(to_conversation(cases[0][0]))


def test_dataset_info_hub_entries_name_the_hub_split_and_keys_that_change_records_are_refused(tmp_path):
    """LLaMA-Factory's own hub entries read as sftlab's hub names (split and subset kept: adgen's
    validation split is not trained as if it were train), a ModelScope-only entry is named, and an
    entry key that would train other records than it describes (num_samples, a wrong file_sha1, a
    key sftlab does not read) is refused, never ignored."""
    import hashlib
    import json

    from sftlab.data.layouts import dataset_info_entry
    from sftlab.errors import UsageError

    hub = PUBLIC / "llamafactory" / "dataset_info_hub.json"
    assert str(dataset_info_entry(hub, "ultrachat_200k")[0]) == "HuggingFaceH4/ultrachat_200k::train_sft"
    assert str(dataset_info_entry(hub, "adgen_eval")[0]) == "HasturOfficial/adgen::validation"
    assert str(dataset_info_entry(hub, "llava_1k_en")[0]) == "BUAADreamer/llava-en-zh-2k:en:train"
    assert str(dataset_info_entry(hub, "alpaca_en")[0]) == "llamafactory/alpaca_en::train"
    with pytest.raises(UsageError, match=r"\[deepctrl\]: no file_name \(its data is at ms_hub_url: deepctrl/"):
        dataset_info_entry(hub, "deepctrl")
    chats = PUBLIC / "llamafactory" / "alpaca_en_demo.json"
    sha1 = hashlib.sha1(chats.read_bytes()).hexdigest()
    info = tmp_path / "dataset_info.json"
    info.write_text(json.dumps({
        "ok": {"file_name": str(chats), "file_sha1": sha1},
        "changed": {"file_name": str(chats), "file_sha1": "0" * 40},
        "sample": {"file_name": str(chats), "num_samples": 10},
        "valid": {"file_name": str(chats), "split": "validation"},
        "typo": {"file_name": str(chats), "colums": {"prompt": "instruction"}}}))
    assert dataset_info_entry(info, "ok")[0] == chats
    for name, message in (("changed", r"file_sha1 0{40} does not match .*alpaca_en_demo\.json \(its SHA-1 is " + sha1),
                          ("sample", r"num_samples: LLaMA-Factory trains a sample of 10 records"),
                          ("valid", r"split: 'validation' names part of a hub dataset; a local file_name is read whole"),
                          ("typo", r"colums: not a dataset_info key sftlab reads")):
        with pytest.raises(UsageError, match=rf"\[{name}\]: {message}"):
            dataset_info_entry(info, name)
