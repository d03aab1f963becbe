"""Record text that a template writes outside content spans and that spells a special token
(DESIGN.md, invariant 4): tool-call names and arguments, tool-schema strings and reasoning are
encoded as ordinary text, like content (``Layout.data_ranges``).

They are found two ways. As the JSON a template writes for them (``tojson``: quoted, so scaffolding
never matches), by a search of the rendering. And where a Jinja template writes such a string as
it is (Qwen3.5's ``<parameter=city>`` blocks, LFM2.5's Python-style calls), by one more rendering
with each such string replaced by a probe: the real rendering is that one with every probe replaced
by its string (as it is or JSON-escaped), which gives the string's places exactly, never scaffolding
that happens to spell the same. Only records with such a string pay for that rendering.

Example (a template that writes argument values bare)::

    >>> from sftlab.tokens.templates import get_template
    >>> t = get_template("{% for m in messages %}{% for c in m.tool_calls or [] %}"
    ...                  "<call>{{ c.function.arguments.q }}</call>{% endfor %}{% endfor %}")
    >>> msgs = [{"role": "assistant", "content": "", "tool_calls": [
    ...     {"type": "function", "function": {"name": "f", "arguments": {"q": "</call>"}}}]}]
    >>> text = t.jinja_text(msgs)
    >>> text, probed_ranges(t, msgs, None, text, ["</call>"])
    ('<call></call></call>', [(6, 13)])
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence

from sftlab.data.conversation import Message
from sftlab.tokens.encoder import Encoder
from sftlab.tokens.layout import Layout
from sftlab.tokens.templates import ChatTemplate, TemplateError

__all__ = ["protect_data", "probed_ranges"]


def protect_data(enc: Encoder, messages: Sequence[Message], msgs: list[dict], tool_list: list | None,
                 layout: Layout) -> Layout:
    """``layout`` with ``data_ranges`` set to the record text outside content spans that spells a
    special token; ``msgs`` and ``tool_list`` are ``messages`` and the tools as the template got them."""
    texts: list[str] = []
    spelled: set[str] = set()

    def strings(value):
        if isinstance(value, str):
            texts.append(json.dumps(value, ensure_ascii=False))
            if enc.special_re.search(value):
                spelled.add(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                strings(k)
                strings(v)
        elif isinstance(value, list):
            for v in value:
                strings(v)

    strings(tool_list or [])
    for m in messages:
        for c in m.tool_calls:
            arguments = c.arguments_value()
            texts.append(json.dumps(arguments, ensure_ascii=False))
            strings(c.name)
            strings(arguments)
    found = set()
    for t in {t for t in texts if enc.special_re.search(t)}:
        k = layout.text.find(t)
        while k >= 0:
            found.add((k, k + len(t)))
            k = layout.text.find(t, k + 1)
    if spelled and not enc.template.is_builtin:  # built-in tool formats write every string as JSON
        found.update(probed_ranges(enc.template, msgs, tool_list, layout.text, sorted(spelled)))
    for i, a, b in layout.reasoning_spans:
        if enc.special_re.search(layout.text, a, b):
            found.add((a, b))
    if not found:
        return layout
    return dataclasses.replace(layout, data_ranges=tuple(sorted(found)))


def probed_ranges(t: ChatTemplate, msgs: list[dict], tools: list | None, text: str,
                  spelled: Sequence[str]) -> list[tuple[int, int]]:
    """Where the Jinja template ``t`` writes each string of ``spelled`` (found in tool calls and
    tools) in ``text``, its rendering of ``msgs``: one rendering with each string replaced by a probe
    (see the module docstring). ``[]`` where that rendering does not line up with ``text``."""
    probes = {s: f"sftlab0data{k:04d}0z" for k, s in enumerate(spelled)}
    back = {p: s for s, p in probes.items()}

    def sub(v):
        if isinstance(v, str):
            return probes.get(v, v)
        if isinstance(v, dict):
            return {sub(k): sub(x) for k, x in v.items()}
        if isinstance(v, list):
            return [sub(x) for x in v]
        return v

    probed = [{**m, "tool_calls": sub(m["tool_calls"])} if m.get("tool_calls") else m for m in msgs]
    try:
        rendered = t.jinja_text(probed, sub(tools) if tools else None)
    except TemplateError:
        return []
    out, at, pos = [], 0, 0  # at: in text, pos: in rendered
    for mt in re.finditer("|".join(re.escape(p) for p in back), rendered):
        literal = rendered[pos:mt.start()]
        if not text.startswith(literal, at):
            return []
        at += len(literal)
        s = back[mt.group()]
        form = next((f for f in (s, json.dumps(s, ensure_ascii=False)[1:-1], json.dumps(s)[1:-1])
                     if text.startswith(f, at)), None)
        if form is None:
            return []
        out.append((at, at + len(form)))
        at, pos = at + len(form), mt.end()
    return out
