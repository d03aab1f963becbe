"""Rendering a Jinja chat template under limits: a sandboxed environment with transformers' globals
and filters, a deadline, an output-size budget and a step budget (``sftlab.tokens.render_steps``).
A template that exceeds a limit is refused with a ``RenderLimitError``, never waited on; one that
fails to render is a ``TemplateError`` naming it.

Example::

    >>> from sftlab.tokens.templates import ChatTemplate
    >>> t = ChatTemplate("t", "{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}", (), (), "")
    >>> render_jinja(t, [{"role": "user", "content": "hi"}], False)
    '[user] hi'
"""
from __future__ import annotations

import functools
import threading
import time
from sftlab.tokens.render_steps import (RENDER_MAX_STEPS, STEPS_PER_CHAR, STEPS_PER_MESSAGE, count_loop_steps,
                                        counted_filters, end_steps, loop_call_args, start_steps, step)
from sftlab.tokens.template_errors import RenderLimitError, TemplateError

# ``ChatTemplate`` in annotations is sftlab.tokens.templates's (not imported: that module imports this one).

__all__ = ["RENDER_SECONDS", "RENDER_MAX_CHARS", "compiled", "render_jinja"]

RENDER_SECONDS = 10.0
"""Longest time one rendering of a Jinja template may take before it is refused."""
RENDER_MAX_CHARS = 4_000_000
"""Most characters one rendering may write (plus 16 per character of message content)."""


class _Limits:
    """The deadline and output budget of the rendering in progress (one per thread)."""
    local = threading.local()


def _check_deadline():
    deadline = getattr(_Limits.local, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise RenderLimitError(f"rendering took longer than {RENDER_SECONDS:g} s (the template loops without end "
                               f"or builds huge text)")


def _check_size(n: int):
    budget = getattr(_Limits.local, "budget", None)
    if budget is not None and n > budget:
        raise RenderLimitError(f"rendering would write more than {budget:,} characters (the template builds "
                               f"huge text)")


@functools.lru_cache(maxsize=64)
def compiled(source: str):
    """The template compiled in a sandboxed environment that checks the deadline on every call,
    attribute and item access and the size of every string or list built by ``*``, ``+`` or ``**``,
    and counts steps (``sftlab.tokens.render_steps``: loop iterations, calls and filter calls), with
    the globals and filters transformers gives chat templates."""
    # jinja2 and transformers are imported here, on the first template compiled, for start-up time
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers.utils.chat_template_utils import _compile_jinja_template

    base = _compile_jinja_template("").environment  # its globals and filters; the source is compiled below only

    class _LimitedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+"})

        def call_binop(self, context, operator, left, right):
            _check_deadline()
            if operator == "**":
                if isinstance(right, int) and isinstance(left, int) and abs(left) > 1 and right > 4096:
                    raise RenderLimitError(f"rendering computes {left} ** {right}, a number too large to write")
                return left ** right
            if operator == "*":
                seq, n = (left, right) if isinstance(right, int) else (right, left)
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    _check_size(len(seq) * n)
                return left * right
            result = left + right
            if isinstance(result, (str, list, tuple)):
                _check_size(len(result))
            return result

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
            _check_deadline()
            step()
            return super().call(__context, __obj, *loop_call_args(__obj, args), **kwargs)

        def getattr(self, obj, attribute):
            _check_deadline()
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            _check_deadline()
            return super().getitem(obj, argument)

        def _parse(self, source, name, filename):  # every {% for %} spends a step per item
            return count_loop_steps(super()._parse(source, name, filename))

    env = _LimitedEnvironment(trim_blocks=True, lstrip_blocks=True,
                              extensions=[type(e) for e in base.extensions.values()])
    env.filters.update(counted_filters({**env.filters, **base.filters}))
    env.globals.update(base.globals)
    return env.from_string(source)


def _prepare_messages(messages: list[dict]):
    """The messages as transformers hands them to a template (plain data, reasoning fields aliased)."""
    try:
        # lazy: transformers is imported on first use, for start-up time
        from transformers.utils.chat_template_utils import _alias_reasoning_fields, _plain_template_data
    except ImportError:  # an older transformers: the messages are already plain dicts
        return messages
    return _alias_reasoning_fields(_plain_template_data(messages))


def render_jinja(t: ChatTemplate, messages: list[dict], add_generation_prompt: bool, tools: list | None = None) -> str:
    """One rendering of ``messages`` (content as strings) with the template, under the limits."""
    if t.content_parts:
        messages = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]
    content_chars = sum(len(m["content"]) if isinstance(m["content"], str) else len(m["content"][0]["text"])
                        for m in messages)
    budget = RENDER_MAX_CHARS + 16 * content_chars
    local = _Limits.local
    outer = getattr(local, "deadline", None), getattr(local, "budget", None)
    local.deadline, local.budget = time.monotonic() + RENDER_SECONDS, budget
    steps = start_steps(RENDER_MAX_STEPS + STEPS_PER_MESSAGE * len(messages) + STEPS_PER_CHAR * content_chars,
                        _check_deadline)
    try:
        template = compiled(t.source)
        chunks, size = [], 0
        for chunk in template.generate(messages=_prepare_messages(messages), tools=tools, documents=None,
                                       add_generation_prompt=add_generation_prompt, **t.special):
            size += len(chunk)
            _check_size(size)
            _check_deadline()
            chunks.append(chunk)
        return "".join(chunks)
    except RenderLimitError as e:
        raise RenderLimitError(f"template '{t.name}' refused: {e}") from None
    except (MemoryError, RecursionError) as e:
        raise RenderLimitError(f"template '{t.name}' refused: rendering ran out of "
                               f"{'memory' if isinstance(e, MemoryError) else 'stack'}") from None
    except Exception as e:  # jinja2 TemplateError, raise_exception(), a sandbox refusal, a template bug
        hint = ""
        if "system" in str(e).lower() and any(m["role"] == "system" for m in messages):
            hint = ("; the template takes no system message: drop it, or use the built-in 'gemma' or "
                    "'mistral' format, which fold it into the first user turn")
        raise TemplateError(f"template '{t.name}' failed to render: {type(e).__name__}: {e}{hint}") from None
    finally:
        local.deadline, local.budget = outer
        end_steps(steps)
