"""Row adapters: one raw record (a dict) in any supported layout -> one ``Conversation``.

The layout is detected per record, so one file may mix them:

- OpenAI ``messages``: ``{"messages": [{"role": "user", "content": "hi"}, ...]}``; content given
  as a list of text parts is joined into one string (parts concatenated, as the OpenAI API does).
  Assistant ``tool_calls`` (``[{"id", "type": "function", "function": {"name", "arguments"}}]``,
  arguments a JSON object or a JSON string of one), ``tool`` messages with ``tool_call_id`` and/or
  ``name``, and reasoning (``reasoning_content``, also spelt ``reasoning`` or ``thinking``) are
  read; so are content parts of type ``reasoning`` and ``tool_call`` (LLaMA-Factory's layout,
  text under ``value``).
- ShareGPT: ``{"conversations": [{"from": "human", "value": "hi"}, ...]}`` with ``from`` in
  human/user, gpt/assistant/model, system, tool/function/observation, and ``function_call``
  (Glaive-style: the value is ``{"name", "arguments"}`` JSON, or a list of them) for an assistant
  tool call; an optional top-level ``system`` string becomes the first message.

Any layout may carry ``tools``: a list of JSON-schema function definitions, or a JSON string of
one (as Glaive and xLAM data ship it). Arguments and schemas are kept as JSON text (see
``sftlab.data.conversation``).
- Alpaca: ``{"instruction": ..., "input": ..., "output": ..., "system": ...}`` (``input`` and
  ``system`` optional); the user turn is the instruction, then a blank line and the input.
- Prompt/completion: ``{"prompt": ..., "completion": ...}``, each a string or a messages list.

Inside a message list, a message may use either key pair: ``role``/``content`` or
``from``/``value`` (so ShareGPT files written with role/content keys load as they are), and a
content part may hold its text under ``text`` or ``value`` (LLaMA-Factory writes
``{"type": "text", "value": ...}``). A data entry whose records name things differently says so
with a ``Columns`` mapping (``field_messages``, ``role_key``, ``content_key``, and ``roles``, a map
from its speaker names to sftlab's roles), as LLaMA-Factory's ``dataset_info.json`` and axolotl's
``field_messages`` do.

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

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sftlab.data.conversation import ROLES, Conversation, Message, Origin, ToolCall, unpaired_surrogate

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
    "openai": frozenset({"messages", "system"}),
    "mapped": frozenset({"system"}),
    "implicit_prompt": frozenset(),
    "sharegpt": frozenset({"conversations", "system"}),
    "alpaca": frozenset({"instruction", "input", "output", "system", "history"}),
    "prompt_completion": frozenset({"prompt", "completion", "system"}),
}
_CONSUMED = {fmt: keys | set(META_FIELDS) | {"meta", "tools"} for fmt, keys in _LAYOUT_KEYS.items()}
_ROLE_LIST = ", ".join(ROLES)
_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_REASONING_SET = frozenset(_REASONING_KEYS)
_ROLE_SET = frozenset(ROLES)
_DEFAULT_COLUMNS: Columns


@dataclass(frozen=True)
class Columns:
    """How a data entry names its fields, when not as the layouts above do.

    Message lists: ``field_messages`` (a dotted path such as ``body.messages`` reaches into a
    nested object), ``role_key``, ``content_key``, ``roles`` (speaker name -> role) and
    ``function_tag`` (the speaker whose value is a tool call, Glaive's ``function_call``).
    Instruction records: ``prompt`` (the instruction), ``query`` (the input, joined to the
    instruction with ``query_join``), ``response``, ``system``, ``history`` (earlier
    ``[user, assistant]`` pairs); ``tools``, ``chosen``/``rejected`` and ``metadata`` (sftlab's
    metadata name -> the record's field, e.g. ``{"task": "category"}``) apply to both.
    ``layout="chosen"`` trains a preference record's prompt and chosen answer (its rejected answer
    is dropped); ``ignore`` names top-level fields the user declares unused.

    >>> cols = Columns(field_messages="dialog", role_key="speaker", content_key="text",
    ...                roles={"Kunde": "user", "Agent": "assistant"})
    >>> [(m.role, m.content) for m in to_conversation({"dialog": [
    ...     {"speaker": "Kunde", "text": "Hallo"}, {"speaker": "Agent", "text": "Guten Tag"}]},
    ...     columns=cols).messages]
    [('user', 'Hallo'), ('assistant', 'Guten Tag')]
    >>> dolly = Columns(prompt="instruction", query="context", response="response",
    ...                 metadata={"task": "category"})
    >>> c = to_conversation({"instruction": "Summarise.", "context": "A text.", "response": "Short.",
    ...                      "category": "summarization"}, columns=dolly)
    >>> [(m.role, m.content) for m in c.messages], c.task
    ([('user', 'Summarise.\\n\\nA text.'), ('assistant', 'Short.')], 'summarization')
    """
    field_messages: str | None = None
    """The record field that holds the list of messages (default: ``messages`` or ``conversations``)."""
    role_key: str | None = None
    """The message key that names the speaker (default: ``role``, or ``from`` where there is no ``role``)."""
    content_key: str | None = None
    """The message key that holds the text (default: ``content``, or ``value`` with ``from``)."""
    roles: Mapping[str, str] = field(default_factory=dict)
    """Speaker name -> ``system``/``user``/``assistant``/``tool``, on top of the known ShareGPT names."""
    function_tag: str | None = None
    """The speaker name whose message value is a tool call as JSON (default: ``function_call``)."""
    prompt: str | None = None
    """Instruction records: the field with the instruction (default: ``instruction``)."""
    query: str | None = None
    """Instruction records: the field with the input joined after the instruction (default: ``input``)."""
    response: str | None = None
    """Instruction records: the field with the response (default: ``output``)."""
    system: str | None = None
    """The field with the system prompt (default: ``system``)."""
    history: str | None = None
    """Instruction records: the field with earlier ``[user, assistant]`` pairs (default: ``history``)."""
    tools: str | None = None
    """The field with the tool schemas (default: ``tools``)."""
    chosen: str | None = None
    """Preference records: the field with the chosen answer (default: ``chosen``)."""
    rejected: str | None = None
    """Preference records: the field with the rejected answer (default: ``rejected``)."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    """sftlab metadata name (``id``, ``task``, ``slice``, ...) -> the record field holding it."""
    layout: str | None = None
    """``chosen``: read preference records as the prompt and the chosen answer; ``None``: refuse them."""
    ignore: tuple[str, ...] = ()
    """Top-level fields declared unused: kept as metadata, never a reason to refuse the record."""
    query_join: str = "\n\n"
    """What joins the instruction and the input (LLaMA-Factory joins them with one newline)."""
    prompt_completion: str = "continuation"
    """A ``prompt``/``completion`` record of two strings: ``continuation`` (plain text, no chat
    template, as TRL trains it) or ``chat`` (a user and an assistant message)."""

    def __post_init__(self):
        bad = {k: v for k, v in self.roles.items() if v not in ROLES}
        if bad:
            name, role = next(iter(bad.items()))
            raise ValueError(f"roles: {name!r} maps to {role!r}; expected one of {_ROLE_LIST}")
        unknown = sorted(set(self.metadata) - set(META_FIELDS))
        if unknown:
            raise ValueError(f"metadata: {unknown[0]!r} is not a metadata field; expected one of "
                             f"{', '.join(META_FIELDS)}")
        if self.prompt_completion not in PROMPT_COMPLETION:
            raise ValueError(f"prompt_completion: expected one of {', '.join(PROMPT_COMPLETION)}, got "
                             f"{self.prompt_completion!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {', '.join(map(str, LAYOUTS))}, got {self.layout!r}")
        object.__setattr__(self, "ignore", tuple(self.ignore))

    @property
    def is_default(self) -> bool:
        return self == _DEFAULT_COLUMNS

    @property
    def maps_messages(self) -> bool:
        """Whether messages are read with this entry's keys and speaker names."""
        return bool(self.field_messages or self.role_key or self.content_key or self.roles or self.function_tag)

    @property
    def instruction(self) -> bool:
        """Whether records are instruction records named by this entry (``prompt``/``response``)."""
        return bool(self.prompt or self.response or self.query)


PROMPT_COMPLETION = ("continuation", "chat")
"""``Columns.prompt_completion``: what a prompt/completion record of two strings means."""
LAYOUTS = (None, "chosen")
"""``Columns.layout``: ``None`` refuses preference records, ``chosen`` trains their chosen answer."""


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


def detect_format(row: dict[str, Any], columns: Columns | None = None) -> str:
    """The layout of ``row``: ``openai``, ``sharegpt``, ``alpaca``, ``prompt_completion``, or
    ``mapped`` (the messages sit in ``columns.field_messages``; instruction records named by
    ``columns.prompt``/``response`` are ``alpaca``).

    >>> detect_format({"conversations": [{"from": "human", "value": "hi"}]})
    'sharegpt'
    """
    if columns is not None and columns.field_messages:
        if field_value(row, columns.field_messages) is None:
            raise RecordError("bad_messages", f"expected a list of messages in {columns.field_messages!r} "
                              f"(the entry's field_messages), got {_kind(field_value(row, columns.field_messages))}"
                              f"; record keys: {_keys(row)}; fix: fill it in, drop the record or correct "
                              "field_messages", field=columns.field_messages)
        return "mapped"
    if columns is not None and columns.instruction:
        return "alpaca"
    has_messages, has_conversations = row.get("messages") is not None, row.get("conversations") is not None
    if has_messages and has_conversations:
        raise RecordError("ambiguous_layout", "the record has both 'messages' and 'conversations'; "
                          "expected one list of messages; fix: drop one of them, or name the one to "
                          "read with the data entry's field_messages", field="messages")
    if has_messages:
        return "openai"
    if has_conversations:
        return "sharegpt"
    if row.get("instruction") is not None and "output" in row:
        return "alpaca"
    if row.get("prompt") is not None and "completion" in row:
        return "prompt_completion"
    for key, what in (("messages", "a list of messages"), ("conversations", "a list of messages"),
                      ("prompt", "a string or a list of messages"), ("instruction", "a string")):
        if key in row and row[key] is None:  # a column of a table where this row has none
            raise RecordError("bad_messages", f"expected {what}, got null; fix: fill it in or "
                              "drop the record", field=key)
    if row.get("instruction") is not None:
        if "response" in row:
            raise RecordError("missing_field", "an instruction record with 'response' instead of 'output' "
                              "(the Dolly layout: instruction/context/response); fix: map it in the data "
                              "entry: columns: {prompt: instruction, query: context, response: response, "
                              "task: category} (validate: --column prompt=instruction --column "
                              "query=context --column response=response)", field="output")
        hint = (" (its responses sit under 'instances', as in Stanford Alpaca's seed tasks: write "
                "one record per instance with its input and output)" if "instances" in row else "")
        raise RecordError("missing_field", "an Alpaca record ('instruction') without 'output'; "
                          f"expected 'output' with the response to train on{hint}; fix: add the "
                          "response as 'output', map the field that holds it (columns: {response: "
                          "FIELD}) or drop the record", field="output")
    if row.get("prompt") is not None:
        raise RecordError("missing_field", "a prompt/completion record without 'completion'; "
                          "expected 'completion' with the response to train on; fix: add "
                          "'completion', map the field that holds it (columns: {prompt: prompt, "
                          "response: FIELD}) or drop the record", field="completion")
    pair = next(((q, a) for q, a in _QA_PAIRS if isinstance(row.get(q), str) and a in row), None)
    hint = (f"; this looks like a {pair[0]}/{pair[1]} file: map it with the data entry's columns: "
            f"{{prompt: {pair[0]}, response: {pair[1]}}} (validate: --column prompt={pair[0]} "
            f"--column response={pair[1]})" if pair else
            "; or map the fields in the data entry: columns: {prompt, query, response, system, history} "
            "for instruction records, field_messages/role_key/content_key/roles for message lists")
    raise RecordError(
        "unknown_format",
        f"no conversation found (record keys: {_keys(row)}); expected a 'messages' list (OpenAI), "
        "'conversations' with from/value (ShareGPT), 'instruction'/'output' (Alpaca) or "
        f"'prompt'/'completion'; fix: rename the fields{hint}")


_QA_PAIRS = (("question", "answer"), ("query", "response"), ("question", "response"), ("input", "output"),
             ("prompt", "response"), ("problem", "solution"))


def field_value(row: dict[str, Any], path: str) -> Any:
    """The value at ``path`` in ``row``: a top-level key, or a dotted path into nested objects.

    >>> field_value({"body": {"messages": [1]}}, "body.messages"), field_value({"a.b": 1}, "a.b")
    ([1], 1)
    """
    if path in row or "." not in path:
        return row.get(path)
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def to_conversation(row: dict[str, Any], origin: Origin | None = None,
                    columns: Columns | None = None) -> Conversation:
    """Adapt one raw record to a ``Conversation``; raises ``RecordError`` naming the field.

    >>> to_conversation({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
    ...     {"type": "text", "value": "b"}]}, {"role": "assistant", "content": "c"}]}).messages[0].content
    'ab'
    """
    cols = columns if columns is not None and not columns.is_default else None
    if cols is None:
        chosen_key, rejected_key, system_key, tools_key, msg_cols = "chosen", "rejected", "system", "tools", None
    else:
        chosen_key, rejected_key = cols.chosen or "chosen", cols.rejected or "rejected"
        system_key, tools_key = cols.system or "system", cols.tools or "tools"
        msg_cols = cols if cols.maps_messages else None
    chosen = None
    if chosen_key in row or rejected_key in row:
        chosen = _preference(row, chosen_key, rejected_key, cols)
        row = {k: v for k, v in row.items() if k not in (chosen_key, rejected_key)}
    fmt = detect_format(row, cols) if chosen is None else _prompt_format(row, cols, chosen)
    if fmt == "implicit_prompt":  # a messages list equal to the chosen conversation is a copy of it
        row = {k: v for k, v in row.items() if not (k in ("messages", "conversations") and v == chosen)}
    if fmt == "openai":
        messages = _message_list(row["messages"], "messages", sharegpt=False, columns=msg_cols)
        if row.get(system_key) not in (None, ""):
            messages = _top_system(row, system_key, messages)
    elif fmt == "mapped":
        messages = _system_prefix(row, system_key) + _message_list(
            field_value(row, cols.field_messages), cols.field_messages, sharegpt=False, columns=msg_cols)
    elif fmt == "sharegpt":
        messages = _system_prefix(row, system_key) + _message_list(
            row["conversations"], "conversations", sharegpt=True, columns=msg_cols)
    elif fmt == "alpaca":
        messages = _alpaca(row, cols, chosen is None)
    elif fmt == "prompt_completion":
        messages = _prompt_completion(row, msg_cols, chosen is None)
    else:  # a preference record whose chosen answer holds the whole conversation
        messages = []
    if chosen is not None:
        messages += _chosen_messages(chosen, chosen_key, len(messages), msg_cols)
    _check_unicode(messages, fmt)
    meta = _metadata(row, cols)
    extra = _extra(row, fmt, cols)
    if extra:
        _check_unicode_fields({**meta, **extra})
        _account(row, extra, messages, cols, fmt)
    else:
        _check_unicode_fields(meta)
    tools = row.get(tools_key) if cols is None else field_value(row, tools_key)
    tools = tools_text(tools, tools_key) if tools is not None else None
    plain = fmt == "prompt_completion" and _plain(row, chosen, messages, tools, cols)
    return Conversation(messages=tuple(messages), tools=tools, plain=plain, extra=extra, origin=origin, **meta)


def _plain(row: dict[str, Any], chosen: Any, messages: list[Message], tools: str | None,
           cols: Columns | None) -> bool:
    """Whether a prompt/completion record is plain text: two strings under ``continuation``."""
    answer = row.get("completion") if chosen is None else chosen
    if not (isinstance(row["prompt"], str) and isinstance(answer, str)):
        return False
    if cols is not None and cols.prompt_completion == "chat":
        return False
    if len(messages) != 2 or tools:
        what = "a system prompt" if len(messages) != 2 else "tools"
        raise RecordError("plain_with_context", f"a prompt/completion record of two strings is plain text "
                          f"(a continuation, no chat template), which has no place for {what}; fix: read it "
                          "as a chat exchange (the data entry's prompt_completion: chat, validate "
                          "--prompt-completion chat) or drop the field",
                          field="system" if len(messages) != 2 else "tools")
    return True


def _name(cols: Columns | None, key: str) -> str:
    """The record field the entry names for ``key`` (``system``, ``tools``, ...), or ``key`` itself."""
    return (getattr(cols, key) if cols is not None else None) or key


def _top_system(row: dict[str, Any], key: str, messages: list[Message]) -> list[Message]:
    """A top-level system prompt beside a messages list becomes its first message."""
    if messages and messages[0].role == "system":
        if messages[0].content == row[key]:
            return messages  # the same prompt twice: one system message
        raise RecordError("ambiguous_system", f"a top-level {key!r} and a system message in the list; "
                          "expected one system prompt; fix: drop one of them", field=key)
    return _system_prefix(row, key) + messages


def _preference(row: dict[str, Any], chosen_key: str, rejected_key: str, cols: Columns | None) -> Any:
    """The chosen answer of a preference record under ``layout: chosen``; ``RecordError`` otherwise."""
    if cols is None or cols.layout != "chosen":
        both = chosen_key in row and rejected_key in row
        what = (f"a preference record ({chosen_key!r} and {rejected_key!r}: two answers to one prompt, "
                "for DPO or reward-model training)" if both else
                f"a record with {(chosen_key if chosen_key in row else rejected_key)!r}, a field of "
                "preference data")
        raise RecordError("preference_record", f"{what}; SFT trains one answer, and read as it is the "
                          "record would train neither answer (only its prompt's earlier turns, if any); fix: train the prompt "
                          "and the chosen answer with the data entry's layout: chosen (validate: --layout "
                          "chosen), or use a preference trainer", field=chosen_key)
    if row.get(chosen_key) in (None, "", []):
        raise RecordError("missing_field", f"layout: chosen, but the record has no {chosen_key!r} answer; "
                          "fix: fill it in or drop the record", field=chosen_key)
    return row[chosen_key]


def _prompt_format(row: dict[str, Any], cols: Columns | None, chosen: Any) -> str:
    """The layout of a preference record's prompt (its chosen answer set aside)."""
    if isinstance(chosen, list) and chosen and isinstance(chosen[0], dict) and not (
            {chosen[0].get("role"), chosen[0].get("from")} & {"assistant", "gpt"}):
        return "implicit_prompt"  # the chosen messages are the whole conversation (TRL's implicit prompt)
    if cols is not None and cols.field_messages:
        return detect_format(row, cols)
    if cols is not None and cols.instruction or row.get("instruction") is not None:
        return "alpaca"
    if row.get("prompt") is not None:
        return "prompt_completion"
    if row.get("messages") is not None or row.get("conversations") is not None:
        return detect_format(row, cols)
    return "implicit_prompt"


def _chosen_messages(chosen: Any, key: str, offset: int, cols: Columns | None) -> list[Message]:
    """The chosen answer: a string, one message, or messages (the whole conversation when no
    prompt precedes them, as TRL's implicit-prompt preference records are)."""
    if isinstance(chosen, str):
        return [Message("assistant", chosen)]
    if isinstance(chosen, dict):
        return [_message(chosen, 0, key, offset, False, cols)]
    return _message_list(chosen, key, sharegpt=False, offset=offset, columns=cols)


def _check_unicode(messages: list[Message], fmt: str) -> None:
    """Refuse a record whose text holds an unpaired surrogate (see ``unpaired_surrogate``), naming
    the message."""
    for i, m in enumerate(messages):
        if m.reasoning is None and not m.tool_calls and m.content.isascii():
            continue  # ASCII holds no surrogate
        texts = [("content", m.content)]
        if m.reasoning is not None:
            texts.append(("reasoning_content", m.reasoning))
        texts += [(f"tool_calls[{j}]", c.name + c.arguments) for j, c in enumerate(m.tool_calls)]
        for key, text in texts:
            at = unpaired_surrogate(text)
            if at is None:
                continue
            field = f"messages[{i}].{key}" if fmt == "openai" else f"message {i} ({m.role}) {key}"
            raise RecordError(
                "invalid_text", f"unpaired surrogate U+{ord(text[at]):04X} at character {at}: "
                "not valid Unicode text, no tokenizer can encode it; fix: repair the \\u escape (a surrogate "
                "pair needs both halves)", field=field, message_index=i)


def _check_unicode_fields(fields: dict[str, Any]) -> None:
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


def _message_list(items: Any, field: str, sharegpt: bool, offset: int = 0,
                  columns: Columns | None = None) -> list[Message]:
    if not isinstance(items, list):
        raise RecordError("bad_messages", f"expected a list of messages, got {_kind(items)}; "
                          "fix: give the turns as a JSON list", field=field)
    return [_message(m, i, field, offset, sharegpt, columns) for i, m in enumerate(items)]


def _message(m: Any, pos: int, base: str, offset: int, sharegpt: bool,
             columns: Columns | None = None) -> Message:
    # Field names are formatted only on error: this runs once per message of every record.
    if type(m) is not dict:
        raise RecordError("bad_message", f"expected a message object, got {_kind(m)}",
                          field=f"{base}[{pos}]", message_index=pos + offset)
    role = m.get("role")
    if len(m) == 2 and columns is None and type(role) is str and role in _ROLE_SET and type(m.get("content")) is str:
        return Message(role, m["content"])  # the usual message: role and text, nothing else to check
    calls: tuple[ToolCall, ...] = ()
    if columns is not None:
        role, content, content_key = _mapped_message(m, pos, base, offset, columns)
        if role == "function_call":  # the value is the call as JSON
            role, calls = "assistant", _sharegpt_calls(content, f"{base}[{pos}].{content_key}", pos + offset)
            content = ""
    elif "role" not in m and ("from" in m or sharegpt):
        if m.get("from") == "function_call":  # Glaive-style: the value is the call as JSON
            role = "assistant"
            calls = _sharegpt_calls(m.get("value"), f"{base}[{pos}].value", pos + offset)
            content, content_key = "", "value"
        else:
            role = _sharegpt_role(m.get("from"), pos + offset, f"{base}[{pos}]", m)
            content, content_key = m.get("value"), "value"
    else:
        role = m.get("role")
        if role not in ROLES:
            role = _sharegpt_role(role, pos + offset, f"{base}[{pos}]", m, key="role")
        content, content_key = m.get("content"), "content"
    reasoning = _reasoning(m, f"{base}[{pos}]", pos + offset)
    if m.get("tool_calls"):
        calls = _tool_calls(m["tool_calls"], f"{base}[{pos}].tool_calls", pos + offset)
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
        what = "tool_calls" if calls else "reasoning_content"
        raise RecordError("bad_message", f"only assistant messages make tool calls or carry reasoning, "
                          f"this one is {role!r}; fix: move the {what} to the assistant message",
                          field=f"{base}[{pos}].{what}", message_index=pos + offset)
    tool_call_id = _optional_str(m, "tool_call_id", f"{base}[{pos}]", pos + offset)
    name = _optional_str(m, "name", f"{base}[{pos}]", pos + offset) if role == "tool" else None
    train = m.get("train")
    if train is not None and type(train) is not bool:
        raise RecordError("bad_train", f"expected true or false, got {train!r}; fix: use a JSON "
                          "boolean (or leave the field out)", field=f"{base}[{pos}].train",
                          message_index=pos + offset)
    weight = _message_weight(m, role, f"{base}[{pos}]", pos + offset)
    return Message(role, content, train, weight, calls, tool_call_id if role == "tool" else None, name, reasoning)


def _message_weight(m: dict, role: str, base: str, index: int) -> float | None:
    """``weight``, also spelt ``loss_weight`` (LLaMA-Factory): the loss weight of an assistant
    message (0 trains nothing). Other messages are never trained, so they may only say 0."""
    weight = None
    for key in ("weight", "loss_weight"):
        value = m.get(key)
        if value is None:
            continue
        value = _weight(value, f"{base}.{key}", index)
        if weight is not None and value != weight:
            raise RecordError("bad_weight", f"weight given twice with different values ({weight:g} and "
                              f"{value:g}); fix: keep one", field=f"{base}.{key}", message_index=index)
        if role != "assistant" and value > 0:
            raise RecordError("bad_weight", f"a {role} message with {key} {value:g}: only assistant messages "
                              f"are trained, so its text would not be; fix: set {key} to 0 (or leave it out), "
                              "or make the text an assistant turn", field=f"{base}.{key}", message_index=index)
        weight = value
    return weight


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
        try:
            parsed = json.loads(value, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError) as e:
            raise RecordError("bad_arguments", f"{what} are not valid JSON ({e}); expected a JSON object "
                              "such as {\"city\": \"Oslo\"}; fix: repair the JSON", field=field,
                              message_index=index) from None
        if isinstance(parsed, dict):
            return value
        got = _kind(parsed)
    else:
        got = _kind(value)
    raise RecordError("bad_arguments", f"expected the {what} as a JSON object (or a string of one), got "
                      f"{got}; fix: give named arguments as an object", field=field, message_index=index)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


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
    cid = c.get("id", call_id)
    if cid is not None and type(cid) is not str:
        if type(cid) is not int:
            raise RecordError("bad_tool_call", f"expected the call id as a string, got {_kind(cid)}",
                              field=f"{field}.id", message_index=index)
        cid = str(cid)
    return ToolCall(fn["name"], arguments, cid)


def _tool_calls(items: Any, field: str, index: int) -> tuple[ToolCall, ...]:
    if not isinstance(items, list):
        raise RecordError("bad_tool_call", f"expected a list of tool calls, got {_kind(items)}", field=field,
                          message_index=index)
    return tuple(_call(c, f"{field}[{j}]", index) for j, c in enumerate(items))


def _sharegpt_calls(value: Any, field: str, index: int) -> tuple[ToolCall, ...]:
    """Glaive-style ``function_call`` turn: ``{"name", "arguments"}`` JSON (or a list of them)."""
    if isinstance(value, str):
        try:
            value = json.loads(value, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError) as e:
            raise RecordError("bad_arguments", f"the function_call is not valid JSON ({e}); expected "
                              "{\"name\": ..., \"arguments\": {...}}; fix: repair the JSON", field=field,
                              message_index=index) from None
    calls = value if isinstance(value, list) else [value]
    return tuple(_call(c, field if len(calls) == 1 else f"{field}[{j}]", index) for j, c in enumerate(calls))


def tools_text(value: Any, field: str = "tools") -> str | None:
    """The record's tool schemas as JSON text (``None`` when there are none)."""
    if value is None or value == "" or value == []:
        return None
    text = value if isinstance(value, str) else None
    if text is not None:
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError) as e:
            raise RecordError("bad_tools", f"not valid JSON ({e}); expected a list of function definitions; "
                              "fix: repair the JSON", field=field) from None
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


