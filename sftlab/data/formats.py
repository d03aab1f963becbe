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
  human/user, gpt/assistant/model, system/developer, tool/function/observation/tool_response, and ``function_call``
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
``Conversation.extra``. Every key of a message is read, empty, message metadata or declared
ignored, or the record is refused naming it (``sftlab.data.message_fields``). Checks that need only the row (role names, content types, ``train`` and
``weight`` values, metadata types) happen here; checks on the conversation as a whole (turn order,
an assistant message to train on) live in ``sftlab.data.loading``.

Example::

    >>> c = to_conversation({"instruction": "Add 2 and 2.", "output": "4", "meta": {"task": "math"}})
    >>> [(m.role, m.content) for m in c.messages], c.task
    ([('user', 'Add 2 and 2.'), ('assistant', '4')], 'math')
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sftlab.data import dataset_layouts
from sftlab.data.conversation import ROLES, Conversation, Message, Origin
from sftlab.data.message_fields import message_list, read_message, tools_text
from sftlab.data.record_errors import RecordError, keys as _keys, kind as _kind
from sftlab.data.record_fields import (EXPECTED_VALUES, KNOWN_METADATA, META_FIELDS, MULTIMODAL_FIELDS, account,
                                       extra as extra_fields, field_value, metadata)
from sftlab.data.unicode_checks import check_tools_unicode, check_unicode, check_unicode_fields

__all__ = ["Columns", "RecordError", "detect_format", "to_conversation", "field_value", "tools_text", "META_FIELDS",
           "EXPECTED_VALUES", "KNOWN_METADATA", "MULTIMODAL_FIELDS", "PROMPT_COMPLETION", "LAYOUTS"]

_ROLE_LIST = ", ".join(ROLES)
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
    is dropped); ``ignore`` names fields the user declares unused (a message key as ``messages[].KEY``).

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
    """Fields declared unused: kept as metadata, never a reason to refuse the record. A top-level field
    by its name; a message key as the message list's field, ``[]`` and the key (``messages[].name``,
    ``conversations[].mask``, ``dialog[].mood`` under ``field_messages: dialog``)."""
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
        conversations = row["conversations"]
        return "turns" if type(conversations) is list and conversations and type(conversations[0]) is str else \
            "sharegpt"
    if row.get("instruction") is not None and "output" in row:
        return "alpaca"
    if row.get("prompt") is not None and "completion" in row:
        return "prompt_completion"
    named = dataset_layouts.detect(row)
    if named is not None:
        return named
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
    raise RecordError(
        "unknown_format",
        f"no conversation found (record keys: {_keys(row)}); expected a 'messages' list (OpenAI), "
        "'conversations' with from/value (ShareGPT), 'instruction'/'output' (Alpaca) or "
        f"'prompt'/'completion'; fix: rename the fields{_layout_hint(row)}")


def _layout_hint(row: dict[str, Any]) -> str:
    """How to map a record no layout reads: a message list under another name (LMSYS-Chat's
    ``conversation``), or a question/answer pair with its system prompt (OpenOrca's
    ``system_prompt``, ``question``, ``response``).

    >>> _layout_hint({"conversation": [{"role": "user", "content": "hi"}]})
    "; this looks like a message list under 'conversation': map it with the data entry's field_messages: conversation (validate: --field-messages conversation)"
    >>> _layout_hint({"system_prompt": "Be brief.", "question": "2+2?", "response": "4"})
    "; this looks like a question/response file: map it with the data entry's columns: {prompt: question, response: response, system: system_prompt} (validate: --column prompt=question --column response=response --column system=system_prompt)"
    """
    listed = next((k for k, v in row.items() if isinstance(v, list) and v and all(
        isinstance(m, dict) and ({"role", "content"} <= m.keys() or {"from", "value"} <= m.keys()) for m in v)), None)
    if listed is not None:
        return (f"; this looks like a message list under {listed!r}: map it with the data entry's field_messages: "
                f"{listed} (validate: --field-messages {listed})")
    named = dataset_layouts.hint(row)
    if named is not None:
        return named
    pair = next(((q, a) for q, a in _QA_PAIRS if isinstance(row.get(q), str) and a in row), None)
    if pair is None:
        return ("; or map the fields in the data entry: columns: {prompt, query, response, system, history} "
                "for instruction records, field_messages/role_key/content_key/roles for message lists")
    mapped = [("prompt", pair[0]), ("response", pair[1])]
    mapped += [("system", k) for k in _SYSTEM_NAMES if isinstance(row.get(k), str)][:1]
    return (f"; this looks like {'an' if pair[0][0] in 'aeiou' else 'a'} {pair[0]}/{pair[1]} file: map it with the data entry's columns: "
            f"{{{', '.join(f'{a}: {b}' for a, b in mapped)}}} (validate: "
            f"{' '.join(f'--column {a}={b}' for a, b in mapped)})")


