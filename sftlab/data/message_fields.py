"""One message of a record -> ``Message``: the speaker (``role``, or ShareGPT's ``from`` and the
names a data entry maps), text content (a string or joined text parts), tool calls (OpenAI's
``tool_calls`` and its legacy ``function_call``, Glaive's ``function_call`` turns, LLaMA-Factory's
``tool_call`` parts), reasoning under any of its spellings, ``train`` and ``weight``; and a record's
tool schemas (``tools_text``). Each check names the field and message index it refuses.

Every key of a message is accounted for (DESIGN.md, invariant 9). Besides the speaker and the text,
sftlab reads ``reasoning_content`` (``reasoning``, ``thinking``), ``tool_calls``, ``function_call``,
``refusal`` (OpenAI's refusal text: the assistant's content when its ``content`` is null or empty),
``train`` and ms-swift's ``loss`` (a boolean: whether the turn is trained), ``weight`` and its
spellings ``loss_weight`` (LLaMA-Factory) and ``loss_scale`` (ms-swift), and on tool results
``tool_call_id`` and ``name``. A key that is empty (null, "", [] or {}), message metadata
(``sftlab.data.message_keys.MESSAGE_METADATA``) or declared ignored (``ignore_fields: ["messages[].KEY"]``: the message list's
field, ``[]``, the key) is accepted and not trained; any other key refuses the record
(``unused_field``) naming it, e.g. ``messages[1].name``: the participant name OpenAI allows on any
message, which chat templates do not show the model.

Speakers: ``developer`` is read as ``system`` (OpenAI's name for the system message of its o-series
models; gpt-oss's template treats the two alike); ms-swift's agent layout is read as it documents it:
``tool_response`` is ``tool``, and a ``tool_call`` message holds one call as JSON (consecutive ones are
the calls of one assistant turn, as ms-swift merges them). An unknown speaker is refused with the
role it most likely means (``ipython``: Llama 3.1's tool role, so ``tool``).

Example::

    >>> [(m.role, m.content) for m in message_list([{"from": "human", "value": "hi"},
    ...     {"from": "gpt", "value": "yo"}], "conversations", sharegpt=True)]
    [('user', 'hi'), ('assistant', 'yo')]
    >>> read_message({"role": "assistant", "content": "", "tool_calls": [{"function": {
    ...     "name": "f", "arguments": {"x": 1}}}]}, 0, "messages", 0, False).tool_calls[0].arguments
    '{"x": 1}'
    >>> m = read_message({"role": "assistant", "content": None, "refusal": "I can't help with that.",
    ...                   "loss": False}, 1, "messages", 0, False)
    >>> m.content, m.train
    ("I can't help with that.", False)
    >>> read_message({"role": "user", "content": "hi", "name": "alice"}, 0, "messages", 0, False)
    Traceback (most recent call last):
    ...
    sftlab.data.record_errors.RecordError: messages[0].name: a user message with name 'alice' (the speaker's name, as OpenAI's API allows): chat templates do not show names to the model, so it would be lost; fix: write it into the content, or declare it ignored (the data entry's ignore_fields: [messages[].name], validate --ignore-field 'messages[].name') to train without it
    >>> read_message({"role": "user", "content": "hi", "name": "alice"}, 0, "messages", 0, False,
    ...              ignore=("messages[].name",)).content
    'hi'
"""
from __future__ import annotations

import json
from typing import Any

from sftlab.data.conversation import ROLES, Message, ToolCall, unpaired_surrogate
from sftlab.data.message_keys import MESSAGE_METADATA, TRAINING_KEYS, account_keys, message_train, message_weight
from sftlab.data.record_errors import RecordError, empty, keys as _keys, kind as _kind

# ``Columns`` in annotations is sftlab.data.formats's (not imported: that module imports this one).

__all__ = ["SHAREGPT_ROLES", "message_list", "read_message", "json_object_text", "tools_text", "sharegpt_calls"]

