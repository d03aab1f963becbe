"""Text from records and model outputs, made safe to print in a terminal.

A record or a response may hold terminal control sequences (``ESC [ 2 J`` clears the screen,
``ESC ] ... BEL`` retitles the window or hides a link, a carriage return overwrites the line, a
right-to-left override reverses what a reviewer reads). Every command that prints such text
passes it through :func:`terminal_safe`: control characters other than newline and tab, C1
controls, bidirectional overrides and isolates, and the Unicode line and paragraph separators
are shown as Python-style escapes, so the text reads as it is and cannot act on the screen.

    >>> terminal_safe("ok\\x1b[2J\\rcafé\\u202egnp.exe\\tend\\n")
    'ok\\\\x1b[2J\\\\rcafé\\\\u202egnp.exe\\tend\\n'
    >>> terminal_safe("\\x9b31m\\u2028")
    '\\\\x9b31m\\\\u2028'

This module imports nothing from sftlab.
"""
from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls; bidi embeddings, overrides, isolates and
# marks; line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


_NAMED = {"\r": "\\r", "\x1b": "\\x1b"}


def _escape(m: re.Match) -> str:
    code = ord(m.group())
    return _NAMED.get(m.group()) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def terminal_safe(text: object) -> str:
    """``str(text)`` with every character that could act on a terminal shown as an escape."""
    return _UNSAFE.sub(_escape, text if isinstance(text, str) else str(text))
