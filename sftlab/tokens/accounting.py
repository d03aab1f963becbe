"""Content accounting (DESIGN.md, invariant 9): what a record carries besides message text is in
its rendering, or the record is refused with what the template loses and how to keep it.

The template's layout (``sftlab.tokens.templates``) already certifies every message's text: a
message whose content the template drops or changes is refused there, and a trained turn is the
record's own answer (``trained_turns.TRANSFORMS``). Reasoning is checked where its turn is weighted
(``sftlab.tokens.encoding``). This module checks the rest, per record, by string containment on
the rendering (no second rendering, no tokenizing):

- each **tool schema** of the record: its function name, description and parameter names are
  written outside the assistant turns (the context the model is shown);
- each **tool call**: its function name, argument names and string values are written in its
  turn (trained with it), or in the rendering where the turn is not trained;
- no trained assistant turn that had content or a call in its source is trained as its stop alone;
- the **reasoning** of an assistant turn that is not trained is in the rendering (a trained turn's
  reasoning is checked where the turn is weighted, ``sftlab.tokens.weighting``).

A string is found as it is or as JSON writes it (escaped, without its quotes), since templates
write schemas and arguments through ``tojson``.

Example (SmolLM2's template writes neither tools nor calls)::

    >>> from sftlab.data.conversation import Message, ToolCall
    >>> from sftlab.tokens.layout import Layout, Turn
    >>> text = "<|im_start|>user\\nOslo?<|im_end|>\\n<|im_start|>assistant\\n<|im_end|>\\n"
    >>> lay = Layout(text, (), turns=(Turn(1, 50, 60, 50),))
    >>> msgs = (Message("user", "Oslo?"), Message("assistant", "", tool_calls=(ToolCall("weather", "{}"),)))
    >>> lost(lay, msgs, None, "tokenizer", {1})[0]
    'tool_calls_not_written'
"""
from __future__ import annotations

import json
from collections.abc import Collection, Sequence

from sftlab.tokens.layout import Layout
from sftlab.tokens.template_errors import TemplateError

USE_A_TOOL_TEMPLATE = ("use a template that writes them (the chatml and llama3 built-ins do, as do the own templates "
                       "of tool-calling models such as Qwen2.5 and Llama 3.1)")


class ContentLost(TemplateError):
    """A record whose template loses some of its content; ``code`` names what (the quarantine rule)."""

    def __init__(self, reason: str, code: str):
        super().__init__(reason)
        self.code = code


def check(layout: Layout, messages: Sequence, tools: list | None, template: str, trained: Collection[int]) -> None:
    """Raise ``ContentLost`` when the rendering loses a tool schema or call of the record, or trains
    an assistant turn of ``trained`` (message indices) empty although its source had something."""
    found = lost(layout, messages, tools, template, trained)
    if found is not None:
        raise ContentLost(found[1], found[0])


def lost(layout: Layout, messages: Sequence, tools: list | None, template: str,
         trained: Collection[int]) -> tuple[str, str] | None:
    """``(code, reason)`` of the first piece of content the rendering loses, or ``None``."""
    text = layout.text
    turns = {t.index: t for t in layout.turns}
    for i, m in enumerate(messages):
        if not m.tool_calls:
            continue
        turn = turns.get(i)
        region = text[turn.start:turn.end] if turn is not None else text
        for call in m.tool_calls:
            if not _written(call.name, region):
                return ("tool_calls_not_written",
                        f"{the(template)} writes no tool calls (assistant message {i} calls "
                        f"{call.name!r}, the rendering does not show it): the turn would be trained without its "
                        f"call; {USE_A_TOOL_TEMPLATE}{_named_hint(template)}")
            missing = next((s for s in _strings(call.arguments_value()) if not _written(s, region)), None)
            if missing is not None:
                return ("tool_calls_not_written",
                        f"{the(template)} writes the call {call.name!r} of assistant message {i} without "
                        f"{missing[:60]!r} of its arguments; {USE_A_TOOL_TEMPLATE}")
    if tools:
        context = "\0".join(_outside(text, layout.turns))
        for tool in tools:
            missing = _schema_missing(tool, context)
            if missing == "name":
                return ("tools_not_written",
                        f"{the(template)} writes no tool schemas (function "
                        f"{_name(tool)!r} is not in the rendering): the model would learn to call functions it "
                        f"was never shown; {USE_A_TOOL_TEMPLATE}{_named_hint(template)}, or remove the record's tools")
            if missing:
                return ("tools_not_written",
                        f"{the(template)} writes the tool schema of {_name(tool)!r} without its "
                        f"{missing}; {USE_A_TOOL_TEMPLATE}")
    for i in trained:
        turn = turns.get(i)
        m = messages[i]
        had = m.content.strip() or m.tool_calls
        if turn is not None and had and (text[turn.start:turn.stop_start].isspace() or turn.start == turn.stop_start):
            return ("empty_turn", f"{the(template)} trains assistant message {i} as its stop alone "
                                  "although the record gives it content; use a template that writes it")
    return None