# ShareGPT ``from`` values (and ``role`` values other than sftlab's) and the role each one means.
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant",
    "system": "system", "developer": "system",
    "tool": "tool", "function": "tool", "observation": "tool", "tool_response": "tool",
}
# Speaker names sftlab does not read, and the role each most likely means (for the hint).
_LIKELY_ROLES = {
    "ipython": "tool", "function_response": "tool",
    "bot": "assistant", "ai": "assistant", "chatbot": "assistant", "agent": "assistant", "response": "assistant",
    "prompter": "user", "customer": "user", "question": "user", "instruction": "user",
}
_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_REASONING_SET = frozenset(_REASONING_KEYS)
_ROLE_SET = frozenset(ROLES)
# Keys read whatever the speaker and text keys are (each reader checks its own).
_READ_KEYS = frozenset({*_REASONING_KEYS, "tool_calls", "function_call", "refusal", *TRAINING_KEYS, *MESSAGE_METADATA})


class _CallTurns(RecordError):
    """A message list holds ms-swift's ``tool_call`` messages: read it again, merging them."""


def message_list(items: Any, field: str, sharegpt: bool, offset: int = 0,
                  columns: Columns | None = None, ignore: tuple[str, ...] = ()) -> list[Message]:
    if not isinstance(items, list):
        raise RecordError("bad_messages", f"expected a list of messages, got {_kind(items)}; "
                          "fix: give the turns as a JSON list", field=field)
    try:
        return [read_message(m, i, field, offset, sharegpt, columns, ignore) for i, m in enumerate(items)]
    except _CallTurns:
        return _call_turns(items, field, sharegpt, offset, columns, ignore)


def _call_turns(items: list, field: str, sharegpt: bool, offset: int, columns: Columns | None,
                ignore: tuple[str, ...]) -> list[Message]:
    """ms-swift's agent layout: each ``tool_call`` message holds one call as JSON (``{"name",
    "arguments"}``); consecutive ones are the calls of one assistant turn (ms-swift merges them so), and
    they must agree on ``loss``/``loss_scale`` (ms-swift keeps the first one's)."""
    out: list[Message] = []
    joined = False  # whether out[-1] holds tool_call messages
    for i, m in enumerate(items):
        msg = read_message(m, i, field, offset, sharegpt, columns, ignore, call_turn=True)
        turn = type(m) is dict and m.get("role") == "tool_call"
        if turn and joined:
            last = out[-1]
            if (msg.train, msg.weight) != (last.train, last.weight):
                raise RecordError("bad_train", "calls made together (consecutive tool_call messages) with different "
                                  "loss or loss_scale: they are one assistant turn, trained alike; fix: give them "
                                  "the same (or set it on the first only)", field=f"{field}[{i}]",
                                  message_index=i + offset)
            if last.reasoning is not None and msg.reasoning is not None:
                raise RecordError("bad_reasoning", "calls made together (consecutive tool_call messages) each with "
                                  "reasoning: they are one assistant turn, which has one reasoning block; fix: "
                                  "give the reasoning on the first only", field=f"{field}[{i}]",
                                  message_index=i + offset)
            msg = Message("assistant", "", last.train, last.weight, last.tool_calls + msg.tool_calls,
                          reasoning=last.reasoning if msg.reasoning is None else msg.reasoning)
            out[-1] = msg
        else:
            out.append(msg)
        joined = turn
    return out