_QA_PAIRS = (("question", "answer"), ("query", "response"), ("question", "response"), ("input", "output"),
             ("prompt", "response"), ("problem", "solution"), ("problem", "generated_solution"),
             ("inputs", "targets"))
_SYSTEM_NAMES = ("system_prompt", "system_message", "system")


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
        ignore: tuple[str, ...] = ()
    else:
        ignore = cols.ignore
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
    list_key = {"openai": "messages", "mapped": cols and cols.field_messages, "sharegpt": "conversations"}.get(fmt)
    if list_key is not None:
        messages = message_list(field_value(row, list_key), list_key, sharegpt=fmt == "sharegpt", columns=msg_cols,
                                ignore=ignore)
        if row.get(system_key) not in (None, ""):
            messages = _top_system(row, system_key, messages)
    elif fmt == "alpaca":
        messages = _alpaca(row, cols, chosen is None)
    elif fmt == "prompt_completion":
        messages = _prompt_completion(row, msg_cols, chosen is None, ignore)
    elif fmt in dataset_layouts.NAMED:
        messages, layout_tools = dataset_layouts.read(fmt, row, ignore)
        if fmt in ("turns", "exchanges") and row.get(system_key) not in (None, ""):
            messages = _top_system(row, system_key, messages)
    else:  # a preference record whose chosen answer holds the whole conversation
        messages = []
    if chosen is not None:
        messages += _chosen_messages(chosen, chosen_key, len(messages), msg_cols, ignore)
    check_unicode(messages, fmt)
    meta = metadata(row, cols)
    extra = extra_fields(row, fmt, cols)
    if extra:
        check_unicode_fields({**meta, **extra})
        account(row, extra, messages, cols, fmt)
    else:
        check_unicode_fields(meta)
    tools = row.get(tools_key) if cols is None else field_value(row, tools_key)
    tools = tools_text(tools, tools_key) if tools is not None else None
    if fmt == "glaive" and layout_tools is not None:
        if tools is not None:
            raise RecordError("ambiguous_tools", "function definitions in both the system prompt and tools; "
                              "expected one list of tools; fix: drop one of them", field=tools_key)
        tools = layout_tools
    check_tools_unicode(tools)
    plain = fmt == "prompt_completion" and _plain(row, chosen, messages, tools, cols)
    fields, keys = ((), ()) if fmt == "openai" and chosen is None and len(messages) == len(row["messages"]) else \
        _message_fields(row, fmt, cols, list_key, system_key, chosen_key, chosen, len(messages))  # messages[i] is right
    return Conversation(messages=tuple(messages), tools=tools, plain=plain, extra=extra, origin=origin,
                        fields=fields, keys=keys, **meta)


