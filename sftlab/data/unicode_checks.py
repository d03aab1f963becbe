r"""Unicode checks of a record: text with an unpaired surrogate (a broken ``\u`` escape) is refused
naming the message and field, since no tokenizer can encode it and the manifest hashes and the
quarantine write every string as UTF-8.

Example::

    >>> from sftlab.data.conversation import Message
    >>> check_unicode([Message("user", "ok"), Message("assistant", "bad \ud800")], "openai")
    Traceback (most recent call last):
    ...
    sftlab.data.record_errors.RecordError: messages[1].content: unpaired surrogate U+D800 at character 4: not valid Unicode text, no tokenizer can encode it; fix: repair the \u escape (a surrogate pair needs both halves)
"""
from __future__ import annotations

import json
import re
from typing import Any

from sftlab.data.conversation import Message, unpaired_surrogate
from sftlab.data.record_errors import RecordError

__all__ = ["check_unicode", "check_tools_unicode", "check_unicode_fields"]


def check_unicode(messages: list[Message], fmt: str) -> None:
    """Refuse a record whose text holds an unpaired surrogate (see ``unpaired_surrogate``), naming
    the message."""
    for i, m in enumerate(messages):
        if m.reasoning is None and not m.tool_calls and m.content.isascii() and m.tool_call_id is None \
                and m.name is None:
            continue  # ASCII holds no surrogate
        texts = [("content", m.content), ("tool_call_id", m.tool_call_id or ""), ("name", m.name or "")]
        if m.reasoning is not None:
            texts.append(("reasoning_content", m.reasoning))
        for j, c in enumerate(m.tool_calls):
            texts += [(f"tool_calls[{j}]", c.name + (c.id or "") + c.arguments),
                      (f"tool_calls[{j}].function.arguments", _json_decoded(c.arguments))]
        for key, text in texts:
            at = unpaired_surrogate(text)
            if at is None:
                continue
            field = f"messages[{i}].{key}" if fmt == "openai" else f"message {i} ({m.role}) {key}"
            raise RecordError(
                "invalid_text", f"unpaired surrogate U+{ord(text[at]):04X} at character {at}: "
                "not valid Unicode text, no tokenizer can encode it; fix: repair the \\u escape (a surrogate "
                "pair needs both halves)", field=field, message_index=i)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _json_decoded(text: str) -> str:
    """The JSON text ``text`` (tool arguments, tool schemas) as a template receives it, parsed:
    a surrogate escaped in it (``"\\ud800"`` inside the string) is one once parsed. ``""`` when
    ``text`` spells no surrogate escape (the usual case, not parsed)."""
    if not _SURROGATE_ESCAPE.search(text):
        return ""
    try:
        return json.dumps(json.loads(text), ensure_ascii=False)
    except (ValueError, RecursionError):
        return ""


def check_tools_unicode(tools: str | None) -> None:
    if tools is None:
        return
    for text in (tools, _json_decoded(tools)):
        at = unpaired_surrogate(text)
        if at is not None:
            raise RecordError("invalid_text", f"unpaired surrogate U+{ord(text[at]):04X} in the tool schemas: not "
                              "valid Unicode text, no tokenizer can encode it; fix: repair the \\u escape (a "
                              "surrogate pair needs both halves)", field="tools")


def check_unicode_fields(fields: dict[str, Any]) -> None:
    """Every key and string of the record's other fields (id, metadata, user fields) is Unicode
    text too: the manifest hashes and the quarantine writes them as UTF-8."""
    stack: list[tuple[str, Any]] = list(fields.items())
    while stack:
        name, value = stack.pop()
        for text in (name, value) if isinstance(value, str) else (name,):
            at = unpaired_surrogate(text)
            if at is not None:
                raise RecordError(
                    "invalid_text", f"unpaired surrogate U+{ord(text[at]):04X} at character {at} of "
                    f"{'the key' if text is name else 'the value'}: not valid Unicode text; fix: repair "
                    "the \\u escape (a surrogate pair needs both halves)",
                    field=name.encode("utf-8", "backslashreplace").decode("utf-8"))
        if isinstance(value, dict):
            stack.extend((f"{name}.{k}", v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{name}[{i}]", v) for i, v in enumerate(value))