def read_message(m: Any, pos: int, base: str, offset: int, sharegpt: bool,
                 columns: Columns | None = None, ignore: tuple[str, ...] = (), call_turn: bool = False) -> Message:
    """The message ``m``, item ``pos`` of the list at ``base`` (message ``pos + offset`` of the
    conversation); ``ignore``: the declared-ignored fields (``messages[].KEY`` names a message key).
    ``call_turn``: read ms-swift's ``tool_call`` message as an assistant message with that call (else
    it raises ``_CallTurns``, for ``message_list`` to merge the calls made together).

    Long because it runs once per message of every record: the usual messages' fast paths and the
    layouts' speaker and text keys stay inline rather than cost a call each."""
    # Field names are formatted only on error: this runs once per message of every record.
    if type(m) is not dict:
        raise RecordError("bad_message", f"expected a message object, got {_kind(m)}",
                          field=f"{base}[{pos}]", message_index=pos + offset)
    role = m.get("role")
    if len(m) == 2 and columns is None:  # the usual messages: a speaker and text, nothing else to check
        if type(role) is str:
            if role in _ROLE_SET and type(m.get("content")) is str:
                return Message(role, m["content"])
        elif type(speaker := m.get("from")) is str and speaker in SHAREGPT_ROLES and type(m.get("value")) is str:
            return Message(SHAREGPT_ROLES[speaker], m["value"])
    rest = []  # the speaker and text keys and the keys to account for
    for key in m:
        if key in _READ_KEYS:
            continue
        if type(key) is str and not key.isascii() and unpaired_surrogate(key) is not None:
            raise RecordError("invalid_text", f"unpaired surrogate in the key {ascii(key)}: not valid Unicode "
                              "text; fix: repair the \\u escape (a surrogate pair needs both halves)",
                              field=f"{base}[{pos}]", message_index=pos + offset)
        rest.append(key)
    calls: tuple[ToolCall, ...] = ()
    if columns is not None:
        role, content, role_key, content_key = _mapped_message(m, pos, base, offset, columns)
        if role == "function_call":  # the value is the call as JSON
            role, calls = "assistant", sharegpt_calls(content, f"{base}[{pos}].{content_key}", pos + offset)
            content = ""
    elif "role" not in m and ("from" in m or sharegpt):
        role_key, content_key = "from", "value"
        if m.get("from") == "function_call":  # Glaive-style: the value is the call as JSON
            role = "assistant"
            calls = sharegpt_calls(m.get("value"), f"{base}[{pos}].value", pos + offset)
            content = ""
        else:
            role = _sharegpt_role(m.get("from"), pos + offset, f"{base}[{pos}]", m)
            content = m.get("value")
    else:
        role_key, content_key = "role", "content"
        role = m.get("role")
        content = m.get("content")
        if role == "tool_call":  # ms-swift's agent layout: the content is the call as JSON
            if not call_turn:
                raise _CallTurns("unknown_role", "a tool_call message outside a message list; fix: give it as "
                                 "an assistant message's tool_calls", field=f"{base}[{pos}].role",
                                 message_index=pos + offset)
            role, calls = "assistant", sharegpt_calls(content, f"{base}[{pos}].content", pos + offset)
            content = ""
        elif role not in ROLES:
            role = _sharegpt_role(role, pos + offset, f"{base}[{pos}]", m, key="role")
    reasoning = _reasoning(m, f"{base}[{pos}]", pos + offset)
    calls_key = "tool_calls"
    if m.get("tool_calls"):
        calls = _tool_calls(m["tool_calls"], f"{base}[{pos}].tool_calls", pos + offset)
    if m.get("function_call"):
        calls, calls_key = _legacy_call(m, calls, f"{base}[{pos}]", pos + offset), "function_call"
    if m.get("refusal") is not None:
        content = _refusal(m, role, content, content_key, f"{base}[{pos}]", pos + offset)
    if type(content) is not str:
        if content is None and (calls or role == "assistant" and reasoning):
            content = ""
        else:
            content, part_reasoning, part_calls = _join_parts(content, f"{base}[{pos}].{content_key}", pos + offset)
            if part_reasoning is not None:
                if reasoning is not None and reasoning != part_reasoning:
                    raise RecordError("bad_reasoning", "reasoning given twice with different text (a "
                                      "reasoning field and reasoning content parts); fix: keep one",
                                      field=f"{base}[{pos}].{content_key}", message_index=pos + offset)
                reasoning = part_reasoning
            calls = calls + part_calls
    if (calls or reasoning is not None) and role != "assistant":
        what = calls_key if calls else "reasoning_content"
        raise RecordError("bad_message", f"only assistant messages make tool calls or carry reasoning, "
                          f"this one is {role!r}; fix: move the {what} to the assistant message",
                          field=f"{base}[{pos}].{what}", message_index=pos + offset)
    tool_call_id = _optional_str(m, "tool_call_id", f"{base}[{pos}]", pos + offset)
    name = _optional_str(m, "name", f"{base}[{pos}]", pos + offset) if role == "tool" else None
    train = message_train(m, role, f"{base}[{pos}]", pos + offset) if "train" in m or "loss" in m else None
    weight = message_weight(m, role, f"{base}[{pos}]", pos + offset)
    if len(rest) > 2 or role_key not in rest or content_key not in rest:
        account_keys(m, rest, role, role_key, content_key, base, pos, pos + offset, ignore)
    return Message(role, content, train, weight, calls, tool_call_id if role == "tool" else None, name, reasoning)


