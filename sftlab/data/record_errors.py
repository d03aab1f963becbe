"""Why one record cannot be used: ``RecordError`` with a short ``code`` (for counts), a reason that
says what was expected and how to fix it, and the field and message index when known; and the
short descriptions of JSON values its messages use.

Example::

    >>> str(RecordError("bad_weight", "expected a number >= 0, got 'x'", field="messages[1].weight"))
    "messages[1].weight: expected a number >= 0, got 'x'"
    >>> kind([1]), kind(None), keys({"b": 1, "a": 2})
    ('a list', 'null', 'a, b')
"""
from __future__ import annotations

from typing import Any

__all__ = ["RecordError", "kind", "keys", "empty"]


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


def keys(d: dict) -> str:
    return ", ".join(sorted(map(str, d))) or "none"


def kind(value: Any) -> str:
    """A short description of a JSON value for error messages."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def empty(value: Any) -> bool:
    """Whether a JSON value holds nothing (null, "", [] or {}): a field or key that may go unread
    without losing content (a table's column that this row does not fill).

    >>> [empty(v) for v in (None, "", [], {}, 0, False, " ")]
    [True, True, True, True, False, False, False]
    """
    return value is None or value == "" or value == [] or value == {}
