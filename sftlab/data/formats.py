"""Row adapters: one raw record (a dict) in any supported layout -> one ``Conversation``.

The layout is detected per record, so one file may mix them:

- OpenAI ``messages``: ``{"messages": [{"role": "user", "content": "hi"}, ...]}``; content given
  as a list of text parts is joined into one string (parts concatenated, as the OpenAI API does).
  A message with non-empty ``tool_calls`` is rejected: the chat templates do not render tool calls.
- ShareGPT: ``{"conversations": [{"from": "human", "value": "hi"}, ...]}`` with ``from`` in
  human/user, gpt/assistant/model, system, tool/function/observation; an optional top-level
  ``system`` string becomes the first message.
- Alpaca: ``{"instruction": ..., "input": ..., "output": ..., "system": ...}`` (``input`` and
  ``system`` optional); the user turn is the instruction, then a blank line and the input.
- Prompt/completion: ``{"prompt": ..., "completion": ...}``, each a string or a messages list.

Metadata (``id``, ``task``, ``slice``, ``source``, ``license``, ``policy_category``,
``expected``) may sit at the top level or under ``meta``; every other field is kept as it is in
``Conversation.extra``. Checks that need only the row (role names, content types, ``train`` and
``weight`` values, metadata types) happen here; checks on the conversation as a whole (turn order,
an assistant message to train on) live in ``sftlab.data.loading``.

Example::

    >>> c = to_conversation({"instruction": "Add 2 and 2.", "output": "4", "meta": {"task": "math"}})
    >>> [(m.role, m.content) for m in c.messages], c.task
    ([('user', 'Add 2 and 2.'), ('assistant', '4')], 'math')
"""
from __future__ import annotations

import math
from typing import Any

from sftlab.data.conversation import ROLES, Conversation, Message, Origin, unpaired_surrogate

META_FIELDS = ("id", "task", "slice", "source", "license", "policy_category", "expected")
EXPECTED_VALUES = ("refuse", "comply")

# ShareGPT ``from`` values and the role each one means.
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant",
    "system": "system",
    "tool": "tool", "function": "tool", "observation": "tool",
}
# Top-level keys each layout consumes (so they do not land in ``extra``).
_LAYOUT_KEYS = {
    "openai": frozenset({"messages"}),
    "sharegpt": frozenset({"conversations", "system"}),
    "alpaca": frozenset({"instruction", "input", "output", "system"}),
    "prompt_completion": frozenset({"prompt", "completion", "system"}),
}
_CONSUMED = {fmt: keys | set(META_FIELDS) | {"meta"} for fmt, keys in _LAYOUT_KEYS.items()}
_ROLE_LIST = ", ".join(ROLES)
_TOOL_CALL_FIX = ("tool calls are not rendered by the chat template, so this record cannot be "
                  "trained as given; drop the tool-call turns or give the call as plain text content")


class RecordError(ValueError):
    """Why one record cannot be used: ``code`` (short, for counts), a ``reason`` that says what
    was expected and how to fix it, and the ``field`` / ``message_index`` when known."""

    def __init__(self, code: str, reason: str, field: str | None = None,
                 message_index: int | None = None):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.field = field
        self.message_index = message_index

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


def detect_format(row: dict[str, Any]) -> str:
    """The layout of ``row``: ``openai``, ``sharegpt``, ``alpaca`` or ``prompt_completion``.

    >>> detect_format({"conversations": [{"from": "human", "value": "hi"}]})
    'sharegpt'
    """
    if row.get("messages") is not None:
        return "openai"
    if row.get("conversations") is not None:
        return "sharegpt"
    if row.get("instruction") is not None and "output" in row:
        return "alpaca"
    if row.get("prompt") is not None and "completion" in row:
        return "prompt_completion"
    for key, what in (("messages", "a list of messages"), ("conversations", "a list of messages"),
                      ("prompt", "a string or a list of messages"), ("instruction", "a string")):
        if key in row:  # present but null (a column of a table where this row has none)
            raise RecordError("bad_messages", f"expected {what}, got {_kind(row[key])}; fix: fill it in or "
                              "drop the record", field=key)
    keys = ", ".join(sorted(map(str, row))) or "none"
    raise RecordError(
        "unknown_format",
        f"no conversation found (record keys: {keys}); expected a 'messages' list (OpenAI), "
        "'conversations' with from/value (ShareGPT), 'instruction'/'output' (Alpaca) or "
        "'prompt'/'completion'")