def _legacy_call(m: dict, calls: tuple[ToolCall, ...], base: str, index: int) -> tuple[ToolCall, ...]:
    """OpenAI's legacy ``function_call`` (``{"name", "arguments"}``): one call, as ``tool_calls`` would
    give it (its result is a ``function`` message naming the function)."""
    if calls:
        raise RecordError("bad_tool_call", "the message has both tool_calls and the legacy function_call; "
                          "expected one of them; fix: keep one", field=f"{base}.function_call", message_index=index)
    return sharegpt_calls(m["function_call"], f"{base}.function_call", index)


def _refusal(m: dict, role: str, content: Any, content_key: str, base: str, index: int) -> Any:
    """OpenAI's ``refusal`` (the text of a refusal, with ``content`` null): the assistant's content."""
    refusal = m["refusal"]
    if type(refusal) is not str:
        raise RecordError("bad_message", f"expected the refusal as a string, got {_kind(refusal)}",
                          field=f"{base}.refusal", message_index=index)
    if not refusal or refusal == content:
        return content
    if role != "assistant":
        raise RecordError("bad_message", f"a {role} message with a refusal: only the assistant refuses; fix: "
                          "move the refusal to the assistant message or drop it", field=f"{base}.refusal",
                          message_index=index)
    if content is not None and content != "" and content != []:
        raise RecordError("bad_message", f"the message has both {content_key} and a refusal, with different "
                          f"text; expected one answer (OpenAI gives the refusal with {content_key} null); fix: "
                          "keep one", field=f"{base}.refusal", message_index=index)
    return refusal


def _optional_str(m: dict, key: str, base: str, index: int) -> str | None:
    value = m.get(key)
    if value is None or type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    raise RecordError("bad_message", f"expected a string, got {_kind(value)}", field=f"{base}.{key}",
                      message_index=index)


def _reasoning(m: dict, base: str, index: int) -> str | None:
    """The message's reasoning under any of its spellings (they must agree when several are given)."""
    if _REASONING_SET.isdisjoint(m):  # the usual message: no reasoning under any spelling
        return None
    found = None
    for key in _REASONING_KEYS:
        value = m.get(key)
        if value is None:
            continue
        if type(value) is not str:
            raise RecordError("bad_reasoning", f"expected the reasoning as a string, got {_kind(value)}",
                              field=f"{base}.{key}", message_index=index)
        if found is not None and value != found:
            raise RecordError("bad_reasoning", f"reasoning given twice with different text ({key} and "
                              "another spelling); fix: keep one", field=f"{base}.{key}", message_index=index)
        found = value
    return found


