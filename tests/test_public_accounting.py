"""Public data in its own layouts (tests/data/public, sources and licences in its README): every
record is accepted or quarantined with a reason that names the field and the option that would keep
it, and every field and piece of content of an accepted record is accounted for: in the
conversation (and so in the rendering), dropped by an option the case sets (``ignore_fields``, the
``rejected`` answer under ``layout: chosen``), or metadata. No accepted record has an assistant
turn that is empty where its source had text or a call.

The cases, with what a user must set for each file, are the table of the README's data section."""
import gzip
import json
from pathlib import Path

import pytest

from sftlab.data.loading import load_files
from sftlab.train.config import DataFile

PUBLIC = Path(__file__).parent / "data" / "public"
LF = PUBLIC / "llamafactory"
INFO = str(LF / "dataset_info.json")
DOLLY = {"prompt": "instruction", "query": "context", "response": "response", "task": "category"}

# (file, data entry keys, accepted, quarantined by reason, a phrase every quarantine reason holds)
CASES = [
    ("fastchat_dummy_conversation.json", {}, 30, {}, None),
    ("dolly_15k_sample.jsonl", {}, 0, {"missing_field": 22}, "columns: {prompt: instruction, query: context"),
    ("dolly_15k_sample.jsonl", {"columns": DOLLY}, 22, {}, None),
    ("llamafactory/alpaca_en_demo.json", {}, 30, {}, None),
    ("llamafactory/alpaca_en_demo.json", {"dataset": "alpaca_en_demo"}, 30, {}, None),
    ("llamafactory/identity.json", {}, 30, {}, None),
    ("llamafactory/identity.json", {"dataset": "identity"}, 30, {}, None),
    ("llamafactory/glaive_toolcall_en_demo.json", {}, 30, {}, None),
    ("llamafactory/glaive_toolcall_en_demo.json", {"dataset": "glaive_toolcall_en_demo"}, 30, {}, None),
    ("llamafactory/reason_tool_use_demo_50.jsonl", {}, 20, {}, None),
    ("llamafactory/v1_sft_demo.jsonl", {}, 30, {}, None),
    ("llamafactory/dpo_en_demo.json", {}, 0, {"preference_record": 20}, "layout: chosen"),
    ("llamafactory/dpo_en_demo.json", {"dataset": "dpo_en_demo"}, 0, {"preference_record": 20}, "layout: chosen"),
    ("llamafactory/dpo_en_demo.json", {"dataset": "dpo_en_demo", "layout": "chosen"}, 20, {}, None),
    ("llamafactory/kto_en_demo.json", {}, 0, {"unused_field": 10}, "KTO label"),
    ("llamafactory/kto_en_demo.json", {"dataset": "kto_en_demo"}, 0, {"unused_field": 10}, "KTO label"),
    ("llamafactory/mllm_demo.json", {}, 0, {"unused_field": 6}, "ignore_fields: [images]"),
    ("llamafactory/mllm_demo.json", {"dataset": "mllm_demo", "ignore_fields": ["images"]}, 6, {}, None),
    ("azure_openai_chat_examples.jsonl", {}, 3, {"non_string_content": 1}, "of type 'image_url', not text"),
    ("msswift_custom_dataset.jsonl", {}, 6, {"unused_field": 2}, "ignore_fields: [channel]"),
    ("msswift_custom_dataset.jsonl", {"columns": {"slice": "channel"}}, 8, {}, None),
]


def _load(name: str, entry: dict):
    keys = {**entry, **({"dataset_info": INFO} if "dataset" in entry else {"path": str(PUBLIC / name)})}
    data_file = DataFile(**keys)
    assert Path(data_file.path).resolve() == (PUBLIC / name).resolve()
    return load_files([data_file.path], columns=[data_file.mapping()]), data_file


def _raw_records(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines()]