def to_conversation(row: dict[str, Any], origin: Origin | None = None) -> Conversation:
    """Adapt one raw record to a ``Conversation``; raises ``RecordError`` naming the field.

    >>> to_conversation({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
    ...     {"type": "text", "text": "b"}]}, {"role": "assistant", "content": "c"}]}).messages[0].content
    'ab'
    """
    fmt = detect_format(row)
    if fmt == "openai":
        messages = _message_list(row["messages"], "messages", sharegpt=False)
    elif fmt == "sharegpt":
        messages = _system_prefix(row, "system") + _message_list(
            row["conversations"], "conversations", sharegpt=True)
    elif fmt == "alpaca":
        messages = _alpaca(row)
    else:
        messages = _prompt_completion(row)
    _check_unicode(messages, fmt)
    meta = _metadata(row)
    extra = _extra(row, fmt)
    return Conversation(messages=tuple(messages), extra=extra, origin=origin, **meta)


def _check_unicode(messages: list[Message], fmt: str) -> None:
    """Refuse a record whose text holds an unpaired surrogate (see ``unpaired_surrogate``), naming
    the message."""
    for i, m in enumerate(messages):
        at = unpaired_surrogate(m.content)
        if at is not None:
            field = f"messages[{i}].content" if fmt == "openai" else f"message {i} ({m.role}) content"
            raise RecordError(
                "invalid_text", f"unpaired surrogate U+{ord(m.content[at]):04X} at character {at}: "
                "not valid Unicode text, no tokenizer can encode it; fix: repair the \\u escape (a surrogate "
                "pair needs both halves)", field=field, message_index=i)


def _message_list(items: Any, field: str, sharegpt: bool, offset: int = 0) -> list[Message]:
    if not isinstance(items, list):
        raise RecordError("bad_messages", f"expected a list of messages, got {_kind(items)}; "
                          "fix: give the turns as a JSON list", field=field)
    return [_message(m, i, field, offset, sharegpt) for i, m in enumerate(items)]


def _message(m: Any, pos: int, base: str, offset: int, sharegpt: bool) -> Message:
    # Field names are formatted only on error: this runs once per message of every record.
    if type(m) is not dict:
        raise RecordError("bad_message", f"expected a message object, got {_kind(m)}",
                          field=f"{base}[{pos}]", message_index=pos + offset)
    if sharegpt or ("role" not in m and "from" in m):
        role = _sharegpt_role(m.get("from"), pos + offset, f"{base}[{pos}]")
        content, content_key = m.get("value"), "value"
    else:
        role = m.get("role")
        if role not in ROLES:
            raise RecordError(
                "unknown_role", f"unknown role {role!r}; expected one of {_ROLE_LIST}; "
                "fix: rename the role (map e.g. 'bot' to 'assistant')",
                field=f"{base}[{pos}].role", message_index=pos + offset)
        content, content_key = m.get("content"), "content"
    if m.get("tool_calls"):
        raise RecordError("tool_calls", _TOOL_CALL_FIX, field=f"{base}[{pos}].tool_calls",
                          message_index=pos + offset)
    if type(content) is not str:
        content = _join_parts(content, f"{base}[{pos}].{content_key}", pos + offset)
    train = m.get("train")
    if train is not None and type(train) is not bool:
        raise RecordError("bad_train", f"expected true or false, got {train!r}; fix: use a JSON "
                          "boolean (or leave the field out)", field=f"{base}[{pos}].train",
                          message_index=pos + offset)
    weight = m.get("weight")
    if weight is not None:
        weight = _weight(weight, f"{base}[{pos}].weight", pos + offset)
    return Message(role, content, train, weight)


def _sharegpt_role(value: Any, index: int, field: str) -> str:
    role = SHAREGPT_ROLES.get(value.lower()) if isinstance(value, str) else None
    if role is not None:
        return role
    if value == "function_call":
        raise RecordError("tool_calls", _TOOL_CALL_FIX, field=f"{field}.from", message_index=index)
    raise RecordError("unknown_role",
                      f"unknown ShareGPT speaker {value!r}; expected one of "
                      f"{', '.join(SHAREGPT_ROLES)}; fix: rename the speaker", field=f"{field}.from", message_index=index)