def json_object_text(value: Any, field: str, index: int | None, what: str = "arguments") -> str:
    """JSON text of an object: a string is kept exactly as given once it parses as a JSON object;
    an object is serialised. Raises ``RecordError`` (code ``bad_arguments``) otherwise.

        >>> json_object_text('{"a": 1}', "f", 0), json_object_text({"a": [1, 2.5]}, "f", 0)
        ('{"a": 1}', '{"a": [1, 2.5]}')
    """
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str):
        parsed = _strict_json(value, f"{what} are ", "a JSON object such as {\"city\": \"Oslo\"}", field, index)
        if isinstance(parsed, dict):
            return value
        got = _kind(parsed)
    else:
        got = _kind(value)
    raise RecordError("bad_arguments", f"expected the {what} as a JSON object (or a string of one), got "
                      f"{got}; fix: give named arguments as an object", field=field, message_index=index)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _strict_json(text: str, subject: str, expected: str, field: str, index: int | None = None,
                 code: str = "bad_arguments") -> Any:
    """``text`` parsed as strict JSON (no NaN or Infinity), or ``RecordError`` ``code`` naming
    ``subject`` ("the function_call is ", or nothing) and what was ``expected``."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as e:
        raise RecordError(code, f"{subject}not valid JSON ({e}); expected {expected}; fix: repair the JSON",
                          field=field, message_index=index) from None


def _call(c: Any, field: str, index: int, call_id: Any = None) -> ToolCall:
    """One call from ``{"name", "arguments"}`` (optionally under ``function``, with ``id``)."""
    if not isinstance(c, dict):
        raise RecordError("bad_tool_call", f"expected a tool call object, got {_kind(c)}", field=field,
                          message_index=index)
    fn = c.get("function", c)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise RecordError("bad_tool_call", "expected a function name (function.name, a non-empty string); "
                          "fix: name the function called", field=f"{field}.function.name", message_index=index)
    if "arguments" not in fn:
        raise RecordError("bad_arguments", "the call has no arguments; expected a JSON object (use {} for "
                          "none)", field=f"{field}.function.arguments", message_index=index)
    arguments = json_object_text(fn["arguments"], f"{field}.function.arguments", index)
    _account_call(c, fn, field, index)
    cid = c.get("id", call_id)
    if cid is not None and type(cid) is not str:
        if type(cid) is not int:
            raise RecordError("bad_tool_call", f"expected the call id as a string, got {_kind(cid)}",
                              field=f"{field}.id", message_index=index)
        cid = str(cid)
    return ToolCall(fn["name"], arguments, cid)


_FUNCTION_KEYS = frozenset({"name", "arguments"})
_NESTED_CALL_KEYS = frozenset({"id", "type", "index", "function"})
_FLAT_CALL_KEYS = frozenset({"id", "type", "index"}) | _FUNCTION_KEYS


def _account_call(c: dict, fn: dict, field: str, index: int) -> None:
    """Every key of a call is its name, arguments, id, ``type`` or streaming ``index``, or empty;
    anything else would be lost, so the record is refused naming it."""
    outer = _FLAT_CALL_KEYS if fn is c else _NESTED_CALL_KEYS
    if c.keys() <= outer and (fn is c or fn.keys() <= _FUNCTION_KEYS):
        return  # the usual call: {id, type, function: {name, arguments}} or {name, arguments}
    extra = [(field, k) for k, v in c.items() if k not in outer and not empty(v)]
    if fn is not c:
        extra += [(f"{field}.function", k) for k, v in fn.items() if k not in _FUNCTION_KEYS and not empty(v)]
    if extra:
        where, key = extra[0]
        raise RecordError("unused_field", f"tool call key {key!r} is not read by sftlab, so it would be lost; "
                          "fix: put what it says into the arguments, or drop it", field=f"{where}.{key}",
                          message_index=index)


def _tool_calls(items: Any, field: str, index: int) -> tuple[ToolCall, ...]:
    if not isinstance(items, list):
        raise RecordError("bad_tool_call", f"expected a list of tool calls, got {_kind(items)}", field=field,
                          message_index=index)
    return tuple(_call(c, f"{field}[{j}]", index) for j, c in enumerate(items))


def sharegpt_calls(value: Any, field: str, index: int) -> tuple[ToolCall, ...]:
    """Glaive-style ``function_call`` turn: ``{"name", "arguments"}`` JSON (or a list of them)."""
    if isinstance(value, str):
        value = _strict_json(value, "the function_call is ", "{\"name\": ..., \"arguments\": {...}}", field, index)
    calls = value if isinstance(value, list) else [value]
    return tuple(_call(c, field if len(calls) == 1 else f"{field}[{j}]", index) for j, c in enumerate(calls))


def tools_text(value: Any, field: str = "tools") -> str | None:
    """The record's tool schemas as JSON text (``None`` when there are none)."""
    if value is None or value == "" or value == []:
        return None
    text = value if isinstance(value, str) else None
    if text is not None:
        value = _strict_json(text, "", "a list of function definitions", field, code="bad_tools")
    if not isinstance(value, list):
        raise RecordError("bad_tools", f"expected a list of function definitions, got {_kind(value)}",
                          field=field)
    for j, t in enumerate(value):
        fn = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RecordError("bad_tools", "expected a function definition with a name ({\"type\": "
                              "\"function\", \"function\": {\"name\", \"description\", \"parameters\"}} or "
                              "{\"name\", ...}); fix: name the function", field=f"{field}[{j}]")
    if not value:
        return None
    return text if text is not None else json.dumps(value, ensure_ascii=False)