def _leaves(value, key=None):
    """``(key, value)`` of every scalar in a JSON value (the key it sits under; list items keep
    the list's key); a string holding a JSON object or list is opened too."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v, key)
    else:
        yield key, value


def _texts(conv) -> list[str]:
    """Everything an accepted record carries on into encoding: message text, reasoning, calls, tools,
    metadata."""
    out = [conv.tools or ""]
    for m in conv.messages:
        out += [m.content, m.reasoning or "", *(c.name for c in m.tool_calls), *(c.arguments for c in m.tool_calls)]
    out += [str(v) for v in conv.metadata().values()]
    return out


STRUCTURE = {"role", "from", "type"}  # speaker names and part kinds: read as roles, checked below


def _unaccounted(raw: dict, conv, dropped: set[str]) -> list:
    texts = _texts(conv)
    weights = {m.weight for m in conv.messages}
    trains = {m.train for m in conv.messages}
    missing = []

    def check(key, leaf):
        if key in STRUCTURE or leaf is None or leaf == "":
            return
        if key in ("loss_weight", "weight", "loss_scale") and leaf in weights:
            return  # a message's weight (or a number of that name in call arguments, checked as text)
        if key in ("train", "loss") and leaf in trains:
            return  # whether a message is trained (ms-swift's loss)
        text = leaf if isinstance(leaf, str) else json.dumps(leaf)
        if any(text in t for t in texts):
            return
        if isinstance(leaf, str) and leaf.lstrip()[:1] in ("{", "["):  # JSON text: its parts must be there
            for k, v in _leaves(json.loads(leaf)):
                check(k, v)
            return
        missing.append((key, leaf))

    for top, value in raw.items():
        if top not in dropped:
            for key, leaf in _leaves(value, top):
                check(key, leaf)
    return missing


@pytest.mark.parametrize("name, entry, accepted, reasons, phrase", CASES,
                         ids=[f"{c[0]}{'+' + '+'.join(c[1]) if c[1] else ''}" for c in CASES])
def test_every_record_and_field_is_accounted_for(name, entry, accepted, reasons, phrase):
    report, data_file = _load(name, entry)
    raw = _raw_records(PUBLIC / name)
    assert report.records == len(raw)
    assert report.accepted == accepted and report.reasons() == reasons
    for e in report.quarantined:
        assert e.field and phrase in e.reason, e.message
    dropped = set(data_file.ignore_fields) | ({"rejected"} if data_file.layout == "chosen" else set())
    for conv in report.conversations:
        record = raw[conv.origin.line - 1]
        assert _unaccounted(record, conv, dropped) == [], conv.origin
        for m in conv.messages:
            assert m.role != "assistant" or m.content.strip() or m.tool_calls, conv.origin


def test_content_reaches_the_rendering_or_the_record_is_refused():
    """Each accepted record of the tool and reasoning files, encoded with the built-in chatml (which
    writes tools and calls): every message's text, call and schema name is in the rendering, or the
    encoding refuses the record with its reason; never an empty trained assistant turn."""
    from sftlab.demo.tiny import build_tokenizer
    from sftlab.tokens.encoding import EncodingError, encode_expanded

    tok = build_tokenizer()
    seen = {"rendered": 0, "refused": 0}
    for name in ("llamafactory/glaive_toolcall_en_demo.json", "llamafactory/reason_tool_use_demo_50.jsonl",
                 "llamafactory/v1_sft_demo.jsonl"):
        for conv in load_files([PUBLIC / name]).conversations[:8]:
            try:
                ex = encode_expanded(conv, tok, "chatml", turns="whole", trace=True)[0]
            except EncodingError as e:
                assert str(e), conv.origin
                seen["refused"] += 1
                continue
            text = ex.trace.layout.text
            for m in conv.messages:
                assert m.content in text and all(c.name in text for c in m.tool_calls), conv.origin
            assert all(n in text for n in conv.tool_names()), conv.origin
            assert ex.trained_tokens > 0
            seen["rendered"] += 1
    assert seen["rendered"] >= 8, seen


def test_history_and_loss_weight_are_read():
    """LLaMA-Factory's Alpaca ``history`` holds earlier turns; its per-message ``loss_weight`` is the
    message's weight (v1_sft_demo gives 0.0 to the user turn and 1.0 to the answer)."""
    from sftlab.data.formats import to_conversation

    record = {**_raw_records(LF / "alpaca_en_demo.json")[0], "history": [["Earlier question?", "Earlier answer."]]}
    lf_names = DataFile(dataset_info=INFO, dataset="alpaca_en_demo", columns={"history": "history"}).mapping()
    for columns in (None, lf_names):
        conv = to_conversation(record, columns=columns)
        assert [(m.role, m.content) for m in conv.messages[:2]] == [("user", "Earlier question?"),
                                                                    ("assistant", "Earlier answer.")]
        assert [m.role for m in conv.messages[2:]] == ["user", "assistant"]
    v1 = load_files([LF / "v1_sft_demo.jsonl"]).conversations[0]
    assert [(m.role, m.weight) for m in v1.messages] == [("user", 0.0), ("assistant", 1.0)]