def _join_parts(content: Any, field: str, index: int) -> str:
    """Join OpenAI content parts (``[{"type": "text", "text": ...}, ...]``) into one string."""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" \
                    and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                what = part.get("type") if isinstance(part, dict) else _kind(part)
                raise RecordError(
                    "non_string_content",
                    f"content part of type {what!r} is not text; only text parts "
                    "({\"type\": \"text\", \"text\": ...}) can be trained",
                    field=f"{field}[{j}]", message_index=index)
        return "".join(texts)
    raise RecordError("non_string_content", f"expected a string, got {_kind(content)}; fix: give "
                      "the message text as a string", field=field, message_index=index)


def _weight(value: Any, field: str, index: int) -> float:
    if type(value) is bool or not isinstance(value, (int, float)):
        raise RecordError("bad_weight", f"expected a number >= 0, got {value!r}; fix: use a "
                          "JSON number such as 1.0 (0 trains nothing)", field=field,
                          message_index=index)
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise RecordError("bad_weight", f"expected a finite number >= 0, got {value!r}; fix: "
                          "use a weight such as 1.0 (0 trains nothing)", field=field,
                          message_index=index)
    return value


def _system_prefix(row: dict[str, Any], key: str) -> list[Message]:
    system = row.get(key)
    if system is None or system == "":
        return []
    if not isinstance(system, str):
        raise RecordError("non_string_content", f"expected a string, got {_kind(system)}",
                          field=key, message_index=0)
    return [Message("system", system)]


def _alpaca(row: dict[str, Any]) -> list[Message]:
    messages = _system_prefix(row, "system")
    n = len(messages)
    parts = []
    for key in ("instruction", "input"):
        value = row.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise RecordError("non_string_content", f"expected a string, got {_kind(value)}",
                              field=key, message_index=n)
        parts.append(value)
    output = row.get("output")
    if not isinstance(output, str):
        raise RecordError("non_string_content", f"expected a string, got {_kind(output)}",
                          field="output", message_index=n + 1)
    return messages + [Message("user", "\n\n".join(parts)), Message("assistant", output)]


def _prompt_completion(row: dict[str, Any]) -> list[Message]:
    messages = _system_prefix(row, "system")
    prompt, completion = row["prompt"], row.get("completion")
    if isinstance(prompt, str):
        messages.append(Message("user", prompt))
    elif isinstance(prompt, list):
        messages += _message_list(prompt, "prompt", sharegpt=False, offset=len(messages))
    else:
        raise RecordError("non_string_content", f"expected a string or a messages list, got {_kind(prompt)}",
                          field="prompt", message_index=len(messages))
    if isinstance(completion, str):
        messages.append(Message("assistant", completion))
    elif isinstance(completion, list):
        messages += _message_list(completion, "completion", sharegpt=False, offset=len(messages))
    else:
        raise RecordError("non_string_content", f"expected a string or a messages list, got "
                          f"{_kind(completion)}", field="completion", message_index=len(messages))
    return messages


def _metadata(row: dict[str, Any]) -> dict[str, Any]:
    meta = row.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise RecordError("bad_metadata", f"expected an object, got {_kind(meta)}", field="meta")
    out: dict[str, Any] = {}
    for key in META_FIELDS:
        value = row.get(key)
        if meta:
            inner = meta.get(key)
            if value is None:
                value = inner
            elif inner is not None and inner != value:
                raise RecordError("bad_metadata", f"given twice with different values ({value!r} "
                                  f"at the top level, {inner!r} under meta); fix: keep one",
                                  field=key)
        if value is None:
            continue
        if type(value) is not str:
            if key == "id" and type(value) is int:
                value = str(value)
            else:
                raise RecordError("bad_metadata", f"expected a string, got {_kind(value)}",
                                  field=key)
        out[key] = value
    expected = out.get("expected")
    if expected is not None and expected not in EXPECTED_VALUES:
        raise RecordError("bad_metadata", f"expected 'refuse' or 'comply', got {expected!r}",
                          field="expected")
    if out.get("id") == "":
        raise RecordError("bad_metadata", "empty id; fix: give a non-empty id or leave it out",
                          field="id")
    return out


def _extra(row: dict[str, Any], fmt: str) -> dict[str, Any]:
    consumed = _CONSUMED[fmt]
    extra = {k: v for k, v in row.items() if k not in consumed}
    meta = row.get("meta")
    if meta:
        extra = {**{k: v for k, v in meta.items() if k not in META_FIELDS}, **extra}
    return extra


def _kind(value: Any) -> str:
    """A short description of a JSON value for error messages."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)