def _mapped_message(m: dict, pos: int, base: str, offset: int, columns: Columns) -> tuple[str, Any, str, str]:
    """``(role, content, role key, content key)`` of a message read with the entry's ``columns``."""
    role_key = columns.role_key or ("role" if "role" in m or "from" not in m else "from")
    content_key = columns.content_key or ("value" if role_key == "from" else "content")
    name = m.get(role_key)
    role = columns.roles.get(name) if isinstance(name, str) else None
    if name == (columns.function_tag or "function_call"):
        role = "function_call"
    if role is None:
        role = name if name in ROLES else _sharegpt_role(name, pos + offset, f"{base}[{pos}]", m,
                                                         key=role_key, columns=columns)
    if content_key not in m and columns.content_key:
        raise RecordError("missing_field", f"no {content_key!r} (the entry's content_key) in the "
                          f"message; message keys: {_keys(m)}; fix: correct content_key",
                          field=f"{base}[{pos}]", message_index=pos + offset)
    return role, m.get(content_key), role_key, content_key


def _sharegpt_role(value: Any, index: int, field: str, message: dict | None = None,
                   key: str = "from", columns: Columns | None = None) -> str:
    role = SHAREGPT_ROLES.get(value.lower()) if isinstance(value, str) else None
    if role is not None:
        return role
    known = ", ".join([*ROLES, *(n for n in SHAREGPT_ROLES if n not in ROLES),
                       *(columns.roles if columns is not None else ())])
    if value is None:
        keys = _keys(message) if message is not None else "none"
        what = (f"no speaker: the message has no {key!r} (message keys: {keys}); expected "
                "'role' (with 'content') or 'from' (with 'value')")
        fix = "fix: name the speaker key with the data entry's role_key (and content_key)"
    else:
        what = f"unknown speaker {value!r} in {key!r}; expected one of {known}"
        guess = _LIKELY_ROLES.get(value.lower()) if isinstance(value, str) else None
        fix = (f"fix: map it in the data entry's roles (e.g. roles: {{{value!r}: {guess or 'ROLE'}}}"
               f"{'' if guess else ', ROLE one of ' + ', '.join(ROLES)}) or rename the speaker")
        if value == "tool_call":  # ms-swift's agent layout: the content is the call as JSON
            fix = ("fix: read ms-swift's tool_call messages with the data entry's function_tag: tool_call (one "
                   "call each; calls made together must be one assistant message's tool_calls)")
    raise RecordError("unknown_role", f"{what}; {fix}", field=f"{field}.{key}", message_index=index)


