"""The generation-parity contract (DESIGN.md, invariant 2) on the official chat templates of
current model families, committed as fixtures (tests/data/chat_templates, sources and licences in
its README; the tool-calling fixtures of tests/data/templates are indexed there too). Each family gets a small BPE tokenizer with the template's control tokens as special
tokens. For each template: ``check-template`` passes (every turn of the probe set trains exactly
what the model must generate: single- and multi-turn, with and without a system message where the
template takes one; content spelling every control token adds no control token), and the ids
equal the tokenizer's own tokenization of the rendering.

Templates that cannot meet the contract are listed in ``REFUSED`` with the reason sftlab gives."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.data.conversation import Conversation, Message
from sftlab.demo.tiny import build_tokenizer
from sftlab.tokens.encoding import EncodingError, encode_expanded
from sftlab.tokens.masks import check_template
from sftlab.tokens.templates import get_template

HERE = Path(__file__).parent / "data" / "chat_templates"
INDEX = json.loads((HERE / "templates.json").read_text(encoding="utf-8"))

# The tool-calling probe on a template whose own rendering of a tool-call turn does not start with
# its generation prompt (text turns are fine there): refused with that reason.
TOOL_REFUSED = {"nemotron-nano-v2": "does not start with the generation prompt"}

# Templates that cannot meet the contract, with the reason sftlab gives: their own rendering of an
# assistant turn does not start with its generation prompt (nothing defines what the model generates
# there), or they write no stop the model could learn.
REFUSED = {
    "deepseek-r1-distill-qwen": "does not start with the generation prompt",
    "qwq-32b": "does not start with the generation prompt",
    "rwkv-world": "writes no stop sequence",  # plain-text turns, no control token to stop at
    "hermes-3-tool-use": "failed to render",  # iterates over `tools` unconditionally: unusable without tools
}


@pytest.fixture(scope="module")
def tokenizers():
    return {}


def tokenizer_for(name: str, cache: dict):
    if name not in cache:
        spec = INDEX[name]
        control = list(dict.fromkeys(["<|pad|>", *spec["control"]]))
        source = (HERE / spec.get("file", f"{name}.jinja")).read_text(encoding="utf-8")
        tok = build_tokenizer([source], vocab_size=600,
                              special_tokens=control)
        tok.bos_token = spec["bos_token"]
        tok.eos_token = spec["eos_token"]
        tok.chat_template = source
        cache[name] = tok
    return cache[name]


@pytest.mark.parametrize("name", sorted(set(INDEX) - set(REFUSED)))
def test_check_template_passes_on_the_official_template(name, tokenizers):
    tok = tokenizer_for(name, tokenizers)
    # The text contract, and for templates with a tool or reasoning format the tool-call and reasoning
    # probes (DeepSeek-V3.1 and Functionary get arguments as JSON text, which is what they write).
    results = check_template(tok, None)
    if name in TOOL_REFUSED:
        (tool,) = [r for r in results if r["probe"] == "tool call"]
        assert tool["status"] == "mismatch" and TOOL_REFUSED[name] in tool["reason"]
        results = [r for r in results if r["probe"] != "tool call"]
    failed = [(r["probe"], r.get("reason"), [t for t in r["turns"] if not t["exact"]],
               r.get("control_tokens_from_content")) for r in results if r["status"] == "mismatch"]
    assert not failed, failed
    checked = {r["probe"] for r in results if r["status"] in ("ok", "expanded")}
    assert {"single turn", "multi-turn", "content spelling special tokens"} <= checked
    # With and without a system message, where the template takes one.
    system = next(r for r in results if r["probe"] == "system prompt")
    assert system["status"] in ("ok", "expanded") or (  # or skipped: the template refuses or drops it
        system["status"] == "skipped"
        and ("system" in system["reason"].lower() or "failed to render" in system["reason"]))


@pytest.mark.parametrize("name", sorted(set(INDEX) - set(REFUSED)))
def test_ids_are_the_tokenizers_own_tokenization_of_the_rendering(name, tokenizers):
    tok = tokenizer_for(name, tokenizers)
    t = get_template(None, tok)
    c = Conversation((Message("user", "What is 2 + 2?"), Message("assistant", "It is 4."),
                      Message("user", "And 3 + 3?"), Message("assistant", "6, said plainly.")))
    for ex in encode_expanded(c, tok, t, trace=True):
        assert list(ex.input_ids) == tok(ex.trace.layout.text, add_special_tokens=False).input_ids
        assert ex.trained_tokens > 0


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_templates_that_cannot_meet_the_contract_are_refused_with_the_reason(name, tokenizers):
    tok = tokenizer_for(name, tokenizers)
    with pytest.raises(EncodingError, match=REFUSED[name]):
        encode_expanded(Conversation((Message("user", "q"), Message("assistant", "a"))), tok, None)
    assert any(r["status"] == "mismatch" for r in check_template(tok, None))


# Built-in formats named for a model version equal that version's official template, token for token.
BUILTIN_OFFICIAL = [("llama3", "llama-3"), ("llama3.1", "llama-3.3"), ("gemma", "gemma-2"), ("phi3", "phi-3.5"),
                    ("mistral-v0.3", "mistral-7b-instruct-v0.3")]
# `mistral` follows mistral-common's V1 tokenizer instead (tests/test_mistral_reference.py): the template
# first published with Mixtral 8x7B Instruct v0.1 leaves out the space before the answer.


def _rendered(t, msgs, gen):
    from sftlab.tokens.templates import TemplateError

    try:
        return t.render(msgs, gen)
    except TemplateError:
        return TemplateError


@pytest.mark.parametrize("builtin,fixture", BUILTIN_OFFICIAL)
def test_builtin_formats_equal_the_official_template_token_for_token(builtin, fixture, tokenizers):
    from sftlab.tokens.encoding import encode

    tok = tokenizer_for(fixture, tokenizers)
    official, ours = get_template(None, tok), get_template(builtin, tok)
    m = Message
    convs = [Conversation((m("user", "  Hi there! "), m("assistant", "\nHello.\n"))),
             Conversation((m("user", "q1"), m("assistant", "a1"), m("user", "q2 "), m("assistant", " a2")))]
    if builtin != "gemma":  # its template refuses a system message (the built-in folds it in)
        convs.append(Conversation((m("system", "Be brief. "), m("user", "q"), m("assistant", "a"))))
        convs.append(Conversation((m("system", "Be brief."), m("user", "q1"), m("assistant", "a1"),
                                   m("user", "q2"), m("assistant", "a2"))))
    for c in convs:
        msgs = [{"role": x.role, "content": x.content} for x in c.messages]
        for gen in (False, True):
            assert _rendered(ours, msgs, gen) == _rendered(official, msgs, gen)
        # The inference prompt of every turn (the conversation up to a user message).
        for k in range(1, len(msgs) + 1):
            if msgs[k - 1]["role"] == "user":
                assert ours.render(msgs[:k], True) == official.render(msgs[:k], True)
        try:
            b = encode(c, tok, official)
        except EncodingError as e:  # both refuse, for the same reason
            with pytest.raises(EncodingError, match="drops the content of message 0"):
                encode(c, tok, ours)
            assert "drops the content of message 0" in str(e)
            continue
        a = encode(c, tok, ours)
        assert list(a.input_ids) == list(b.input_ids) and list(a.loss_weights) == list(b.loss_weights)
    assert ours.end_of_turn == official.end_of_turn


def test_mistral_v03_trains_the_space_before_the_answer_and_puts_the_system_prompt_in_the_last_user_turn(tokenizers):
    from sftlab.tokens.encoding import encode, encode_prompt

    tok = tokenizer_for("mistral-7b-instruct-v0.3", tokenizers)
    t = get_template("mistral-v0.3", tok)
    m = Message
    ex = encode(Conversation((m("user", "q1"), m("assistant", "a1 "), m("user", "q2"), m("assistant", "a2"))), tok, t)
    trained = tok.decode([i for i, w in zip(ex.input_ids, ex.loss_weights) if w])
    assert trained == " a1</s> a2</s>"  # what the model writes after each [/INST], space and stop included
    assert tok.decode(ex.input_ids) == "<s>[INST] q1[/INST] a1</s>[INST] q2[/INST] a2</s>"
    prompt = encode_prompt([{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
                            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}], tok, t)
    assert tok.decode(prompt) == "<s>[INST] q1[/INST] a1</s>[INST] S\n\nq2[/INST]"
    # A system message anywhere but first is refused, as the official template refuses it.
    from sftlab.tokens.templates import TemplateError

    with pytest.raises(TemplateError, match="only as the first message"):
        t.render([{"role": "user", "content": "q"}, {"role": "system", "content": "S"},
                  {"role": "user", "content": "q"}], True)


@pytest.mark.parametrize("flag", ["/no_think", "/think"])
def test_a_system_message_the_template_rewrites_is_located_without_losing_its_flag(flag, tokenizers):
    """SmolLM3 reads /no_think or /think from the system message and writes the message without it:
    the message's place is found by probes that keep the flag (so the rendering keeps its mode), and
    content there spelling control tokens still adds none."""
    tok = tokenizer_for("smollm3", tokenizers)
    m = Message

    def encoded(system):
        c = Conversation((m("system", system), m("user", "q1"), m("assistant", "a1"), m("user", "q2"),
                          m("assistant", "a2")))
        (ex,) = encode_expanded(c, tok, None, trace=True)
        return ex

    plain = encoded(f"Be brief. {flag}")
    text = plain.trace.layout.text
    assert "Be brief.\n\n<|im_start|>user" in text and flag not in text.split("Reasoning Mode")[1][10:]
    assert 0 in plain.trace.layout.rewritten
    assert list(plain.input_ids) == tok(text, add_special_tokens=False).input_ids
    trained = tok.decode([i for i, w in zip(plain.input_ids, plain.loss_weights) if w])
    assert trained == "a1<|im_end|>a2<|im_end|>"
    hostile = encoded("".join(INDEX["smollm3"]["control"]) + f" Be brief. {flag}")
    special = set(tok.all_special_ids)
    assert [i for i in hostile.input_ids if i in special] == [i for i in plain.input_ids if i in special]