def _message_fields(row: dict[str, Any], fmt: str, cols: Columns | None, list_key: str | None, system_key: str,
                    chosen_key: str, chosen: Any, n: int) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """``Conversation.fields`` and ``keys``: where each of the ``n`` messages sits in ``row`` (``list_key``:
    the field of a message-list layout's list); empty where the layout does not map them one to one
    (calls merged into one turn, a transcript)."""
    def listed(key: str) -> list[str]:
        value = field_value(row, key)
        return [f"{key}[{j}]" for j in range(len(value))] if isinstance(value, list) else [key]

    system = [system_key] if isinstance(row.get(system_key), str) and row[system_key] != "" else []
    keys: tuple[tuple[str, str], ...] = ()
    if list_key is not None:
        out = listed(list_key)
        out = system + out if len(out) < n else out
        if fmt == "sharegpt" or fmt == "mapped" and cols.maps_messages:
            keys = (("role", (cols and cols.role_key) or ("from" if fmt == "sharegpt" else "role")),
                    ("content", (cols and cols.content_key) or ("value" if fmt == "sharegpt" else "content")))
    elif fmt == "alpaca":
        history = _name(cols, "history")
        pairs = field_value(row, history) or []
        out = system + [f"{history}[{i}][{j}]" for i in range(len(pairs)) for j in (0, 1)]
        out += [_name(cols, "prompt") if cols is not None and cols.prompt else "instruction"]
        out += [cols.response if cols is not None and cols.response else "output"]
    elif fmt in dataset_layouts.NAMED:
        out = system * (fmt in ("turns", "exchanges")) + dataset_layouts.fields(fmt, row, n)
    elif fmt == "prompt_completion":
        out = (["system"] if isinstance(row.get("system"), str) and row["system"] != "" else [])
        out += listed("prompt") + listed("completion")
    else:
        out = []
    if chosen is not None:
        out = out[:len(out) - (fmt != "implicit_prompt" and fmt in ("alpaca", "prompt_completion"))]
        out += listed(chosen_key) if isinstance(chosen, list) else [chosen_key] * (n - len(out))
    return (tuple(out), keys) if len(out) == n else ((), ())


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


def _chosen_messages(chosen: Any, key: str, offset: int, cols: Columns | None,
                     ignore: tuple[str, ...] = ()) -> list[Message]:
    """The chosen answer: a string, one message, or messages (the whole conversation when no
    prompt precedes them, as TRL's implicit-prompt preference records are)."""
    if isinstance(chosen, str):
        turns = transcript_turns(chosen) if offset == 0 else None
        return [Message(role, text) for role, text in turns] if turns else [Message("assistant", chosen)]
    if isinstance(chosen, dict):
        return [read_message(chosen, 0, key, offset, False, cols, ignore)]
    return message_list(chosen, key, sharegpt=False, offset=offset, columns=cols, ignore=ignore)


_TRANSCRIPT_TURN = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant): ?")


def transcript_turns(text: str) -> list[tuple[str, str]] | None:
    """The turns of a conversation written as one transcript, ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``
    (Anthropic's HH-RLHF ``chosen``/``rejected``), or ``None`` when ``text`` is not one (it must
    open with a Human turn and hold an Assistant turn).

    >>> transcript_turns("\\n\\nHuman: Hi there\\n\\nAssistant: Hello!\\n\\nHuman: Bye\\n\\nAssistant: Bye.")
    [('user', 'Hi there'), ('assistant', 'Hello!'), ('user', 'Bye'), ('assistant', 'Bye.')]
    >>> transcript_turns("Human: is a word.") is None
    True
    """
    parts = _TRANSCRIPT_TURN.split(text)
    if len(parts) < 5 or parts[0] != "" or parts[1] != "Human" or "Assistant" not in parts[1::2]:
        return None
    return [("user" if who == "Human" else "assistant", said) for who, said in zip(parts[1::2], parts[2::2])]


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
                       require_completion: bool = True, ignore: tuple[str, ...] = ()) -> list[Message]:
    messages = _system_prefix(row, "system")
    prompt, completion = row["prompt"], row.get("completion")
    if isinstance(prompt, str):
        messages.append(Message("user", prompt))
    elif isinstance(prompt, list):
        messages += message_list(prompt, "prompt", sharegpt=False, offset=len(messages), columns=columns,
                                  ignore=ignore)
    else:
        raise RecordError("non_string_content", f"expected a string or a messages list, got {_kind(prompt)}",
                          field="prompt", message_index=len(messages))
    if not require_completion:
        return messages
    if isinstance(completion, str):
        messages.append(Message("assistant", completion))
    elif isinstance(completion, list):
        messages += message_list(completion, "completion", sharegpt=False, offset=len(messages),
                                  columns=columns, ignore=ignore)
    else:
        raise RecordError("non_string_content", f"expected a string or a messages list, got "
                          f"{_kind(completion)}", field="completion", message_index=len(messages))
    return messages


_DEFAULT_COLUMNS = Columns()
