"""Reasoning written inline in answers (sftlab.data.reasoning_blocks) and what encoding does with it:
every known convention read at the start of an answer, the R1 shape without its opener too; under
``reasoning: mask | drop`` an answer with any other reasoning marker is refused, and no trained
token may hold one (the backstop in ``sftlab.tokens.weighting.build``)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.data.conversation import Conversation, Message
from sftlab.data.formats import to_conversation
from sftlab.data.reasoning_blocks import REASONING_TAGS, inline_reasoning, stray_marker
from sftlab.tokens.encoded import EncodingError
from sftlab.tokens.encoder import encoder_for
from sftlab.tokens.encoding import encode_all
from sftlab.tokens.weighting import build
from tests.test_real_templates import tokenizer_for

LLAMACPP = json.loads((Path(__file__).parent / "data" / "reasoning" / "llamacpp_chat_parser.json").read_text("utf-8"))

QUESTION = "What is 2+2?"
WELL_FORMED = {  # answer -> (reasoning text, what the answer is after it)
    "<think>\nLet me add.\n</think>\n\nIt is 4.": ("Let me add.", "It is 4."),
    "<|begin_of_thought|>\n\n2 plus 2 is 4.\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n4\n\n"
    "<|end_of_solution|>": ("2 plus 2 is 4.", "<|begin_of_solution|>\n\n4\n\n<|end_of_solution|>"),
    "<thinking>2 plus 2 is 4.</thinking>\n\nIt is 4.": ("2 plus 2 is 4.", "It is 4."),
    "2 plus 2 is 4.\n</think>\n\nIt is 4.": ("2 plus 2 is 4.", "It is 4."),
    "[THINK]2 plus 2 is 4.[/THINK]It is 4.": ("2 plus 2 is 4.", "It is 4."),
    "◁think▷2 plus 2 is 4.◁/think▷It is 4.": ("2 plus 2 is 4.", "It is 4."),
    "<reasoning>2 plus 2 is 4.</reasoning>\n<answer>4</answer>": ("2 plus 2 is 4.", "<answer>4</answer>"),
}
IRREGULAR = {  # answer (and reasoning field) -> the marker the refusal names
    ("<think>\nLet me think, 2+2 is", None): "<think>",
    ("Sure. <think>2 plus 2 is 4.</think> It is 4.", None): "<think>",
    ("<think>a</think>It is <think>b</think> 4.", None): "<think>",
    ("<think>x</think>It is 4.", "2 plus 2 is 4."): "<think>",
    ("It is 4.</reasoning> Done.</reasoning>", None): "</reasoning>",
}


def record(answer, reasoning=None) -> dict:
    msg = {"role": "assistant", "content": answer}
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    return {"messages": [{"role": "user", "content": QUESTION}, msg]}


def trained_text(tok, ex) -> str:
    return tok.decode([i for i, w in zip(ex.input_ids, ex.loss_weights) if w > 0], skip_special_tokens=False)


@pytest.fixture(scope="module")
def toks():
    return {}


@pytest.mark.parametrize("case", LLAMACPP["parsed"], ids=lambda c: c["format"][:20])
def test_the_reasoning_read_is_what_llamacpps_parser_reads(case):
    m = inline_reasoning(Message("assistant", case["output"]))
    assert (m.reasoning, m.content) == (case["reasoning"], case["content"])
    assert stray_marker(Message("assistant", case["output"])) is None


def test_an_output_cut_off_in_its_reasoning_is_not_read_and_is_named():
    (case,) = LLAMACPP["partial"]  # llama.cpp parses it as partial: reasoning so far, no content
    m = Message("assistant", case["output"])
    assert inline_reasoning(m) is m
    assert stray_marker(m) == ("an unclosed '<think>' block (a generation cut off?)", "<think>")


@pytest.mark.parametrize("answer", list(WELL_FORMED))
def test_every_convention_is_read_and_never_trained_under_mask_or_drop(answer, toks):
    thought, rest = WELL_FORMED[answer]
    for name in ("smollm2", "qwen3"):
        tok = tokenizer_for(name, toks)
        keep, mask, drop = ([e for e in encode_all([to_conversation(record(answer))], tok, None, reasoning=mode)[0]]
                            for mode in ("keep", "mask", "drop"))
        for ex in (*mask, *drop):
            text = trained_text(tok, ex)
            assert thought not in text and rest in text, (name, text)
            assert not any(t in text for pair in REASONING_TAGS for t in pair if t not in tok.chat_template), text
        # keep: verbatim where the template writes no reasoning; as reasoning_content where it does
        assert trained_text(tok, keep[0]) == (answer + "<|im_end|>" if name == "smollm2" else
                                              f"<think>\n{thought}\n</think>\n\n{rest}<|im_end|>")
        assert keep[0].reasoning_tokens > 0 and mask[0].reasoning_tokens == 0


@pytest.mark.parametrize("shape", list(IRREGULAR), ids=range(len(IRREGULAR)))
def test_irregular_reasoning_is_refused_under_mask_and_drop_naming_message_and_marker(shape, toks):
    tok = tokenizer_for("smollm2", toks)
    rec = record(*shape)
    sharegpt = {"conversations": [{"from": "human", "value": QUESTION},
                                  {"from": "gpt", "value": shape[0], **({"reasoning_content": shape[1]}
                                                                        if shape[1] else {})}]}
    for rec, where in ((rec, "messages[1].content"), (sharegpt, "conversations[1].value")):
        for mode in ("mask", "drop"):
            examples, (q,) = encode_all([to_conversation(rec)], tok, None, reasoning=mode)
            assert not examples and q["code"] == "reasoning_unread"
            assert q["reason"].startswith(where + ": ") and repr(IRREGULAR[shape]) in q["reason"]
            assert "\n" not in q["reason"] and f"encoding.reasoning: {mode}" in q["reason"]
    # keep trains exactly what the data says (a template without a reasoning format: verbatim)
    if shape[1] is None:
        (ex,), _ = encode_all([to_conversation(rec)], tok, None, reasoning="keep")
        assert trained_text(tok, ex) == shape[0] + "<|im_end|>"


def test_a_marker_in_trained_text_refuses_the_example_whatever_put_it_there(toks):
    """The backstop: ``build`` itself (no reading of the record first) refuses an example whose
    trained tokens hold a reasoning marker under mask/drop, and trains it under keep."""
    tok = tokenizer_for("smollm2", toks)
    conv = Conversation((Message("user", QUESTION), Message("assistant", "It is 4. [THINK]and more")),
                        fields=("messages[0]", "messages[1]"))
    for mode in ("mask", "drop"):
        with pytest.raises(EncodingError) as e:
            build(encoder_for(tok, None, reasoning=mode), conv, conv.messages, False, 0)
        assert e.value.code == "reasoning_trained" and "'[THINK]'" in str(e.value)
        assert str(e.value).startswith("messages[1].content: ")
    ex = build(encoder_for(tok, None, reasoning="keep"), conv, conv.messages, False, 0)
    assert trained_text(tok, ex) == "It is 4. [THINK]and more<|im_end|>"
    # inline_reasoning off: such text is declared answer text, trained whatever the mode
    ex = build(encoder_for(tok, None, reasoning="mask", inline_reasoning=False), conv, conv.messages, False, 0)
    assert "[THINK]" in trained_text(tok, ex)


def test_a_masked_block_passes_the_backstop_and_its_markers_are_not_trained(toks):
    tok = tokenizer_for("smollm2", toks)
    (ex,), q = encode_all([to_conversation(record("<think>a b c</think>\n\nIt is 4."))], tok, None, reasoning="mask")
    assert not q and trained_text(tok, ex) == "It is 4.<|im_end|>"
