"""Config and policy files read as YAML, safely: one-line errors that name the file, line and
column, and limits on what a small text file may cost once read (size, nesting depth, the values
YAML aliases expand to: an "alias bomb" of a few hundred bytes otherwise expands to billions).

    >>> parse_yaml("a: [1, 2]", "c.yaml")
    {'a': [1, 2]}
    >>> parse_yaml("a: [1, 2", "c.yaml")
    Traceback (most recent call last):
    ...
    sftlab.errors.UsageError: c.yaml: line 1 column 9: not valid YAML: expected ',' or ']', but got '<stream end>'

PyYAML parses; this module only adds the limits and the messages.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from sftlab.errors import UsageError
from sftlab.files import read_input

MAX_YAML_BYTES = 16 << 20  # a config or policy is a few KiB
MAX_YAML_DEPTH = 100
MAX_YAML_NODES = 1_000_000


def read_yaml(path: str | os.PathLike, what: str = "config") -> object:
    """The YAML document in ``path``, or ``UsageError`` with one line naming the file and why."""
    p = Path(path)
    if not os.path.lexists(p):
        raise UsageError(f"{p}: no such {what} file")
    data = read_input(p, what=what, max_bytes=MAX_YAML_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{p}: the {what} file is not UTF-8 text (byte {e.start}); save it as "
                         "UTF-8") from None
    return parse_yaml(text, str(p))


def parse_yaml(text: str, where: str) -> object:
    """``yaml.safe_load(text)`` with the checks of :func:`read_yaml`; ``where`` names the source."""
    # lazy: files is imported by every command; PyYAML loads only where YAML is read
    import yaml

    if "\x00" in text:
        raise UsageError(f"{where}: binary data, not a YAML text file")
    # Walk the events first: the depth, and the size the document has once aliases are expanded
    # (what validating and printing it will cost), without building anything.
    stack: list[list] = [[0, None]]  # [expanded size, anchor] per open collection
    sizes: dict[str, int] = {}
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                stack.append([1, event.anchor])
                if len(stack) > MAX_YAML_DEPTH:
                    raise UsageError(f"{where}: nested more than {MAX_YAML_DEPTH} levels deep; a "
                                     "config is a few levels of keys")
                continue
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                size, anchor = stack.pop()
            elif isinstance(event, yaml.AliasEvent):
                size, anchor = sizes.get(event.anchor, 1), None
            elif isinstance(event, yaml.ScalarEvent):
                size, anchor = 1, event.anchor
            else:
                continue
            if anchor is not None:
                sizes[anchor] = size
            stack[-1][0] += size
            if stack[-1][0] > MAX_YAML_NODES:
                raise UsageError(f"{where}: expands to more than {MAX_YAML_NODES:,} values through "
                                 "YAML aliases (*name); refused, as an alias bomb would be")
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or (str(e).splitlines() or ["parse error"])[0]
        raise UsageError(f"{where}: {at}not valid YAML: {problem}") from None
    except RecursionError:
        raise UsageError(f"{where}: nested too deeply to read") from None
    except ValueError:  # an integer of more than 4,300 digits, which Python does not convert
        m = re.search(r"\d{4301,}", text)
        at = f"line {text.count(chr(10), 0, m.start()) + 1}: " if m else ""
        raise UsageError(f"{where}: {at}a number with more than 4,300 digits; no setting takes one") from None