def check_reasoning(layout: Layout, messages: Sequence, template: str, trained: Collection[int]) -> None:
    """Raise ``ContentLost`` when the reasoning of an assistant turn that is not trained (those of
    ``trained`` have their reasoning checked where they are weighted) is not in the rendering:
    templates such as Qwen3's drop the reasoning of turns before the last user message.

        >>> from sftlab.data.conversation import Message
        >>> from sftlab.tokens.layout import Layout
        >>> msgs = (Message("user", "2+2?"), Message("assistant", "4.", reasoning="add them", train=False),
        ...         Message("user", "3+3?"), Message("assistant", "6."))
        >>> text = "<|im_start|>assistant 4.<|im_end|>"  # the first answer, its reasoning not written
        >>> check_reasoning(Layout(text, ()), msgs, "tokenizer", {3})
        Traceback (most recent call last):
        ...
        sftlab.tokens.accounting.ContentLost: assistant message 1 is not trained and the tokenizer's own template does not write its reasoning ...
    """
    turns = {t.index: t for t in layout.turns}
    for i, m in enumerate(messages):
        reasoning = m.reasoning
        if i in trained or m.role != "assistant" or not reasoning or not reasoning.strip():
            continue
        turn = turns.get(i)
        region = layout.text[turn.start:turn.stop_start] if turn is not None else layout.text
        if reasoning in region or reasoning.strip() in region:
            continue
        raise ContentLost(
            f"assistant message {i} is not trained and {the(template)} does not write its reasoning (templates "
            "such as Qwen3's drop the reasoning of turns before the last user message): the record's reasoning "
            "would be lost; train that turn too (with encoding.turns: expand each trained turn is rendered as "
            "the last, with its reasoning), set encoding.last_turn_only: true to train the final turn with the "
            "earlier ones as the template shows them at inference, or set encoding.reasoning: drop to leave "
            "reasoning out",
            "reasoning_not_written")


def check_rewritten(layout: Layout, messages: Sequence, template: str, source: str,
                    trained: Collection[int], last_turn_only: bool = False) -> None:
    """Raise ``ContentLost`` when the template rewrites the text of a message that no example of the
    record trains (the system prompt, a user or tool message, an answer with ``train: false``) and
    loses part of it: Nemotron-Nano-v2 and SmolLM3 delete ``/think`` from the system prompt
    (``</think>`` becomes ``<>``), LFM2.5 keeps only the text after a ``</think>`` in an earlier
    answer. A whole word the template deletes by name (``replace("/no_think", "")``: a flag it reads)
    is not lost, its effect is in the rendering; text written as JSON (``tojson``) is kept. Under
    ``last_turn_only`` earlier answers are context as the template shows them at inference.

        >>> from sftlab.data.conversation import Message
        >>> from sftlab.tokens.layout import Layout, Span
        >>> source = "{{ m.content.replace('/think', '') }}"
        >>> msgs = (Message("system", "Be brief. /think"), Message("user", "Say </think>"))
        >>> lay = Layout("Be brief. Say <>", (Span(0, "system", 0, 10), Span(1, "user", 10, 16)), rewritten=(0, 1))
        >>> check_rewritten(lay, msgs, "tokenizer", source, ())
        Traceback (most recent call last):
        ...
        sftlab.tokens.accounting.ContentLost: the tokenizer's own template rewrites message 1 (user) and loses '</think>' of its text ...
    """
    spans = {s.index: s for s in layout.spans}
    for i in layout.rewritten:
        m = messages[i]
        if i in trained or not m.content.strip() or (last_turn_only and m.role == "assistant"):
            continue
        span = spans.get(i)
        word = _lost_word(m.content, layout.text[span.start:span.end] if span is not None else "", source)
        if word is not None:
            raise ContentLost(
                f"{the(template)} rewrites message {i} ({m.role}) and loses {word[:60]!r} of its text (templates "
                "delete flags such as /think or the text before a '</think>'); the model would be shown or trained "
                "on text the record does not hold: remove the reasoning tag or flag from the message's text, or use "
                "a template that writes it as it is", "content_rewritten")