def _mapped_message(m: dict, pos: int, base: str, offset: int, columns: Columns) -> tuple[str, Any, str]:
    """``(role, content, content key)`` of a message read with the entry's ``columns``."""
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
    return role, m.get(content_key), content_key


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
        fix = (f"fix: map it in the data entry's roles (e.g. roles: {{{value!r}: assistant}}) or "
               "rename the speaker")
    raise RecordError("unknown_role", f"{what}; {fix}", field=f"{field}.{key}", message_index=index)


def _join_parts(content: Any, field: str, index: int) -> tuple[str, str | None, tuple[ToolCall, ...]]:
    """Join content parts into one string: OpenAI's ``{"type": "text", "text": ...}`` and
    LLaMA-Factory's ``{"type": "text", "value": ...}``.

    Returns ``(text, reasoning, calls)``: parts of type ``reasoning``/``thinking`` and
    ``tool_call`` (LLaMA-Factory's layout, the text under ``value``) are reasoning and calls.
    """
    if isinstance(content, list):
        texts, reasoning, calls = [], [], []
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
                continue
            kind = part.get("type", "text") if isinstance(part, dict) else None
            text = part.get("text", part.get("value")) if isinstance(part, dict) else None
            if kind == "text" and isinstance(text, str):
                texts.append(text)
            elif kind in ("reasoning", "thinking") and isinstance(text, str):
                reasoning.append(text)
            elif kind == "tool_call":
                calls.extend(_sharegpt_calls(text, f"{field}[{j}].value", index))
            elif kind in ("text", "reasoning", "thinking"):
                raise RecordError(
                    "non_string_content", f"{kind} part without text: its 'text' is {_kind(text)} "
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
        return "".join(texts), ("".join(reasoning) if reasoning else None), tuple(calls)
    raise RecordError("non_string_content", f"expected a string, got {_kind(content)}; fix: give "
                      "the message text as a string", field=field, message_index=index)


MAX_WEIGHT = 1e6  # larger weights overflow float32 losses (1e39 is inf) long before they mean more


def _weight(value: Any, field: str, index: int) -> float:
    if type(value) is bool or not isinstance(value, (int, float)):
        raise RecordError("bad_weight", f"expected a number >= 0, got {value!r}; fix: use a "
                          "JSON number such as 1.0 (0 trains nothing)", field=field,
                          message_index=index)
    value = float(value)
    if not math.isfinite(value) or not 0 <= value <= MAX_WEIGHT:
        raise RecordError("bad_weight", f"expected a finite number >= 0 and <= {MAX_WEIGHT:g}, got {value!r}; fix: "
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


def _alpaca(row: dict[str, Any], cols: Columns | None = None, require_response: bool = True) -> list[Message]:
    """System, earlier turns (``history``), the instruction (and input) and the response."""
    messages = _system_prefix(row, _name(cols, "system"))
    messages += _history(row, _name(cols, "history"), len(messages))
    n = len(messages)
    parts = []
    for key in (_name(cols, "prompt") if cols is not None and cols.prompt else "instruction",
                _name(cols, "query") if cols is not None and cols.query else "input"):
        value = field_value(row, key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise RecordError("non_string_content", f"expected a string, got {_kind(value)}",
                              field=key, message_index=n)
        parts.append(value)
    messages.append(Message("user", (cols.query_join if cols is not None else "\n\n").join(parts)))
    if not require_response:
        return messages
    key = cols.response if cols is not None and cols.response else "output"
    output = field_value(row, key)
    if not isinstance(output, str):
        what = "no such field" if output is None and key not in row else f"got {_kind(output)}"
        raise RecordError("non_string_content", f"expected the response as a string, {what}",
                          field=key, message_index=n + 1)
    return messages + [Message("assistant", output)]


def _history(row: dict[str, Any], key: str, offset: int) -> list[Message]:
    """Earlier turns given as ``[[user, assistant], ...]`` (LLaMA-Factory's Alpaca ``history``).

    >>> [(m.role, m.content) for m in _history({"history": [["hi", "hello"]]}, "history", 0)]
    [('user', 'hi'), ('assistant', 'hello')]
    """
    pairs = field_value(row, key)
    if pairs is None or pairs == []:
        return []
    if not isinstance(pairs, list):
        raise RecordError("bad_history", f"expected a list of [user, assistant] pairs, got {_kind(pairs)}",
                          field=key, message_index=offset)
    out = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise RecordError("bad_history", f"expected a pair of strings [user, assistant], got "
                              f"{_kind(pair) if not isinstance(pair, list) else f'a list of {len(pair)}'}; "
                              "fix: give each earlier turn as [prompt, response]",
                              field=f"{key}[{i}]", message_index=offset + 2 * i)
        out += [Message("user", pair[0]), Message("assistant", pair[1])]
    return out


def _prompt_completion(row: dict[str, Any], columns: Columns | None = None,
                       require_completion: bool = True) -> list[Message]:
    messages = _system_prefix(row, "system")
    prompt, completion = row["prompt"], row.get("completion")
    if isinstance(prompt, str):
        messages.append(Message("user", prompt))
    elif isinstance(prompt, list):
        messages += _message_list(prompt, "prompt", sharegpt=False, offset=len(messages), columns=columns)
    else:
        raise RecordError("non_string_content", f"expected a string or a messages list, got {_kind(prompt)}",
                          field="prompt", message_index=len(messages))
    if not require_completion:
        return messages
    if isinstance(completion, str):
        messages.append(Message("assistant", completion))
    elif isinstance(completion, list):
        messages += _message_list(completion, "completion", sharegpt=False, offset=len(messages),
                                  columns=columns)
    else:
        raise RecordError("non_string_content", f"expected a string or a messages list, got "
                          f"{_kind(completion)}", field="completion", message_index=len(messages))
    return messages


def _metadata(row: dict[str, Any], cols: Columns | None = None) -> dict[str, Any]:
    meta = row.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise RecordError("bad_metadata", f"expected an object, got {_kind(meta)}", field="meta")
    out: dict[str, Any] = {}
    mapped = cols.metadata if cols is not None else None
    for key in META_FIELDS:
        value = row.get(key)
        if mapped and key in mapped:
            named = field_value(row, mapped[key])
            if value is None:
                value = named
            elif named is not None and named != value:
                raise RecordError("bad_metadata", f"given twice with different values ({value!r} as {key!r}, "
                                  f"{named!r} as {mapped[key]!r}); fix: keep one", field=mapped[key])
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


def _extra(row: dict[str, Any], fmt: str, columns: Columns | None = None) -> dict[str, Any]:
    consumed = _CONSUMED[fmt] if columns is None else _consumed(row, fmt, columns)
    extra = {k: v for k, v in row.items() if k not in consumed}
    meta = row.get("meta")
    if meta:
        extra = {**{k: v for k, v in meta.items() if k not in META_FIELDS}, **extra}
    return extra


def _consumed(row: dict[str, Any], fmt: str, cols: Columns | None) -> frozenset[str]:
    """The top-level fields a layout reads (with the entry's names, the first part of a dotted path)."""
    if cols is None:
        return _CONSUMED[fmt]
    names = [cols.field_messages, cols.system, cols.tools, *cols.metadata.values()]
    if fmt == "alpaca":
        names += [cols.prompt or "instruction", cols.query or "input", cols.response or "output",
                  cols.history or "history"]
    return _CONSUMED[fmt] | {n if n in row else n.split(".")[0] for n in names if n}

KNOWN_METADATA = (*META_FIELDS, "meta", "category", "uuid", "prompt_id", "lang", "language", "model")
"""Top-level fields every layout accepts as metadata (kept in ``Conversation.extra``, not trained):
sftlab's metadata, ``meta``, and a few that public data sets carry to describe a record rather than
to hold its content (Dolly's ``category``, UltraChat's ``prompt_id``, ...)."""
_KNOWN_METADATA = frozenset(KNOWN_METADATA)
MULTIMODAL_FIELDS = ("images", "videos", "audios")
"""Fields people fill for multimodal training; sftlab trains on text only."""


def _account(row: dict[str, Any], extra: dict[str, Any], messages: list[Message], cols: Columns | None,
             fmt: str) -> None:
    """Every top-level field is read by the layout, known metadata, declared ignored, empty, or a copy
    of a message's text; otherwise the record is refused naming the field and how to keep it."""
    ignore = cols.ignore if cols is not None else ()
    for key in row:
        if key not in extra or key in _KNOWN_METADATA or key in ignore:
            continue
        value = row[key]
        if value is None or value == "" or value == [] or value == {}:
            continue  # a column of a table that this record does not fill
        if isinstance(value, str) and any(m.content == value for m in messages):
            continue  # a copy of text the conversation holds (UltraChat's prompt beside its messages)
        ignore_hint = f"declare it ignored (the data entry's ignore_fields: [{key}], validate --ignore-field {key})"
        if key in MULTIMODAL_FIELDS:
            raise RecordError("unused_field", f"the record has {key} and sftlab trains on text only: its "
                              f"text would be trained without them; fix: {ignore_hint} to train the text "
                              "alone, or drop the record", field=key)
        if key in ("label", "kto_tag") and isinstance(value, bool):
            raise RecordError("unused_field", f"field {key!r} is a KTO label ({str(value).lower()}: the answer is "
                              f"{'desirable' if value else 'undesirable'}), and SFT trains every answer alike; "
                              f"fix: keep the records labelled true and {ignore_hint}, or use a KTO trainer",
                              field=key)
        layout = {"mapped": "mapped messages", "alpaca": "instruction"}.get(fmt, fmt.replace("_", "/"))
        raise RecordError("unused_field", f"field {key!r} is not read by the {layout} layout and is not "
                          "metadata sftlab knows, so its content would be lost; fix: map it in the data "
                          "entry (columns, metadata), move it under 'meta', or " + ignore_hint, field=key)


def _keys(d: dict) -> str:
    return ", ".join(sorted(map(str, d))) or "none"


def _kind(value: Any) -> str:
    """A short description of a JSON value for error messages."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


_DEFAULT_COLUMNS = Columns()
