"""Reasoning written inline in an answer's text: the block conventions public reasoning data uses,
how a leading block is read as the message's reasoning, and what is left that is not a block.

A reasoning block is an opener, the reasoning, a closer (``REASONING_TAGS``). A well-formed block
at the start of an assistant message's content is that message's reasoning (``inline_reasoning``);
so is the text before the first closer when the content has no opener at all (DeepSeek-R1 and its
distills: the template's generation prompt wrote ``<think>\\n``, the data holds what followed).
Any other marker in the answer (a block not at the start, a second block, an unclosed one, or a
block beside a ``reasoning_content`` field) is not read: ``stray_marker`` says which and why, so
``encoding.reasoning: mask | drop`` can refuse the record instead of training that text.

    >>> m = inline_reasoning(Message("assistant", "2 plus 2 is 4.\\n</think>\\n\\nIt is 4."))
    >>> m.reasoning, m.content
    ('2 plus 2 is 4.', 'It is 4.')
    >>> stray_marker(Message("assistant", "Sure. <think>2 plus 2 is 4.</think> It is 4."))
    ("'<think>' not at the start of the answer", '<think>')
"""
from __future__ import annotations

import functools
import re
from dataclasses import replace

from sftlab.data.conversation import Message

__all__ = ["REASONING_TAGS", "inline_reasoning", "leading_block", "marker_pattern", "stray_marker"]

REASONING_TAGS = (
    ("<think>", "</think>"),                            # DeepSeek-R1 and its distills, Qwen3, QwQ, GLM, Phi-4-reasoning
    ("<thinking>", "</thinking>"),                      # Claude-style traces, Reflection, many synthetic sets
    ("<|begin_of_thought|>", "<|end_of_thought|>"),     # Sky-T1, Bespoke-Stratos, OpenThoughts
    ("[THINK]", "[/THINK]"),                            # Mistral Magistral
    ("◁think▷", "◁/think▷"),                            # Kimi (k1.5, Kimi-VL-Thinking)
    ("<reasoning>", "</reasoning>"),                    # GRPO recipes (TRL, Unsloth, open-r1 format rewards)
    ("<seed:think>", "</seed:think>"),                  # ByteDance Seed-OSS
    ("<|START_THINKING|>", "<|END_THINKING|>"),         # Cohere Command A reasoning
)
"""The (opener, closer) pairs of the inline reasoning conventions sftlab knows."""


@functools.lru_cache(maxsize=64)
def marker_pattern(tags: tuple[tuple[str, str], ...] = REASONING_TAGS) -> re.Pattern:
    """One pattern matching every opener and closer of ``tags`` (longest first).

    >>> marker_pattern().findall("a <thinking> b [/THINK] c")
    ['<thinking>', '[/THINK]']
    """
    markers = sorted({t for pair in tags for t in pair}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, markers)))


def leading_block(text: str, tags=REASONING_TAGS) -> tuple[int, int, int, int] | None:
    """``(reasoning start, reasoning end, block end, answer start)`` of the reasoning that opens
    ``text``: a well-formed block of ``tags`` after leading whitespace, or, where the text holds no
    opener before its first closer, everything before that closer. ``None`` where there is none
    (no marker, a first opener not at the start, or one never closed).

        >>> leading_block("<think>a</think>\\n\\nb"), leading_block("a</think>b"), leading_block("x <think>a</think>")
        ((7, 8, 16, 18), (0, 1, 9, 9), None)
    """
    pattern = marker_pattern(tuple(tags))
    first = pattern.search(text)
    if first is None:
        return None
    closers = {c: o for o, c in tags}
    openers = dict(tags)
    marker = first.group()
    if marker in closers and marker not in openers:  # R1 shape: the opener was the generation prompt's
        start, end = 0, first.start()
    elif marker in openers and not text[:first.start()].strip():
        start = first.end()
        end = text.find(openers[marker], start)
        if end < 0:
            return None
        marker = openers[marker]
    else:
        return None
    block_end = end + len(marker)
    answer = block_end + len(text[block_end:]) - len(text[block_end:].lstrip())
    return start, end, block_end, answer


def inline_reasoning(message: Message, tags=REASONING_TAGS) -> Message:
    """An assistant message whose content opens with reasoning (``leading_block``) as the same
    message with that reasoning (stripped) as its ``reasoning`` and the rest as content; any other
    message as it is (one that has reasoning already keeps its content whole).

        >>> m = inline_reasoning(Message("assistant", "<think>\\n2 plus 2 is 4.\\n</think>\\n\\nIt is 4."))
        >>> m.reasoning, m.content
        ('2 plus 2 is 4.', 'It is 4.')
        >>> inline_reasoning(Message("assistant", "<|begin_of_thought|>\\n\\nA.\\n\\n<|end_of_thought|>\\n\\nB")).reasoning
        'A.'
    """
    if message.role != "assistant" or (message.reasoning is not None and message.reasoning.strip()):
        return message
    block = leading_block(message.content, tags)
    if block is None:
        return message
    start, end, _, answer = block
    return replace(message, content=message.content[answer:], reasoning=message.content[start:end].strip())


def stray_marker(message: Message, tags=REASONING_TAGS) -> tuple[str, str] | None:
    """``(what is wrong, the marker)`` where an assistant message's text holds a reasoning marker
    that ``inline_reasoning`` does not read as its reasoning; ``None`` where there is none.

        >>> stray_marker(Message("assistant", "<think>\\nLet me think, 2+2 is"))
        ("an unclosed '<think>' block (a generation cut off?)", '<think>')
        >>> stray_marker(Message("assistant", "<think>a</think>It is <think>b</think> 4."))
        ("a second reasoning block or stray marker '<think>' after the first block", '<think>')
        >>> stray_marker(Message("assistant", "<think>x</think>4", reasoning="x"))
        ("reasoning given twice: in the message's reasoning field and as '<think>' in its content", '<think>')
        >>> stray_marker(Message("assistant", "<think>x</think>4")) is None
        True
    """
    if message.role != "assistant":
        return None
    text = message.content
    pattern = marker_pattern(tuple(tags))
    first = pattern.search(text)
    if first is None:
        return None
    marker = first.group()
    if message.reasoning is not None and message.reasoning.strip():
        return (f"reasoning given twice: in the message's reasoning field and as {marker!r} in its content",
                marker)
    block = leading_block(text, tags)
    if block is not None:
        after = pattern.search(text, block[2])
        if after is None:
            return None
        return (f"a second reasoning block or stray marker {after.group()!r} after the first block", after.group())
    if text[:first.start()].strip():
        return f"{marker!r} not at the start of the answer", marker
    return f"an unclosed {marker!r} block (a generation cut off?)", marker
