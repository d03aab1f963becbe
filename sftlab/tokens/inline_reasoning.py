"""Reasoning written inline in an answer, read for one encoder (``encoding.inline_reasoning``): the
reasoning that opens an assistant message's content becomes its reasoning (as
``sftlab.data.reasoning_blocks`` reads it), so ``encoding.reasoning`` applies to it; under ``mask``
and ``drop`` an answer whose reasoning markers cannot be read so is refused (``reasoning_unread``).

    >>> from sftlab.demo.tiny import build_tokenizer
    >>> from sftlab.tokens.encoder import encoder_for
    >>> enc = encoder_for(build_tokenizer(), "chatml", reasoning="mask")
    >>> conv = Conversation((Message("user", "2+2?"), Message("assistant", "Four.</think>4")))
    >>> read_inline_reasoning(enc, conv).messages[1].reasoning
    'Four.'
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sftlab.data.conversation import Conversation, Message
from sftlab.data.reasoning_blocks import inline_reasoning, stray_marker
from sftlab.tokens.encoded import EncodingError
from sftlab.tokens.encoder import Encoder
from sftlab.tokens.templates import reasoning_tags

__all__ = ["read_inline_reasoning", "inline_hint"]


def read_inline_reasoning(enc: Encoder, conv: Conversation) -> Conversation:
    """``conv`` with the reasoning that opens an assistant message's content read as its reasoning
    (``encoding.inline_reasoning``; ``sftlab.data.reasoning_blocks``), so ``encoding.reasoning``
    applies to it; ``conv`` itself where there is none. A template that writes reasoning gets it
    as ``reasoning_content`` and lays it out itself; under one that does not, the block stays in
    the content where the data puts it and is the message's reasoning, markers included (trained
    under ``keep``, weight 0 under ``mask``), and ``drop`` removes it. Under ``mask`` and ``drop``
    an answer holding any other reasoning marker is refused (``EncodingError``, code
    ``reasoning_unread``): its text would be trained."""
    markers = enc.markers
    if markers is None or conv.plain or not any(m.role == "assistant" and markers.search(m.content)
                                                for m in conv.messages):
        return conv  # the usual record: no answer holds a reasoning marker
    msgs = []
    for i, m in enumerate(conv.messages):
        if m.role == "assistant":
            stray = stray_marker(m, enc.thinks) if enc.reasoning != "keep" else None
            if stray is not None:
                raise EncodingError(
                    f"{conv.where(i, 'content')}: {stray[0]}: under encoding.reasoning: {enc.reasoning} that text "
                    f"would be trained as answer; put the reasoning in one block at the start of the content (or in "
                    f"its reasoning field) with no other {stray[1]!r} in the answer, or set encoding.reasoning: keep "
                    f"(encoding.inline_reasoning: false where the marker is answer text)", code="reasoning_unread")
            m = _read_block(enc, m)
        msgs.append(m)
    if all(a is b for a, b in zip(msgs, conv.messages)):
        return conv
    return dataclasses.replace(conv, messages=tuple(msgs))


def _read_block(enc: Encoder, m: Message) -> Message:
    """``m`` with the reasoning that opens its content as its reasoning, as ``read_inline_reasoning`` says."""
    split = inline_reasoning(m, enc.thinks)
    if split is m or enc.writes_reasoning or enc.reasoning == "drop":
        return split
    lead = len(m.content) - len(m.content.lstrip())
    return dataclasses.replace(m, reasoning=m.content[lead:len(m.content) - len(split.content)])


def inline_hint(enc: Encoder, messages: Sequence[Message]) -> str:
    """For a refused record whose answer holds a reasoning tag: where ``encoding.inline_reasoning``
    is off and an answer starts with a reasoning block, how a template that reads such a block as
    reasoning (Qwen3) can render it; where an answer holds a closing tag elsewhere, that the
    template may read the text before it as reasoning."""
    source = enc.template.source
    tags = tuple(p for p in (enc.thinks or reasoning_tags(source)) if p[1] in source)  # the ones it reads
    answers = [m for m in messages if m.role == "assistant"]
    if not enc.thinks and any(inline_reasoning(m, tags) is not m for m in answers):
        return ("; an answer starts with a reasoning block, which this template reads as reasoning: set "
                "encoding.inline_reasoning: true, or move the block into the message's reasoning_content")
    closer = next((c for _, c in tags for m in answers if c in m.content), None)
    if closer is not None:
        return (f"; an answer contains {closer!r}, and templates that read reasoning from the content take the "
                f"text before it for reasoning: remove the stray tag from the answer")
    return ""
