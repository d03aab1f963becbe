"""Templates that declare their own masks: ``{% generation %}`` ... ``{% endgeneration %}`` markers.

A training template (TRL's ``*_training.jinja``, transformers' test templates, the Jinja source of
every sftlab built-in) wraps what it wants trained in generation markers. transformers computes
those spans (``apply_chat_template(..., return_assistant_tokens_mask=True, return_dict=True)``);
this module reads them and

* compares them with sftlab's trained spans (DESIGN.md, invariant 2), difference by difference and
  per assistant turn, for ``check-template`` (``differences``): a header the markers train, the
  newline after the stop, a stop they leave out;
* or makes them the mask (``encoding.mask_source: generation_markers``, ``marked_layout``): each
  marked run of tokens is trained, with the weight of the assistant message it belongs to.

Example (TRL's Qwen2.5 training template marks the newline after ``<|im_start|>assistant`` and the
one after ``<|im_end|>``; sftlab trains neither: the first is the generation prompt's, the second
comes after the stop)::

    >>> from pathlib import Path
    >>> from sftlab.data.conversation import Conversation, Message
    >>> from sftlab.demo.tiny import build_tokenizer
    >>> from sftlab.tokens.encoding import encode_expanded
    >>> from sftlab.tokens.templates import get_template
    >>> src = (Path(__file__).parents[2] / "tests/data/chat_templates/trl-qwen2.5-training.jinja").read_text()
    >>> tok = build_tokenizer(["hi"], vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"])
    >>> t = get_template(src, tok)
    >>> conv = Conversation((Message("user", "hi"), Message("assistant", "yo")))
    >>> [ex] = encode_expanded(conv, tok, t, turns="whole", trace=True)
    >>> [describe(d) for d in differences(tok, t, conv, ex)]
    ["assistant #1: the markers train '\\\\n' before the answer (the prompt's), sftlab does not", "assistant #1: the markers train '\\\\n' after the stop, sftlab does not"]
"""
from __future__ import annotations

import dataclasses
import json
import re

from sftlab.data.conversation import template_messages
from sftlab.tokens.layout import Layout, Turn
from sftlab.tokens.template_errors import TemplateError
from sftlab.tokens.templates import call_arguments_form

__all__ = ["MASK_SOURCES", "has_markers", "check_mask_source", "marked_ranges", "marked_layout", "differences",
           "marker_report", "describe"]

MASK_SOURCES = ("contract", "generation_markers")
"""Where the trained spans come from: sftlab's contract (DESIGN.md invariant 2, derived from the
template's renderings) or the template's own ``{% generation %}`` markers."""

_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")  # the pattern transformers looks for


def has_markers(template) -> bool:
    """Whether the template's Jinja source has ``{% generation %}`` markers."""
    return bool(_MARKER.search(template.source))


def check_mask_source(mask_source: str, template) -> str:
    """``mask_source`` when it is one of ``MASK_SOURCES`` and the template can provide it."""
    if mask_source not in MASK_SOURCES:
        raise ValueError(f"mask_source must be one of {', '.join(MASK_SOURCES)}, not {mask_source!r}")
    if mask_source == "generation_markers" and not has_markers(template):
        raise TemplateError(f"encoding.mask_source: generation_markers needs a template with {{% generation %}} "
                            f"markers; template '{template.name}' has none (use mask_source: contract)")
    return mask_source


def _template_messages(template, messages: list[dict], tools: list | None) -> list[dict]:
    """``messages`` as the template is given them when sftlab renders it."""
    messages = call_arguments_form(template, messages, tools)
    if template.content_parts:
        messages = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]
    return messages


def marked_ranges(tokenizer, template, messages: list[dict], tools: list | None = None):
    """``(text, ranges)``: the template's rendering of ``messages`` and the character ranges of the
    tokens its generation markers mark (consecutive marked tokens form one range), as transformers'
    ``apply_chat_template`` computes them."""
    msgs = _template_messages(template, messages, tools)
    kwargs = dict(chat_template=template.source, tools=tools, add_generation_prompt=False)
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False, **kwargs)
        out = tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                            tokenizer_kwargs={"return_offsets_mapping": True}, **kwargs)
    except Exception as e:  # the template refuses the conversation, or transformers cannot mark it
        raise TemplateError(f"the generation markers of template '{template.name}' cannot be read: "
                            f"{type(e).__name__}: {e}") from None
    ranges: list[list[int]] = []
    last = -1
    for k, ((s, e), marked) in enumerate(zip(out["offset_mapping"], out["assistant_masks"])):
        if marked and e > s:
            if ranges and last == k - 1:
                ranges[-1][1] = e
            else:
                ranges.append([s, e])
            last = k
    return text, [tuple(r) for r in ranges]


def _owners(layout: Layout, messages: list[dict], ranges) -> list[int]:
    """The assistant message each marked range belongs to: the one whose content it overlaps, else
    the next one in order (a turn of tool calls only has no content span)."""
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    content = {s.index: (s.start, s.end) for s in layout.spans if s.role == "assistant"}

    def covers(i: int, a: int, b: int) -> bool:
        s, e = content.get(i, (-1, -1))
        return s < b and e > a if e > s else a <= s < b

    owners, nxt = [], 0
    for a, b in ranges:
        hit = next((i for i in assistant if covers(i, a, b)), None)
        if hit is None:
            pending = [i for i in assistant if i not in owners and i not in content]
            hit = pending[0] if pending else (assistant[nxt] if nxt < len(assistant) else None)
        if hit is not None:
            nxt = assistant.index(hit) + 1
        owners.append(hit)
    return owners


