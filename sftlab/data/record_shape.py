r"""The limits on one raw record, checked while it is read: its size (``DEFAULT_MAX_RECORD_BYTES``), its
nesting depth (``MAX_DEPTH``) and invalid UTF-8. A record over a limit comes out with its problem (a
``RecordError``) and a preview of its text, so it is quarantined and reading goes on.

Example::

    >>> too_deep({"a": [[[1]]]}, limit=3), too_deep({"a": [1]}, limit=3)
    (True, False)
    >>> shape_problem({"messages": "\udcff"}, bad_utf8=True).code
    'invalid_utf8'
    >>> escape_surrogates({"messages": "\udcff"})
    {'messages': '\\xff'}
"""
from __future__ import annotations

import json
from typing import Any

from sftlab.data.record_errors import RecordError

__all__ = ["DEFAULT_MAX_RECORD_BYTES", "MAX_DEPTH", "decode", "shape_problem", "too_deep", "too_deep_error", "too_large",
           "preview", "escape_surrogates", "text_of"]

DEFAULT_MAX_RECORD_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 64
_PREVIEW_CHARS = 2000


def text_of(obj: Any) -> str:
    """A record as JSON text (for its size and its preview)."""
    return json.dumps(obj, ensure_ascii=False, default=str)



def shape_problem(obj: Any, bad_utf8: bool) -> RecordError | None:
    if bad_utf8 and _has_surrogates(obj):
        return RecordError("invalid_utf8", "the record holds invalid UTF-8 bytes (shown "
                           "backslash-escaped); expected UTF-8 text; fix: re-encode the file")
    if too_deep(obj):
        return too_deep_error()
    return None


def too_deep(obj: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if type(node) is dict else node if type(node) is list else ()
        for child in children:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


def too_deep_error() -> RecordError:
    return RecordError("too_deep", f"the record is nested more than {MAX_DEPTH} levels deep; "
                       "expected a flat conversation record; fix: flatten or drop it")


def too_large(size: int, max_bytes: int) -> RecordError:
    return RecordError("too_large", f"the record is {size:,} bytes, over the limit of "
                       f"{max_bytes:,}; the quarantined 'record' keeps its first {_PREVIEW_CHARS:,} "
                       "characters; fix: shorten it or raise the limit (--max-record-mb)")


def preview(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        raw = raw[:_PREVIEW_CHARS * 4].decode("utf-8", "backslashreplace")
    return raw[:_PREVIEW_CHARS]


def _has_surrogates(obj: Any) -> bool:
    if isinstance(obj, str):
        return any("\udc80" <= ch <= "\udcff" for ch in obj)
    if isinstance(obj, dict):
        return any(_has_surrogates(k) or _has_surrogates(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_has_surrogates(v) for v in obj)
    return False


def escape_surrogates(obj: Any) -> Any:
    """Invalid bytes (kept as surrogates) -> ``\\xNN`` text, so the record can be written."""
    if isinstance(obj, str):
        return obj.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(obj, dict):
        return {escape_surrogates(k): escape_surrogates(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [escape_surrogates(v) for v in obj]
    return obj


def decode(data: bytes) -> tuple[str, bool]:
    """The text of ``data``, and whether it held invalid UTF-8 (kept as surrogates, found later)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape"), True
