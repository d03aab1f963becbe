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