def marked_layout(tokenizer, template, messages: list[dict], tools: list | None, layout: Layout) -> Layout:
    """``layout`` with the template's generation markers as its trained turns
    (``encoding.mask_source: generation_markers``). An assistant message the markers leave unmarked
    cannot be trained (the record is refused if it asks for it); the rendering must be the one
    sftlab encodes."""
    check_mask_source("generation_markers", template)
    text, ranges = marked_ranges(tokenizer, template, messages, tools)
    if text != layout.text:
        raise TemplateError(f"template '{template.name}' renders this conversation differently for its generation "
                            f"markers than for encoding (it writes no stop of its own, or reads its input differently), "
                            f"so the markers cannot be placed; use encoding.mask_source: contract")
    content_end = {s.index: s.end for s in layout.spans if s.role == "assistant"}
    turns = [Turn(i, a, b, content_end[i] if i in content_end and a <= content_end[i] <= b else b)
             for (a, b), i in zip(ranges, _owners(layout, messages, ranges)) if i is not None]
    marked = {t.index for t in turns}
    untrainable = {i: "the template's {% generation %} markers do not mark it"
                   for i, m in enumerate(messages) if m["role"] == "assistant" and i not in marked}
    return dataclasses.replace(layout, turns=tuple(turns), rerendered=(), untrainable=untrainable)


def differences(tokenizer, template, conversation, example) -> list[dict]:
    """Where sftlab's trained tokens of ``example`` (encoded with ``trace=True``) and the template's
    generation markers disagree: one dict per run of tokens one side trains and the other does not,
    ``{"message_index", "text", "trained_by": "markers" | "sftlab", "where"}``, ``where`` relative to
    sftlab's turn: ``before the answer``, ``in the answer``, ``in the stop`` or ``after the stop``."""
    trace = example.trace
    layout = trace.layout
    tools = json.loads(conversation.tools) if conversation.tools else None
    msgs = template_messages(trace.messages)
    text, ranges = marked_ranges(tokenizer, template, msgs, tools)
    if text != layout.text:
        return [{"message_index": None, "text": "", "trained_by": "markers",
                 "where": "a rendering of their own (the markers' rendering differs from the encoded one)"}]
    owners = _owners(layout, msgs, ranges)
    runs: list[dict] = []
    for (s, e), w in zip(trace.offsets, example.loss_weights):
        if e <= s:
            continue
        in_marker = next((k for k, (a, b) in enumerate(ranges) if a < e and b > s), None)
        ours = w > 0
        if ours == (in_marker is not None):
            continue
        by = "sftlab" if ours else "markers"
        owner = (next((t.index for t in layout.turns if t.start < e and t.end > s), None) if ours
                 else owners[in_marker])
        if runs and runs[-1]["trained_by"] == by and runs[-1]["_end"] == s and runs[-1]["message_index"] == owner:
            runs[-1]["_end"] = e
        else:
            runs.append({"message_index": owner, "trained_by": by, "_start": s, "_end": e})
    for r in runs:
        s, e = r.pop("_start"), r.pop("_end")
        r["text"] = layout.text[s:e]
        r["where"] = _where(layout, r["message_index"], s, e)
    return runs


def _where(layout: Layout, index: int | None, s: int, e: int) -> str:
    turn = layout.turn(index) if index is not None else None
    if turn is None:
        return "in a turn sftlab does not train"
    if e <= turn.start:
        return "before the answer (the prompt's)"
    if s >= turn.end:
        return "after the stop"
    if s >= turn.stop_start:
        return "in the stop"
    return "in the answer"


def describe(d: dict) -> str:
    """One line for a difference (``check-template`` prints it)."""
    if "error" in d:
        return d["error"]
    other = "sftlab" if d["trained_by"] == "markers" else "the markers"
    who = f"assistant #{d['message_index']}" if d["message_index"] is not None else "the conversation"
    verb = "train" if d["trained_by"] == "markers" else "trains"
    return f"{who}: {'the markers' if d['trained_by'] == 'markers' else 'sftlab'} {verb} {d['text']!r} {d['where']}, {other} does not"


def marker_report(tokenizer, template, conversation, examples) -> list[dict]:
    """``differences`` over the examples ``encode_expanded(..., trace=True)`` gave for one
    conversation: a turn trained in an example of its own (the template re-renders it later) is
    compared there only. A conversation the markers cannot be read for gives one entry with
    ``error``."""
    trained = [{t.index for t in ex.trace.layout.turns} for ex in examples]
    everywhere = set().union(*trained) if trained else set()
    out: list[dict] = []
    for ex, own in zip(examples, trained):
        try:
            found = differences(tokenizer, template, conversation, ex)
        except TemplateError as e:
            return [{"message_index": None, "error": str(e)}]
        out += [d for d in found if (d["message_index"] in own or d["message_index"] not in everywhere)
                and d not in out]
    return out
