"""Preparation's fast paths give what the general paths give: the layout of plain messages taken
as they are, the token offsets read only where they are used, the checks skipped for the usual
message (no reasoning, ASCII text)."""
from __future__ import annotations

import pytest

from sftlab.data.conversation import Conversation, Message
from sftlab.demo.tiny import build_tokenizer
from sftlab.tokens.encoding import encode_all, encode_expanded
from sftlab.tokens.templates import BUILTIN_TEMPLATES, get_template


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(special_tokens=("<|im_start|>", "<|im_end|>", "<s>", "</s>", "[INST]", "[/INST]"))


def _messages():
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and?"},
            {"role": "assistant", "content": "bye"}]


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_plain_messages_lay_out_as_their_copies(tok, name):
    """A built-in format takes a role-and-content message as it is; a message with a ``None``
    field (copied, the field dropped) lays out the same, and the caller's dicts are untouched."""
    t = get_template(name, tok)
    plain = _messages()
    copied = [{**m, "name": None} for m in plain]
    try:
        want = t.layout(copied)
    except Exception as e:  # a format that refuses these messages refuses them both ways
        with pytest.raises(type(e)):
            t.layout(plain)
        return
    assert t.layout(plain) == want
    assert plain == _messages()


def test_reasoning_tokens_and_trace_from_bulk_encoding(tok):
    """The bulk encoding reads the token offsets only for reasoning and traces: its reasoning
    token count is the one counted over the trace's offsets."""
    a = Message("assistant", "The answer is four.", reasoning="two and two make four")
    convs = [Conversation((Message("user", "two plus two?"), a)), Conversation((Message("user", "hi"),
                                                                                 Message("assistant", "hello")))]
    examples, quarantined = encode_all(convs, tok, "chatml")
    assert not quarantined
    (traced,) = encode_expanded(convs[0], tok, "chatml", trace=True)
    spans = [(x, y) for _, x, y in traced.trace.layout.reasoning_spans]
    want = sum(1 for (s, _), w in zip(traced.trace.offsets, traced.loss_weights)
               if w > 0 and any(x <= s < y for x, y in spans))
    assert want > 0 and examples[0].reasoning_tokens == want == traced.reasoning_tokens
    assert len(traced.trace.offsets) == len(traced.input_ids)
    assert examples[1].reasoning_tokens == 0 and examples[1].trace is None


def test_reasoning_and_surrogate_checks_still_apply():
    """The usual message skips the reasoning and Unicode checks; one that needs them gets them."""
    from sftlab.data.formats import RecordError, to_conversation

    c = to_conversation({"messages": [{"role": "user", "content": "q"},
                                      {"role": "assistant", "content": "a", "thinking": "t"}]})
    assert c.messages[1].reasoning == "t" and c.messages[0].reasoning is None
    with pytest.raises(RecordError, match="twice"):
        to_conversation({"messages": [{"role": "user", "content": "q"},
                                      {"role": "assistant", "content": "a", "thinking": "t", "reasoning": "u"}]})
    for bad in ({"role": "user", "content": "caf\u00e9 \ud800"},
                {"role": "assistant", "content": "ok", "reasoning_content": "\ud800"}):
        with pytest.raises(RecordError, match="surrogate"):
            to_conversation({"messages": [{"role": "user", "content": "q"}, bad] if bad["role"] == "assistant"
                             else [bad, {"role": "assistant", "content": "a"}]})
