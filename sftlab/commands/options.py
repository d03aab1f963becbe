"""Command-line options generated from the config class that owns them (STYLE 5): one source for
a flag's help, default and choices, so a flag several commands take reads and behaves alike in
each, and ``--help`` cannot drift from the field it sets.

:func:`add_options` adds one ``--NAME`` option per named field of a frozen dataclass or pydantic
model: the help is the field's docstring (then the default, when it is not ``None``), ``Literal``
types give the choices, ``bool`` fields are flags (``store_true``), optional and tuple types give
the element type (a tuple takes one or more values). A command adapts an option where its use
differs from the field's (another default, a metavar, a note of how it applies here)::

    >>> import argparse
    >>> from sftlab.train.config import EncodingConfig
    >>> p = argparse.ArgumentParser(prog="x")
    >>> add_options(p, EncodingConfig, "reasoning", "last_turn_only")
    >>> args = p.parse_args(["--reasoning", "mask"])
    >>> args.reasoning, args.last_turn_only
    ('mask', False)
    >>> " ".join(p.format_help().split())  # doctest: +ELLIPSIS
    'usage: x [-h] [--reasoning {keep,mask,drop}] [--last-turn-only] ... Reasoning on assistant messages: keep trains ... (default: keep) --last-turn-only Train only the last assistant turn ...'
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from typing import Any, Literal

_UNSET = object()
ADAPT = frozenset({"default", "metavar", "type", "nargs", "choices", "note", "flag", "required", "action"})
"""What a command may change of a generated option (``note``: a sentence added to the help;
``flag``: the option's name, when it is not the field's)."""


@functools.lru_cache(maxsize=None)  # a dataclass's docs are read from its source: once per class
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of ``cls`` (a pydantic model's field descriptions, or for a
    dataclass the string literal after each annotated field)."""
    if hasattr(cls, "model_fields"):
        return {name: f.description or "" for name, f in cls.model_fields.items()}
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {a.target.id: b.value.value for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)}


def field_default(cls: type, name: str) -> Any:
    """The default of field ``name`` (``_UNSET`` when it has none)."""
    if hasattr(cls, "model_fields"):
        f = cls.model_fields[name]
        return _UNSET if f.is_required() else f.get_default(call_default_factory=True)
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else _UNSET


def field_type(cls: type, name: str) -> Any:
    if hasattr(cls, "model_fields"):
        return cls.model_fields[name].annotation
    return typing.get_type_hints(cls)[name]


def help_text(doc: str) -> str:
    """A field docstring as argparse help: one line, reST literals plain, ``%`` escaped."""
    return " ".join(doc.split()).replace("``", "").replace("%", "%%")


def option_kwargs(cls: type, name: str) -> dict[str, Any]:
    """The ``add_argument`` keywords of field ``name`` of ``cls`` (see the module docstring)."""
    kind, default = field_type(cls, name), field_default(cls, name)
    kwargs: dict[str, Any] = {"help": help_text(field_docs(cls).get(name, ""))}
    if kind is bool:
        if default is not False:
            raise TypeError(f"{cls.__name__}.{name}: a flag must default to False")
        return {**kwargs, "action": "store_true"}
    kind = _without_none(kind)
    if typing.get_origin(kind) is tuple or typing.get_origin(kind) is list:
        kwargs["nargs"] = "+"
        kind = typing.get_args(kind)[0]
    if typing.get_origin(kind) is Literal:
        kwargs["choices"] = typing.get_args(kind)
    elif kind in (int, float, str):
        kwargs["type"] = kind
    kwargs["default"] = None if default is _UNSET else default
    return kwargs


def add_options(parser, cls: type, *names: str, **adapt: dict[str, Any]) -> None:
    """Add ``--NAME`` (underscores as dashes) for each field ``name`` of ``cls`` to ``parser`` (a
    parser or argument group); ``adapt[name]`` changes what a command uses differently (keys of
    :data:`ADAPT`). The help ends with the default when it is not ``None`` or a flag's ``False``."""
    unknown = set(adapt) - set(names)
    if unknown:
        raise TypeError(f"adapting options not added: {sorted(unknown)}")
    for name in names:
        kwargs = option_kwargs(cls, name)
        change = dict(adapt.get(name, {}))
        if set(change) - ADAPT:
            raise TypeError(f"{name}: cannot adapt {sorted(set(change) - ADAPT)}")
        note, flag = change.pop("note", ""), change.pop("flag", "--" + name.replace("_", "-"))
        kwargs.update(change)
        if kwargs.get("action") == "append":  # a repeatable option: one value each time
            kwargs.pop("nargs", None)
        if kwargs.get("nargs", "") is None:  # a list given as one value (a comma-separated string)
            del kwargs["nargs"]
        kwargs["help"] = " ".join(part for part in (kwargs["help"], help_text(note)) if part)
        default = kwargs.get("default")
        if kwargs.get("action") not in ("store_true", "append") and default not in (None, (), [], {}):
            shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
            kwargs["help"] += f" (default: {shown})"
        parser.add_argument(flag, **kwargs)


def _without_none(kind):
    """``X | None`` -> ``X``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(kind) if a is not type(None)]
        return rest[0] if len(rest) == 1 else kind
    return kind