def test_ms_swift_loss_loss_scale_and_channel_are_read_as_documented():
    """ms-swift's own examples (docs/source_en/Customization/Custom-dataset.md): ``loss: false`` leaves
    an assistant turn untrained and ``true`` trains it, ``loss_scale`` is its weight, ``channel``
    (per-channel loss) maps to sftlab's slice (per-slice loss), and the agent layout's consecutive
    ``tool_call`` messages are one assistant turn's calls, answered by ``tool_response`` messages."""
    from sftlab.tokens.weighting import trained_messages

    entry = DataFile(path=str(PUBLIC / "msswift_custom_dataset.jsonl"), columns={"slice": "channel"})
    report = load_files([entry.path], columns=[entry.mapping()])
    by_line = {c.origin.line: c for c in report.conversations}
    assert trained_messages(by_line[4].messages, last_turn_only=False) == {3: 1.0}
    assert trained_messages(by_line[4].messages, last_turn_only=True) == {3: 1.0}
    assert trained_messages(by_line[5].messages, last_turn_only=False) == {1: 1.0, 2: 2.0}
    assert [by_line[n].slice for n in (6, 7)] == ["general", "math"]
    assert [(m.role, [c.name for c in m.tool_calls]) for m in by_line[1].messages] == [
        ("user", []), ("assistant", ["get_weather"]), ("tool", [])]
    assert [(m.role, [c.name for c in m.tool_calls]) for m in by_line[8].messages] == [
        ("user", []), ("assistant", ["realtime_aqi", "realtime_aqi"]), ("tool", []), ("tool", []), ("assistant", [])]


def test_openai_weight_is_read_as_documented():
    """OpenAI's chat fine-tuning format (Azure OpenAI's copy of the examples): ``weight: 0`` skips an
    assistant message, ``weight: 1`` trains it."""
    from sftlab.tokens.weighting import trained_messages

    report = load_files([PUBLIC / "azure_openai_chat_examples.jsonl"])
    assert [trained_messages(c.messages, last_turn_only=False) for c in report.conversations] == [{4: 1.0}] * 3


HH = PUBLIC / "hh_rlhf_harmless_test.sample.jsonl.gz"


def _hh_turns(transcript: str) -> list[tuple[str, str]]:
    """The transcript's turns, split here by hand (independently of sftlab's reader)."""
    out = []
    for chunk in transcript.split("\n\nHuman: ")[1:]:
        said = chunk.split("\n\nAssistant: ")
        out.append(("user", said[0]))
        out += [("assistant", a) for a in said[1:]]
    return out


def test_anthropic_hh_transcripts_are_read_turn_by_turn_under_layout_chosen():
    """HH-RLHF as published (gzipped JSONL, `chosen`/`rejected` transcripts): refused as preference
    records by default; under `layout: chosen` each chosen transcript is its turns, every word of it
    in the conversation in order; the rejected answers are what the option drops; an empty chosen
    answer is refused, not trained."""
    raw = [json.loads(x) for x in gzip.decompress(HH.read_bytes()).decode().splitlines()]
    plain = load_files([HH])
    assert not plain.conversations and {q.code for q in plain.quarantined} == {"preference_record"}
    report = load_files([HH], columns=[DataFile(path=str(HH), layout="chosen").mapping()])
    assert [(q.line, q.code) for q in report.quarantined] == [(7, "empty_assistant")]
    assert len(report.conversations) == 7
    for conv in report.conversations:
        want = _hh_turns(raw[conv.origin.line - 1]["chosen"])
        assert [(m.role, m.content) for m in conv.messages] == want
    assert [m.role for m in report.conversations[-1].messages][:3] == ["user", "assistant", "assistant"]
