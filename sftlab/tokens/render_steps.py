"""The step limit of a Jinja rendering: templates that loop without writing anything are stopped.

An output-size limit stops a template that writes too much, and a deadline checked on calls stops
one that calls too much, but a loop that writes and calls nothing (``{% for i in r %}{% for j in r
%}{% endfor %}{% endfor %}``, 10^10 empty iterations) would pass neither check until it ended. So
every rendering has a budget of steps: one per loop iteration (every ``{% for %}`` iterates through
a counting wrapper, put in by rewriting the parsed template, where the template cannot rename or
shadow it), one per filter call and one per call, attribute or item access (the sandbox's hooks).
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
    rendering took more than 10,000 steps (loop iterations, calls, attribute and item lookups): the template loops without end or does too much work
    >>> end_steps(budget)
    >>> env.from_string("{% for i in range(3) %}{{ i }}{% endfor %}").render()   # no budget set: not counted
    '012'
"""
from __future__ import annotations

import functools
import threading

from sftlab.tokens.layout import TemplateError

__all__ = ["RenderLimitError", "RENDER_MAX_STEPS", "STEPS_PER_MESSAGE", "STEPS_PER_CHAR", "CHECK_EVERY",
           "start_steps", "end_steps", "step", "count_loop_steps", "counted_filters"]

RENDER_MAX_STEPS = 1_000_000
"""Steps (loop iterations, filter calls, calls, attribute and item lookups) one rendering may take,
plus ``STEPS_PER_MESSAGE`` per message and ``STEPS_PER_CHAR`` per character of message content.
A real template takes a few dozen steps per message."""
STEPS_PER_MESSAGE = 2_000
STEPS_PER_CHAR = 16
CHECK_EVERY = 1024
"""Steps between two checks of the rendering's deadline."""

_FILTER = "sftlab_loop_steps"
"""The filter every ``{% for %}`` iterable is passed through (filters are looked up in the
environment when the template compiles, so a template cannot replace it)."""


class RenderLimitError(TemplateError):
    """A rendering ran past the time, output-size or step limit: the template is refused, not waited on."""


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


def step() -> None:
    """Spend one step of the rendering in progress (nothing when no budget is set)."""
    local = _Budget.local
    left = getattr(local, "left", None)
    if left is None:
        return
    left -= 1
    local.left = left
    if left < 0:
        raise RenderLimitError(f"rendering took more than {local.limit:,} steps (loop iterations, calls, "
                               f"attribute and item lookups): the template loops without end or does too much work")
    if left % CHECK_EVERY == 0:
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


def count_loop_steps(template_ast):
    """The parsed template with every ``{% for %}`` iterating through the counting filter
    (``{% for x in xs %}`` reads as ``{% for x in xs|sftlab_loop_steps %}``)."""
    from jinja2 import nodes

    for loop in template_ast.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, _FILTER, [], [], None, None, lineno=loop.lineno)
    return template_ast


def counted_filters(filters: dict) -> dict:
    """``filters`` each spending a step per call, and the loop filter."""
    def counted(f):
        @functools.wraps(f)  # keeps jinja's pass_context / pass_environment marks
        def run(*args, **kwargs):
            step()
            return f(*args, **kwargs)
        return run
    return {**{name: counted(f) for name, f in filters.items()}, _FILTER: _loop_steps}
