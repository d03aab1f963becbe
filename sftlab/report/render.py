"""Generic rendering of JSON values whose exact layout this report does not own.

``data/stats.json`` grows with sftlab.data.stats; rendering it generically (scalars as a field
table, a dict of dicts as a table with one row per key, a list of dicts as a table) keeps
the report useful whatever keys a version writes.

    >>> render({"exact": 2, "near": 5})
    '<table class="kv"><tbody><tr><th>exact</th><td class="num">2</td></tr><tr><th>near</th><td class="num">5</td></tr></tbody></table>'
"""
from __future__ import annotations

from typing import Any

from sftlab.report.markup import Markup, esc, kv_table, table, tag

MAX_ROWS = 25
MAX_COLUMNS = 10


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _more(n: int) -> Markup:
    return tag("p", f"... and {n} more", class_="note") if n > 0 else Markup("")


def _rows_table(rows: list[tuple[Any, dict[str, Any]]], key_header: str | None) -> Markup:
    columns: list[str] = []
    for _, row in rows:
        columns += [c for c in row if c not in columns]
    shown = columns[:MAX_COLUMNS]
    body = [([k] if key_header is not None else []) +
            [cell(row.get(c)) for c in shown] for k, row in rows[:MAX_ROWS]]
    headers = ([key_header] if key_header is not None else []) + shown
    return Markup(table(headers, body) + _more(len(rows) - MAX_ROWS))


def cell(value: Any) -> Any:
    """A table cell: scalars as they are, small containers inline, bigger ones as JSON text."""
    if _scalar(value):
        return value
    if isinstance(value, list) and all(_scalar(v) for v in value) and len(value) <= 12:
        return Markup(", ".join(esc(v) for v in value))
    return esc(value)


def render(value: Any, key_header: str = "") -> Markup:
    """HTML for any JSON value (escaped), tables where the shape allows."""
    if _scalar(value):
        return esc(value)
    if isinstance(value, dict):
        if not value:
            return tag("span", "(empty)", class_="note")
        if all(_scalar(v) for v in value.values()):
            items = list(value.items())
            return Markup(kv_table(items[:MAX_ROWS * 2]) + _more(len(items) - MAX_ROWS * 2))
        if len(value) > 1 and all(isinstance(v, dict) for v in value.values()):
            return _rows_table(list(value.items()), key_header)
        return kv_table([(k, render(v)) for k, v in value.items()])
    if isinstance(value, list):
        if not value:
            return tag("span", "(none)", class_="note")
        if all(isinstance(v, dict) for v in value):
            return _rows_table([(i, v) for i, v in enumerate(value)], None)
        if all(_scalar(v) for v in value):
            return Markup(esc(", ".join(str(v) for v in value[:MAX_ROWS * 4])) +
                          _more(len(value) - MAX_ROWS * 4))
    return esc(value)