_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
"""Text part types: OpenAI's chat ``text`` and its Responses API's ``input_text`` / ``output_text``."""
_PART_TEXT_KEYS = ("text", "value", "thinking")
_PART_METADATA = frozenset({"type", "cache_control", "signature", "id", "logprobs"})
"""Part keys that steer an API or sign a block rather than hold text (Anthropic's ``cache_control``
and thinking ``signature``): accepted, not trained."""


def _join_parts(content: Any, field: str, index: int) -> tuple[str, str | None, tuple[ToolCall, ...]]:
    """Join content parts into one string: OpenAI's ``{"type": "text", "text": ...}`` (its Responses
    API's ``input_text`` and ``output_text`` too) and LLaMA-Factory's ``{"type": "text", "value": ...}``.

    Returns ``(text, reasoning, calls)``: parts of type ``reasoning``/``thinking`` (the text under
    ``text``, ``value`` or Anthropic's ``thinking``) and ``tool_call`` (LLaMA-Factory's layout, the
    text under ``value``) are reasoning and calls. Every other key of a part is empty or metadata
    (``_PART_METADATA``), else the record is refused naming it.

    >>> _join_parts([{"type": "thinking", "thinking": "2 + 2 is 4", "signature": "x"},
    ...              {"type": "output_text", "text": "4", "annotations": []}], "messages[1].content", 1)
    ('4', '2 + 2 is 4', ())
    """
    if isinstance(content, list):
        texts, reasoning, calls = [], [], []
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
                continue
            kind = part.get("type", "text") if isinstance(part, dict) else None
            key = next((k for k in _PART_TEXT_KEYS if k in part), "text") if isinstance(part, dict) else None
            text = part.get(key) if isinstance(part, dict) else None
            if kind in _TEXT_PARTS and isinstance(text, str) and key != "thinking":
                texts.append(text)
            elif kind in ("reasoning", "thinking") and isinstance(text, str):
                reasoning.append(text)
            elif kind == "tool_call":
                calls.extend(sharegpt_calls(text, f"{field}[{j}].value", index))
            elif kind in _TEXT_PARTS or kind in ("reasoning", "thinking"):
                raise RecordError(
                    "non_string_content", f"{kind} part without text: its {key!r} is {_kind(text)} "
                    f"(part keys: {_keys(part)}); expected {{\"type\": \"{kind}\", \"text\": \"...\"}} "
                    "(or \"value\" instead of \"text\"); fix: put the text in 'text'",
                    field=f"{field}[{j}]", message_index=index)
            else:
                what = repr(kind) if isinstance(part, dict) else _kind(part)
                raise RecordError(
                    "non_string_content",
                    f"content part {j} is of type {what}, not text; only text parts "
                    "({\"type\": \"text\", \"text\": ...}), reasoning and tool_call parts can be "
                    "trained; fix: drop the part or the record", field=f"{field}[{j}]", message_index=index)
            extra = [k for k, v in part.items() if k != key and k not in _PART_METADATA
                     and not empty(v)] if isinstance(part, dict) else []
            if extra:
                raise RecordError(
                    "unused_field", f"content part {j} has {', '.join(map(repr, extra))} besides its {key!r}, "
                    "which sftlab does not read, so it would be lost; fix: fold it into the text or drop "
                    "it", field=f"{field}[{j}].{extra[0]}", message_index=index)
        return "".join(texts), ("".join(reasoning) if reasoning else None), tuple(calls)
    raise RecordError("non_string_content", f"expected a string, got {_kind(content)}; fix: give "
                      "the message text as a string", field=field, message_index=index)
