"""The conversation record: messages plus metadata, as every later stage sees it.

A record arrives in one of several row formats (OpenAI ``messages``, ShareGPT,
Alpaca, prompt/completion); ``sftlab.data.formats`` turns each into a ``Conversation``
and ``sftlab.data.loading`` checks it. Everything after that point works on these
frozen values only.

Tool calls, tool schemas and reasoning are content too. Tool-call arguments and the record's
tool schemas are kept as JSON *text* (``ToolCall.arguments``, ``Conversation.tools``), never as
parsed objects: a table reader (Parquet, ``datasets``) would otherwise unify differently shaped
objects of different rows into one struct type, filling absent keys with nulls or coercing
types. Text survives every reader byte for byte; it is parsed only where it is rendered.

Example::

    >>> c = Conversation(messages=(Message("user", "2+2?"), Message("assistant", "4")), id="a1")
    >>> [m.role for m in c.messages], c.assistant_indices
    (['user', 'assistant'], (1,))
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ToolCall:
    """One function call an assistant message makes.

        >>> ToolCall("get_weather", '{"city": "Oslo"}', id="call_1").to_dict()["function"]
        {'name': 'get_weather', 'arguments': '{"city": "Oslo"}'}
    """
    name: str
    arguments: str
    """The arguments as JSON text of an object: as the record gave it when it was a string,
    serialised (``ensure_ascii=False``) when it was an object."""
    id: str | None = None

    def arguments_value(self) -> dict[str, Any]:
        """The arguments parsed: what a chat template receives (transformers' convention)."""
        return json.loads(self.arguments)

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI layout, arguments as JSON text."""
        d: dict[str, Any] = {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return {"id": self.id, **d} if self.id is not None else d


@dataclass(frozen=True)
class Message:
    role: str
    """One of ``system``, ``user``, ``assistant``, ``tool``."""
    content: str
    """The text of the message, exactly as the record gave it."""
    train: bool | None = None
    """Per-message override: ``False`` never trains this message, ``True`` trains an assistant
    message even under ``last_turn_only``. ``None`` follows the encoding options."""
    weight: float | None = None
    """Loss weight (>= 0) of this message's trained tokens; ``None`` means 1.0."""
    tool_calls: tuple[ToolCall, ...] = ()
    """Assistant messages: the function calls it makes (model output, trained like content)."""
    tool_call_id: str | None = None
    """Tool messages: the ``id`` of the call this is the result of."""
    name: str | None = None
    """Tool messages: the name of the function whose result this is."""
    reasoning: str | None = None
    """Assistant messages: the reasoning (thinking) before the answer (``reasoning_content``)."""


@dataclass(frozen=True)
class Origin:
    """Where a record came from, for error messages and the quarantine file."""
    file: str
    line: int | None = None
    """1-based line for JSONL; 1-based element index for JSON arrays; row index + 1 otherwise."""


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    id: str | None = None
    task: str | None = None
    slice: str | None = None
    source: str | None = None
    license: str | None = None
    policy_category: str | None = None
    expected: str | None = None
    """``refuse`` marks a refusal demonstration, ``comply`` a benign contrast; ``None`` otherwise."""
    tools: str | None = None
    """The functions the assistant may call: JSON text of a list of JSON-schema function
    definitions (OpenAI ``{"type": "function", "function": {...}}`` or bare ``{"name", ...}``)."""
    plain: bool = False
    """A prompt/completion record of two strings read as plain text (``prompt_completion:
    continuation``): one user message (the prompt) and one assistant message (the completion),
    encoded without a chat template as the prompt's tokens, the completion's and the eos token."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Any other fields of the record, kept as they were."""
    origin: Origin | None = field(default=None, compare=False, hash=False)
    fields: tuple[str, ...] = field(default=(), compare=False, hash=False)
    """Per message, where the record holds it (``conversations[2]``, ``system``, ``output``); empty
    where that is not known, and then messages are named ``messages[i]``."""
    keys: tuple[tuple[str, str], ...] = field(default=(), compare=False, hash=False)
    """The record's names of a listed message's ``role`` and ``content`` (ShareGPT: ``from``, ``value``)."""

    def where(self, i: int, key: str = "") -> str:
        """The record's own name of message ``i`` (and its ``key``), for a reason that points into the file.

        >>> c = Conversation((Message("system", "s"), Message("user", "u")), fields=("system", "conversations[0]"),
        ...                  keys=(("role", "from"), ("content", "value")))
        >>> c.where(0, "content"), c.where(1, "role"), Conversation(()).where(3, "role")
        ('system', 'conversations[0].from', 'messages[3].role')
        """
        base = self.fields[i] if i < len(self.fields) else f"messages[{i}]"
        if not key or not base.endswith("]") or base.count("[") > 1:  # a text field, or a history pair's text
            return base
        return f"{base}.{dict(self.keys).get(key, key)}"

    @property
    def assistant_indices(self) -> tuple[int, ...]:
        return tuple(i for i, m in enumerate(self.messages) if m.role == "assistant")

    def tool_list(self) -> list[dict[str, Any]]:
        """The tool schemas parsed (empty without tools): what a chat template's ``tools=`` gets."""
        return json.loads(self.tools) if self.tools else []

    def tool_names(self) -> tuple[str, ...]:
        """Names of the functions in ``tools`` (either layout)."""
        return tuple(t.get("function", t).get("name") for t in self.tool_list())

    def metadata(self) -> dict[str, Any]:
        """The named metadata fields (``None`` ones left out) plus the free extra fields."""
        named = {k: getattr(self, k) for k in ("id", "task", "slice", "source", "license",
                                               "policy_category", "expected")}
        return {**self.extra, **{k: v for k, v in named.items() if v is not None}}

    def to_dict(self) -> dict[str, Any]:
        """The normalised record (OpenAI ``messages`` layout; a ``plain`` one as ``prompt`` and
        ``completion``), as hashed for the data version: the named metadata at the top level, the
        other fields under ``meta``, so that it reads back as the same conversation."""
        named = {k: v for k, v in self.metadata().items() if k not in self.extra}
        meta = {"meta": dict(self.extra)} if self.extra else {}
        if self.plain:
            return {"prompt": self.messages[0].content, "completion": self.messages[1].content, **named, **meta}
        msgs = []
        for m in self.messages:
            d: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.train is not None:
                d["train"] = m.train
            if m.weight is not None:
                d["weight"] = m.weight
            if m.tool_calls:
                d["tool_calls"] = [c.to_dict() for c in m.tool_calls]
            if m.tool_call_id is not None:
                d["tool_call_id"] = m.tool_call_id
            if m.name is not None:
                d["name"] = m.name
            if m.reasoning is not None:
                d["reasoning_content"] = m.reasoning
            msgs.append(d)
        tools = {"tools": self.tools} if self.tools is not None else {}
        return {"messages": msgs, **tools, **named, **meta}


def unpaired_surrogate(text: str) -> int | None:
    """Index of the first unpaired surrogate in ``text``, or ``None`` when it is Unicode text.

    JSON can spell one (``"\\ud800"``) and Python keeps it, but it is no character: UTF-8 cannot
    carry it and no tokenizer can encode it.

        >>> unpaired_surrogate("café"), unpaired_surrogate("ok \\ud800")
        (None, 3)
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


REASONING_MODES = ("keep", "mask", "drop")
"""``encoding.reasoning``: ``keep`` trains the reasoning as part of its turn, ``mask`` renders it with
weight 0, ``drop`` removes it before rendering."""


def template_messages(messages, reasoning: str = "keep") -> list[dict[str, Any]]:
    """The messages as transformers' ``apply_chat_template`` receives them (OpenAI layout): role and
    content, and only the fields a message has: ``tool_calls`` (arguments parsed into an object,
    as chat templates expect), ``tool_call_id``, ``name``, ``reasoning_content`` (left out under
    ``reasoning="drop"``). A key is never present with an empty value: templates test ``'tool_calls'
    in message``.

        >>> m = Message("assistant", "", tool_calls=(ToolCall("f", '{"x": 1}', "c1"),), reasoning="r")
        >>> template_messages([m], "drop")
        [{'role': 'assistant', 'content': '', 'tool_calls': [{'id': 'c1', 'type': 'function', 'function': {'name': 'f', 'arguments': {'x': 1}}}]}]
    """
    if reasoning not in REASONING_MODES:
        raise ValueError(f"reasoning must be one of {', '.join(REASONING_MODES)}, not {reasoning!r}")
    out = []
    for m in messages:
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            d["tool_calls"] = [{**c.to_dict(), "function": {"name": c.name, "arguments": c.arguments_value()}}
                               for c in m.tool_calls]
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            d["name"] = m.name
        if m.reasoning is not None and reasoning != "drop":
            d["reasoning_content"] = m.reasoning
        out.append(d)
    return out


UNSLICED = "unsliced"
"""The slice name of records and examples that name no slice (training, its validation and
``sftlab eval`` all use it)."""


def slice_of(example: Any) -> str:
    """The slice of a record or example (``UNSLICED`` when it has none); a plain string is its own slice.

    >>> slice_of(None), slice_of("math")
    ('unsliced', 'math')
    """
    name = example if isinstance(example, str) or example is None else getattr(example, "slice", None)
    return UNSLICED if name is None else str(name)