def _lost_word(content: str, shown: str, source: str) -> str | None:
    """The first whitespace-separated word of ``content`` that ``shown`` lacks (in order), unless the
    template deletes that very word by name (``replace('w', ...)``); ``None`` where ``shown`` holds
    ``content`` as JSON writes it in a string (escaped)."""
    if any(form in shown for form in (json.dumps(content, ensure_ascii=False)[1:-1], json.dumps(content)[1:-1])):
        return None
    got, j = shown.split(), 0
    for w in content.split():
        try:
            j = got.index(w, j) + 1
        except ValueError:
            if f"replace('{w}'" not in source and f'replace("{w}"' not in source:
                return w
    return None


def _named_hint(template: str) -> str:
    """For the default of a tokenizer's named templates: that another of them may write tools."""
    if template != "tokenizer:default":
        return ""
    return ("; the tokenizer has other named templates (transformers takes 'tool_use' when tools are given): "
            "template: NAME trains with one of them")


def the(template: str) -> str:
    """How a reason names a template: ``the chatml template``, ``the tokenizer's own template``."""
    if template == "tokenizer":
        return "the tokenizer's own template"
    if template.startswith("tokenizer:"):  # one of the tokenizer's named templates
        return f"the tokenizer's own {template.removeprefix('tokenizer:')!r} template"
    return f"the {template} template"


def _outside(text: str, turns) -> list[str]:
    """The pieces of ``text`` outside the assistant turns (what the model is shown as context)."""
    pieces, pos = [], 0
    for t in sorted(turns, key=lambda t: t.start):
        pieces.append(text[pos:t.start])
        pos = max(pos, t.end)
    pieces.append(text[pos:])
    return pieces


def _name(tool: dict) -> str:
    fn = tool.get("function", tool) if isinstance(tool, dict) else {}
    return str(fn.get("name")) if isinstance(fn, dict) else "?"


def _schema_missing(tool, context: str) -> str | None:
    """What of one tool schema ``context`` lacks: ``"name"``, ``"description"``, ``"parameter X"``."""
    fn = tool.get("function", tool) if isinstance(tool, dict) else None
    if not isinstance(fn, dict):
        return None
    if isinstance(fn.get("name"), str) and not _written(fn["name"], context):
        return "name"
    if isinstance(fn.get("description"), str) and fn["description"].strip() \
            and not _written(fn["description"].strip(), context):
        return "description"
    params = fn.get("parameters")
    props = params.get("properties") if isinstance(params, dict) else None
    for key in props if isinstance(props, dict) else ():
        if not _written(key, context):
            return f"parameter {key!r}"
    return None


def _strings(value) -> list[str]:
    """The argument names and string values of a call's arguments (nested ones included)."""
    out: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append(str(k))
            out.extend(_strings(v))
    elif isinstance(value, list):
        for v in value:
            out.extend(_strings(v))
    elif isinstance(value, str) and value.strip():
        out.append(value.strip())
    return out


def _written(s: str, text: str) -> bool:
    """``s`` is in ``text`` as it is, or as JSON writes it inside a string (escaped)."""
    return s in text or json.dumps(s, ensure_ascii=False)[1:-1] in text or json.dumps(s)[1:-1] in text
