"""A record's top-level fields: sftlab's metadata read (top level or under ``meta``, or where a data
entry maps it), the other fields kept as ``Conversation.extra``, and every field accounted for:
read by the layout, known metadata, declared ignored, empty, or a copy of a message's text;
otherwise the record is refused naming the field and how to keep it (DESIGN.md, invariant 9).

Example::

    >>> metadata({"id": 7, "meta": {"task": "math"}, "messages": []})
    {'id': '7', 'task': 'math'}
    >>> extra({"messages": [], "id": "a", "lang": "de"}, "openai")
    {'lang': 'de'}
    >>> field_value({"body": {"messages": [1]}}, "body.messages"), field_value({"a.b": 1}, "a.b")
    ([1], 1)
"""
from __future__ import annotations

from typing import Any

from sftlab.data.conversation import Message
from sftlab.data.dataset_layouts import LAYOUT_METADATA, TITLES
from sftlab.data.record_errors import RecordError, empty, kind as _kind

# ``Columns`` in annotations is sftlab.data.formats's (not imported: that module imports this one).

__all__ = ["META_FIELDS", "EXPECTED_VALUES", "KNOWN_METADATA", "MULTIMODAL_FIELDS", "field_value", "metadata",
           "extra", "account"]

META_FIELDS = ("id", "task", "slice", "source", "license", "policy_category", "expected")
EXPECTED_VALUES = ("refuse", "comply")

# Top-level keys each layout consumes (so they do not land in ``extra``).
_LAYOUT_KEYS = {
    "openai": frozenset({"messages", "system"}),
    "mapped": frozenset({"system"}),
    "implicit_prompt": frozenset(),
    "sharegpt": frozenset({"conversations", "system"}),
    "alpaca": frozenset({"instruction", "input", "output", "system", "history"}),
    "prompt_completion": frozenset({"prompt", "completion", "system"}),
    "exchanges": frozenset({"conversation", "system"}),
    "turns": frozenset({"conversations", "system"}),
    "glaive": frozenset({"chat", "system"}),
    "xlam": frozenset({"query", "answers"}),
    "nemotron": frozenset({"input", "output", "system_prompt"}),
}
_CONSUMED = {fmt: keys | set(META_FIELDS) | {"meta", "tools"} for fmt, keys in _LAYOUT_KEYS.items()}


def field_value(row: dict[str, Any], path: str) -> Any:
    """The value at ``path`` in ``row``: a top-level key, or a dotted path into nested objects."""
    if path in row or "." not in path:
        return row.get(path)
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def metadata(row: dict[str, Any], cols: Columns | None = None) -> dict[str, Any]:
    """sftlab's metadata fields of ``row`` (``META_FIELDS``), checked: strings (an integer id becomes
    one), the same value wherever given twice, ``expected`` one of ``EXPECTED_VALUES``."""
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


def extra(row: dict[str, Any], fmt: str, columns: Columns | None = None) -> dict[str, Any]:
    """The fields of ``row`` its layout ``fmt`` does not read, with ``meta``'s own that are no metadata."""
    consumed = _CONSUMED[fmt] if columns is None else _consumed(row, fmt, columns)
    rest = {k: v for k, v in row.items() if k not in consumed}
    meta = row.get("meta")
    if meta:
        rest = {**{k: v for k, v in meta.items() if k not in META_FIELDS}, **rest}
    return rest


def _consumed(row: dict[str, Any], fmt: str, cols: Columns | None) -> frozenset[str]:
    """The top-level fields a layout reads (with the entry's names, the first part of a dotted path)."""
    if cols is None:
        return _CONSUMED[fmt]
    names = [cols.field_messages, cols.system, cols.tools, *cols.metadata.values()]
    if fmt == "alpaca":
        names += [cols.prompt or "instruction", cols.query or "input", cols.response or "output",
                  cols.history or "history"]
    return _CONSUMED[fmt] | {n if n in row else n.split(".")[0] for n in names if n}


KNOWN_METADATA = (*META_FIELDS, "meta", "category", "uuid", "prompt_id", "conversation_id", "lang", "language",
                  "model", "parallel_tool_calls")
"""Top-level fields every layout accepts as metadata (kept in ``Conversation.extra``, not trained):
sftlab's metadata, ``meta``, and a few that public data sets carry to describe a record rather than
to hold its content (Dolly's ``category``, UltraChat's ``prompt_id``, OpenAI's fine-tuning flag
``parallel_tool_calls``, which says how the API called tools, ...)."""
_KNOWN_METADATA = frozenset(KNOWN_METADATA)
_SYSTEM_FIELDS = ("system_prompt", "system_message")  # OpenHermes, OpenOrca, SlimOrca's exports
MULTIMODAL_FIELDS = ("images", "videos", "audios")
"""Fields people fill for multimodal training; sftlab trains on text only."""


def account(row: dict[str, Any], extra: dict[str, Any], messages: list[Message], cols: Columns | None,
             fmt: str) -> None:
    """Every top-level field is read by the layout, known metadata, declared ignored, empty, or a copy
    of a message's text; otherwise the record is refused naming the field and how to keep it."""
    ignore = cols.ignore if cols is not None else ()
    unused: list[str] = []
    for key in row:
        if key not in extra or key in _KNOWN_METADATA or key in ignore or key in LAYOUT_METADATA.get(fmt, ()):
            continue
        value = row[key]
        if empty(value):
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
        unused.append(key)
    if unused:
        layout = {"mapped": "mapped messages", "alpaca": "instruction", "implicit_prompt": "preference",
                  **TITLES}.get(fmt, fmt.replace("_", "/"))
        names = ", ".join(map(repr, unused))
        one = len(unused) == 1
        what, its, it = (f"field {names} is", "its", "it") if one else (f"fields {names} are", "their", "them")
        system = next((k for k in unused if k in _SYSTEM_FIELDS and isinstance(row[k], str)), None)
        system = (f" ({system!r} holds a system prompt: read it with the data entry's columns: {{system: {system}}}, "
                  f"validate --column system={system})" if system else "")
        raise RecordError("unused_field", f"{what} not read by the {layout} layout and not metadata sftlab "
                          f"knows, so {its} content would be lost{system}; fix: map {it} in the data entry (columns, "
                          f"metadata), move {it} under 'meta', or declare {it} ignored (the data entry's "
                          f"ignore_fields: [{', '.join(unused)}], validate "
                          f"{' '.join(f'--ignore-field {k}' for k in unused)})", field=unused[0])
