"""Nothing a record says is lost between the record and the trained tokens (DESIGN.md, invariant 9):
tool schemas, tool calls, reasoning, the system prompt and every answer are in the rendering (trained
as the encoding says), dropped by an option the user set, or the record is refused with the reason.

Material from elsewhere: the official chat templates of tests/data/chat_templates and
tests/data/templates (SmolLM2-135M-Instruct, Qwen2.5, Llama 3.1, Qwen3, Mistral v0.3; sources in
the READMEs there) and LLaMA-Factory's glaive_toolcall_en_demo sample (tests/data/tools/NOTICE.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.cli import main
from sftlab.data.conversation import Conversation, Message, ToolCall
from sftlab.data.loading import load_files
from sftlab.demo.tiny import build_tokenizer
from sftlab.tokens.encoding import EncodingError, encode_all, encode_expanded
from sftlab.tokens.masks import check_template
from sftlab.tokens.templates import get_template
from sftlab.tokens.trained_turns import TRANSFORMS
from tests.test_real_templates import tokenizer_for

GLAIVE = Path(__file__).parent / "data" / "tools" / "glaive_toolcall_en_demo.sample.json"
MISTRAL_TOOLS = Path(__file__).parent / "data" / "templates" / "mistral-7b-instruct-v0.3.jinja"


@pytest.fixture(scope="module")
def toks():
    return {}


def _trained(tok, ex) -> str:
    return tok.decode([i for i, w in zip(ex.input_ids, ex.loss_weights) if w > 0])


def _turn_text(ex, i) -> str:
    lay = ex.trace.layout
    turn = lay.turn(i)
    return lay.text[turn.start:turn.end]


# -- tool calls and tool schemas -----------------------------------------------------------------

def test_smollm2_refuses_every_glaive_record_with_tools_and_names_what_is_lost(toks):
    """SmolLM2-135M-Instruct's own template writes neither schemas nor calls: before, 10 of the 11
    records were accepted with the call turn trained as ``<|im_end|>`` alone."""
    tok = tokenizer_for("smollm2", toks)
    report = load_files([GLAIVE])
    examples, quarantined = encode_all(report.conversations, tok, None)
    with_tools = [c for c in report.conversations if c.tools and c.tool_list()]
    assert len(examples) + len(quarantined) == len(report.conversations) == 11
    assert len(quarantined) == len(with_tools) == 10
    by_id = {q["line"]: q for q in quarantined}
    for conv in with_tools:
        q = by_id[conv.origin.line]
        calls = any(m.tool_calls for m in conv.messages)
        assert q["code"] == ("tool_calls_not_written" if calls else "tools_not_written"), q["reason"]
        assert "SmolLM2" not in q["reason"] and "the tokenizer's own template writes no tool" in q["reason"]
        assert "use a template that writes them" in q["reason"]
    # The record that is accepted has no tools and no call: every answer of it is trained.
    (ok,) = examples
    (conv,) = [c for c in report.conversations if c not in with_tools]
    trained = _trained(tok, ok)
    assert all(m.content in trained for m in conv.messages if m.role == "assistant")


@pytest.mark.parametrize("name", ["qwen2.5", "llama-3.1"])
def test_templates_that_write_tools_train_every_glaive_call_exactly(name, toks):
    """Qwen2.5's and Llama 3.1's official templates write schemas and calls: every record is
    trained, each call turn holds its call (name and arguments), and no turn is trained empty."""
    tok = tokenizer_for(name, toks)
    report = load_files([GLAIVE])
    calls = 0
    for conv in report.conversations:
        examples = encode_expanded(conv, tok, None, turns="expand", trace=True)
        for i, m in enumerate(conv.messages):
            if m.role != "assistant":
                continue
            ex = next(e for e in examples if e.trace.layout.turn(i) is not None
                      and len(e.trace.messages) > i and e.trace.messages[i].content == m.content)
            text = _turn_text(ex, i)
            assert m.content.strip() in text
            for call in m.tool_calls:
                calls += 1
                assert call.name in text
                args = call.arguments_value()
                assert json.dumps(args, ensure_ascii=False) in text or all(
                    json.dumps(v, ensure_ascii=False) in text for v in args.values()), (text, args)
        schema_names = [t.get("function", t)["name"] for t in conv.tool_list()]
        context = examples[0].trace.layout.text
        assert all(n in context for n in schema_names)
    assert calls == sum(len(m.tool_calls) for c in report.conversations for m in c.messages) == 14


def test_a_template_without_a_tool_format_refuses_schemas_alone():
    tok = build_tokenizer()
    conv = Conversation((Message("user", "Hi"), Message("assistant", "Hello.")),
                        tools=json.dumps([{"type": "function", "function": {"name": "lookup", "parameters": {}}}]))
    plain = ("{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
             "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}")
    with pytest.raises(EncodingError, match="writes no tool schemas") as e:
        encode_expanded(conv, tok, plain)
    assert e.value.code == "tools_not_written"
    assert encode_expanded(conv, tok, "chatml")[0].trained_tokens > 0  # chatml writes them


def test_a_template_that_writes_the_call_name_but_not_its_arguments_is_refused():
    tok = build_tokenizer()
    names_only = ("{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}"
                  "{%- for c in m['tool_calls'] or [] %}{{ '<call>' + c['function']['name'] + '</call>' }}{%- endfor %}"
                  "{{ '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                  "{%- endif %}")
    conv = Conversation((Message("user", "Weather in Oslo?"),
                         Message("assistant", "", tool_calls=(ToolCall("get_weather", '{"city": "Oslo"}', "c1"),)),
                         Message("tool", "-3", tool_call_id="c1"), Message("assistant", "Cold.")))
    with pytest.raises(EncodingError, match="without 'city' of its arguments") as e:
        encode_expanded(conv, tok, names_only)
    assert e.value.code == "tool_calls_not_written"


REASON_TOOLS = Path(__file__).parent / "data" / "tools" / "reason_tool_use_demo.sample.jsonl"


def test_reasoning_and_tool_records_under_qwen3_and_smollm2(toks):
    """LLaMA-Factory's reason_tool_use_demo (reasoning, calls and schemas as content parts): Qwen3
    writes all of it (each turn in its own example); SmolLM2 writes none of it, and each record is
    refused with what it loses. Under ``reasoning: drop`` Qwen3 reads reasoning from the content,
    and two answers of the sample contain a stray ``</think>`` beside their reasoning part: refused,
    naming the message and the tag (reasoning given twice; under drop the text before it would train)."""
    report = load_files([REASON_TOOLS])
    qwen3 = tokenizer_for("qwen3", toks)
    examples, quarantined = encode_all(report.conversations, qwen3, None, turns="expand")
    assert not quarantined and len(examples) >= len(report.conversations) == 8
    _, dropped = encode_all(report.conversations, qwen3, None, turns="expand", reasoning="drop")
    stray = [c for c in report.conversations if any("</think>" in m.content for m in c.messages)]
    assert len(dropped) == len(stray) == 2
    assert all(q["code"] == "reasoning_unread" and "'</think>'" in q["reason"] for q in dropped)
    smol = tokenizer_for("smollm2", toks)
    _, refused = encode_all(report.conversations, smol, None)
    assert len(refused) == 8 and all("does not write the reasoning" in q["reason"] for q in refused)
    _, refused = encode_all(report.conversations, smol, None, reasoning="drop")
    assert len(refused) == 8 and {q["code"] for q in refused} == {"tools_not_written", "tool_calls_not_written",
                                                                  "reasoning_unread"}


# -- reasoning, the system prompt ------------------------------------------------------------------

def test_reasoning_the_template_does_not_write_is_refused_unless_dropped(toks):
    tok = tokenizer_for("smollm2", toks)
    conv = Conversation((Message("user", "2+2?"), Message("assistant", "4.", reasoning="Two and two make four.")))
    with pytest.raises(EncodingError, match="does not write the reasoning.*encoding.reasoning: drop"):
        encode_expanded(conv, tok, None)
    (ex,) = encode_expanded(conv, tok, None, reasoning="drop")
    assert _trained(tok, ex) == "4.<|im_end|>"


def test_a_template_that_drops_the_system_prompt_refuses_the_record(toks):
    """The Mistral v0.3 tool-use template (huggingface.js's test case) has no system branch: the
    system prompt would be lost. Gemma folds it into the first user turn: it is in the rendering."""
    tok = build_tokenizer(special_tokens=("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]",
                                          "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
                                          "[/TOOL_RESULTS]"))
    tok.bos_token, tok.eos_token = "<s>", "</s>"
    tok.chat_template = MISTRAL_TOOLS.read_text(encoding="utf-8")
    conv = Conversation((Message("system", "Answer in French."), Message("user", "Hi"), Message("assistant", "Salut.")))
    with pytest.raises(EncodingError, match="drops the content of message 0 \\(system\\)"):
        encode_expanded(conv, tok, None)
    gemma = tokenizer_for("gemma-2", toks)  # Gemma 2's own template refuses a system message; the built-in folds it
    (ex,) = encode_expanded(conv, gemma, "gemma", trace=True)
    assert "Answer in French." in ex.trace.layout.text


# -- inline reasoning --------------------------------------------------------------------------------

THINKING = Conversation((Message("user", "2+2?"),
                         Message("assistant", "<think>\nadd two and two\n</think>\n\nIt is 4.")))


def test_inline_reasoning_keep_mask_drop_under_qwen3(toks):
    tok = tokenizer_for("qwen3", toks)
    keep = encode_expanded(THINKING, tok, None, reasoning="keep", trace=True)[0]
    mask = encode_expanded(THINKING, tok, None, reasoning="mask", trace=True)[0]
    drop = encode_expanded(THINKING, tok, None, reasoning="drop", trace=True)[0]
    assert _trained(tok, keep) == "<think>\nadd two and two\n</think>\n\nIt is 4.<|im_end|>"
    assert keep.reasoning_tokens > 0
    # mask: rendered exactly as keep, the reasoning not trained
    assert list(mask.input_ids) == list(keep.input_ids)
    assert "add two and two" in mask.trace.layout.text and "add" not in _trained(tok, mask)
    assert _trained(tok, mask) == "<think>\n\n</think>\n\nIt is 4.<|im_end|>"
    # drop: not in the rendering at all (Qwen3 writes its empty think block for the last turn)
    assert "add two and two" not in drop.trace.layout.text
    assert _trained(tok, drop) == "<think>\n\n</think>\n\nIt is 4.<|im_end|>"


def test_inline_reasoning_under_a_template_without_a_reasoning_format(toks):
    """SmolLM2's template writes no reasoning field: the block stays where the data puts it, trained
    (keep), rendered with weight 0 markers included (mask) or removed (drop); off, it is answer text."""
    tok = tokenizer_for("smollm2", toks)
    whole = THINKING.messages[1].content + "<|im_end|>"
    (keep,) = encode_expanded(THINKING, tok, None, reasoning="keep")
    assert _trained(tok, keep) == whole and keep.reasoning_tokens > 0
    (mask,) = encode_expanded(THINKING, tok, None, reasoning="mask", trace=True)
    assert list(mask.input_ids) == list(keep.input_ids)
    # mask: the whole block the data writes, its markers too, is rendered with weight 0
    assert _trained(tok, mask) == "It is 4.<|im_end|>" and mask.reasoning_tokens == 0
    (drop,) = encode_expanded(THINKING, tok, None, reasoning="drop", trace=True)
    assert _trained(tok, drop) == "It is 4.<|im_end|>" and "add two" not in drop.trace.layout.text
    # The off switch: the block is answer text, trained as the record gives it whatever the mode.
    for mode in ("mask", "drop"):
        (off,) = encode_expanded(THINKING, tok, None, reasoning=mode, inline_reasoning=False)
        assert _trained(tok, off) == whole and off.reasoning_tokens == 0


def test_inline_reasoning_off_under_qwen3_names_the_option_and_the_field(toks):
    """Off, the block is answer text: Qwen3's template reads it as reasoning and lays it out anew,
    so the answer would not be trained as written: refused, naming the option and the field."""
    tok = tokenizer_for("qwen3", toks)
    terse = Conversation((Message("user", "3+3?"), Message("assistant", "<think>six</think>6.")))
    with pytest.raises(EncodingError, match="encoding.inline_reasoning: true.*reasoning_content"):
        encode_expanded(terse, tok, None, inline_reasoning=False)
    (ex,) = encode_expanded(terse, tok, None)
    assert _trained(tok, ex) == "<think>\nsix\n</think>\n\n6.<|im_end|>"


def test_qwen3_refuses_earlier_inline_reasoning_naming_turns_expand(toks):
    tok = tokenizer_for("qwen3", toks)
    two = Conversation(THINKING.messages + (Message("user", "3+3?"), Message("assistant", "<think>six</think>6.")))
    with pytest.raises(EncodingError, match="encoding.turns: expand"):
        encode_expanded(two, tok, None, turns="whole")
    examples = encode_expanded(two, tok, None, turns="expand")
    assert sorted(_trained(tok, e) for e in examples) == [
        "<think>\nadd two and two\n</think>\n\nIt is 4.<|im_end|>", "<think>\nsix\n</think>\n\n6.<|im_end|>"]


def test_qwen3_refuses_reasoning_of_an_untrained_earlier_turn_it_does_not_write(toks):
    """Qwen3's own template drops the reasoning of turns before the last user message: when such a
    turn is not trained its reasoning would reach no example, so the record is refused with what
    is lost and how to keep it; trained with ``turns: expand`` the record is accepted and nothing of
    it is lost; ``reasoning: drop`` and ``last_turn_only`` (earlier turns are context as at
    inference) are the options that drop it."""
    tok = tokenizer_for("qwen3", toks)

    def conv(train_first: bool) -> Conversation:
        return Conversation((Message("user", "2+2?"),
                             Message("assistant", "It is 4.", reasoning="add two and two", train=train_first),
                             Message("user", "3+3?"), Message("assistant", "6.", reasoning="six")))

    for turns in ("whole", "expand"):
        examples, quarantined = encode_all([conv(False)], tok, None, turns=turns)
        assert not examples and [q["code"] for q in quarantined] == ["reasoning_not_written"], turns
        assert "assistant message 1" in quarantined[0]["reason"] and "encoding.reasoning: drop" in quarantined[0]["reason"]
    examples, quarantined = encode_all([conv(True)], tok, None, turns="expand")
    assert not quarantined and any("add two and two" in tok.decode(e.input_ids) for e in examples)
    for options in ({"reasoning": "drop"}, {"last_turn_only": True}):  # the options that drop it
        examples, quarantined = encode_all([conv(False)], tok, None, **options)
        assert not quarantined and "add two and two" not in tok.decode(examples[0].input_ids), options
        assert ("six" in tok.decode(examples[0].input_ids)) == ("last_turn_only" in options)
    # a template that writes every turn's reasoning (the chatml built-in) accepts the record as it is
    examples, quarantined = encode_all([conv(False)], tok, "chatml")
    assert not quarantined and "add two and two" in tok.decode(examples[0].input_ids)


def test_quarantine_keeps_the_record_as_it_was_read(toks):
    tok = tokenizer_for("smollm2", toks)
    odd = Conversation(THINKING.messages, tools=json.dumps([{"name": "lookup"}]))  # refused: no tool schemas
    _, quarantined = encode_all([odd], tok, None)
    (q,) = quarantined
    assert q["record"]["messages"][1]["content"] == THINKING.messages[1].content
    assert "reasoning_content" not in q["record"]["messages"][1]


def test_inline_reasoning_is_part_of_the_prepared_store_key():
    from sftlab.train.config import TrainConfig
    from sftlab.train.data import _encoding_options

    base = {"model": {"path": "m"}, "data": {"train": ["t.jsonl"]}, "out": "r"}
    on = TrainConfig.model_validate(base)
    off = TrainConfig.model_validate({**base, "encoding": {"inline_reasoning": False}})
    assert _encoding_options(on)["inline_reasoning"] is True and _encoding_options(off)["inline_reasoning"] is False


# -- templates that transform content (27.7, 27.13) --------------------------------------------------

def _chatml_with(expr: str) -> str:
    return ("{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}" + expr + "{{ '<|im_end|>\\n' }}"
            "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}")


FILTERS = {
    "truncate": _chatml_with("{{ m['content'] | truncate(8, True, '') }}"),
    "title": _chatml_with("{{ m['content'] | title }}"),
    "escape": _chatml_with("{{ m['content'] | e }}"),
    "substring test": _chatml_with("{%- if 'x' not in m['content'] %}{{ m['content'] }}{%- endif %}"),
    "tojson": _chatml_with("{{ m['content'] | tojson }}"),
    "striptags": _chatml_with("{{ m['content'] | striptags }}"),
    "urlencode": _chatml_with("{{ m['content'] | urlencode }}"),
    "length test": _chatml_with("{%- if m['content'] | length < 20 %}{{ m['content'] }}{%- endif %}"),
}
ANSWERS = ["It is 4.", "x marks the spot", "a much longer answer than eight characters", "A & <b>"]


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_a_record_is_accepted_only_where_the_trained_text_is_its_answer(name):
    tok = build_tokenizer()
    t = get_template(FILTERS[name], tok)
    assert not t.content_parts  # a list printed as text is not a content-parts template
    for answer in ANSWERS:
        conv = Conversation((Message("user", "Q?"), Message("assistant", answer)))
        try:
            (ex,) = encode_expanded(conv, tok, t, trace=True)
        except EncodingError as e:
            assert "changes or drops assistant content" in str(e) or "transforms message" in str(e), str(e)
            continue
        # What the template writes around any content is its scaffolding, trained as such (tojson's quotes).
        opener, closer = ('"', '"') if name == "tojson" else ("", "")
        assert _trained(tok, ex) == opener + answer + closer + "<|im_end|>"


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_check_template_says_a_filtering_template_cannot_be_certified(name):
    tok = build_tokenizer()
    results = {r["probe"]: r for r in check_template(tok, FILTERS[name])}
    probe = results["content a filter would change"]
    assert probe["status"] == "mismatch" and probe["required"]
    assert TRANSFORMS in probe["reason"] or "transforms message" in probe["reason"], probe["reason"]


def test_the_repr_of_content_parts_is_never_trained():
    """A template that prints its content (``{{ m['content'] | truncate(80) }}`` given a parts list)
    is not a content-parts template: before, every record trained ``[{'type': 'text', ...}]``."""
    tok = build_tokenizer()
    t = get_template(_chatml_with("{{ m['content'] | truncate(80) }}"), tok)
    assert not t.content_parts
    (ex,) = encode_expanded(Conversation((Message("user", "Q?"), Message("assistant", "It is 4."))), tok, t)
    assert _trained(tok, ex) == "It is 4.<|im_end|>"


# -- check-template lists what it could not check -------------------------------------------------------

def test_check_template_reports_unsupported_probes_for_smollm2(toks, tmp_path, capsys):
    tok = tokenizer_for("smollm2", toks)
    results = {r["probe"]: r for r in check_template(tok, None)}
    for probe in ("tool schemas", "tool call", "reasoning"):
        assert results[probe]["status"] == "unsupported" and not results[probe]["required"], results[probe]
    assert "writes no tool" in results["tool call"]["reason"]
    tok.save_pretrained(tmp_path)
    assert main(["check-template", "--tokenizer", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["unsupported"]) == {"tool schemas", "tool call", "reasoning"}
    assert "tool call" not in out["checked"] and "single turn" in out["checked"]
    assert main(["check-template", "--tokenizer", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "not supported (records that need it are refused): tool schemas, tool call, reasoning" in text
    assert "\nOK\n" not in text
