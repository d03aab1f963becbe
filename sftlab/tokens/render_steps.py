"""The step limit of a Jinja rendering: templates that loop without writing anything are stopped.

An output-size limit stops a template that writes too much, and a deadline checked on calls stops
one that calls too much, but a loop that writes and calls nothing (``{% for i in r %}{% for j in r
%}{% endfor %}{% endfor %}``, 10^10 empty iterations) would pass neither check until it ended. So
every rendering has a budget of steps: one per loop iteration (every ``{% for %}`` iterates through
a counting wrapper, put in by rewriting the parsed template, where the template cannot rename or
shadow it, and the iterable a recursive loop is called with), one per call (the sandbox's hook:
macros, ``loop(...)``), and for a filter one plus one per ``FILTER_ITEMS`` items of its input (a
filter works through its whole input). Every repetition a template can make is a loop, a call or
a filter, so every one is counted; attribute and item lookups are not (they repeat only inside
those, and the deadline is checked on each).
A rendering that spends its budget is refused with a ``RenderLimitError`` naming the limit; every
``CHECK_EVERY`` steps the deadline is checked too.

Example::

    >>> from jinja2.sandbox import ImmutableSandboxedEnvironment
    >>> class Env(ImmutableSandboxedEnvironment):
    ...     def _parse(self, source, name, filename):
    ...         return count_loop_steps(super()._parse(source, name, filename))
    >>> env = Env()
    >>> env.filters.update(counted_filters(env.filters))
    >>> quiet = env.from_string("{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}ok")
    >>> budget = start_steps(10_000, lambda: None)
    >>> try:
    ...     quiet.render()
    ... except RenderLimitError as e:
    ...     print(e)
    rendering took more than 10,000 steps (loop iterations, calls and filter calls): the template loops without end or does too much work
    >>> end_steps(budget)
    >>> env.from_string("{% for i in range(3) %}{{ i }}{% endfor %}").render()   # no budget set: not counted
    '012'
"""
from __future__ import annotations

import functools
import threading

from jinja2 import Environment, nodes
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, LoopContext

from sftlab.tokens.template_errors import RenderLimitError

__all__ = ["RENDER_MAX_STEPS", "STEPS_PER_MESSAGE", "STEPS_PER_CHAR", "CHECK_EVERY",
           "FILTER_ITEMS", "start_steps", "end_steps", "step", "count_loop_steps", "loop_call_args", "counted_filters"]

RENDER_MAX_STEPS = 200_000
"""Steps (loop iterations, calls, filter calls by the size of their input) one rendering may take,
plus ``STEPS_PER_MESSAGE`` per message and ``STEPS_PER_CHAR`` per character of message content.
A real template takes a few dozen steps per message."""
STEPS_PER_MESSAGE = 2_000
STEPS_PER_CHAR = 16
CHECK_EVERY = 1024
"""Steps between two checks of the rendering's deadline."""
FILTER_ITEMS = 256
"""Items of a filter's input (characters of a string, elements of a list) that cost one more step."""

_FILTER = "sftlab_loop_steps"
"""The filter every ``{% for %}`` iterable is passed through (filters are looked up in the
environment when the template compiles, so a template cannot replace it)."""


class _Budget:
    local = threading.local()


def start_steps(limit: int, check) -> tuple:
    """Give the rendering in progress on this thread ``limit`` steps; ``check()`` (the deadline)
    runs every ``CHECK_EVERY`` steps. Returns what ``end_steps`` restores (renderings nest)."""
    local = _Budget.local
    outer = getattr(local, "left", None), getattr(local, "limit", None), getattr(local, "check", None)
    local.left, local.limit, local.check = limit, limit, check
    return outer


def end_steps(outer: tuple) -> None:
    local = _Budget.local
    local.left, local.limit, local.check = outer


def step(n: int = 1) -> None:
    """Spend ``n`` steps of the rendering in progress (nothing when no budget is set)."""
    local = _Budget.local
    try:
        left = local.left - n
    except (AttributeError, TypeError):  # no rendering on this thread yet, or none in progress
        return
    local.left = left
    if left < 0:
        raise RenderLimitError(f"rendering took more than {local.limit:,} steps (loop iterations, calls and "
                               f"filter calls): the template loops without end or does too much work")
    if left // CHECK_EVERY != (left + n) // CHECK_EVERY:
        local.check()


class _Counted:
    """An iterable that spends a step per item; its length (``loop.length``) is the wrapped one's."""
    __slots__ = ("_of",)

    def __init__(self, of):
        self._of = of

    def __iter__(self):
        for item in self._of:
            step()
            yield item

    def __len__(self):
        return len(self._of)


def _loop_steps(value):
    return _Counted(value)


def loop_call_args(obj, args: tuple) -> tuple:
    """The arguments of a call, with the iterable of a recursive loop's ``loop(...)`` counted too."""
    if isinstance(obj, LoopContext) and args:
        return (_Counted(args[0]), *args[1:])
    return args


def count_loop_steps(template_ast):
    """The parsed template with every ``{% for %}`` iterating through the counting filter
    (``{% for x in xs %}`` reads as ``{% for x in xs|sftlab_loop_steps %}``)."""
    for loop in template_ast.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, _FILTER, [], [], None, None, lineno=loop.lineno)
    return template_ast


_SIZED = (str, list, tuple, dict, range)


def counted_filters(filters: dict) -> dict:
    """``filters`` each spending a step per call (and per ``FILTER_ITEMS`` items of their input),
    and the loop filter."""

    contexts = (Context, EvalContext, Environment)  # what pass_context & co. put before the value

    def counted(f):
        @functools.wraps(f)  # keeps jinja's pass_context / pass_environment marks
        def run(*args, **kwargs):
            value = next((a for a in args if not isinstance(a, contexts)), None)
            step(1 + (len(value) // FILTER_ITEMS if isinstance(value, _SIZED) else 0))
            return f(*args, **kwargs)
        return run
    return {**{name: counted(f) for name, f in filters.items()}, _FILTER: _loop_steps}
