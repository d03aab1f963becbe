"""Chat templates: how a conversation becomes text, where each message's content lies in it, and
which characters of each assistant turn are trained.

A ``ChatTemplate`` is either one of the built-in formats (``sftlab.tokens.chat_formats``) or the
Jinja ``chat_template`` of a Hugging Face tokenizer, rendered in a sandboxed Jinja environment with
a time limit and an output-size limit (a template that exceeds either is refused, never waited on).
Either way it produces a ``Layout`` (``sftlab.tokens.layout``): the rendered text, the character
span of every message's content, and the trained characters of every assistant turn. Encoding
(``sftlab.tokens.encoding``) turns that into token ids and loss weights; nothing here tokenizes.

**The trained characters (DESIGN.md, invariant 2).** For assistant message i, let P_i be the
template's rendering of the messages before it with the generation prompt, and F_i the rendering
of the messages up to and including it. Where F_i starts with P_i, the trained characters are
F_i after P_i up to and including the stop sequence: openers the template makes the model write
(a think block, a channel header), the content, and the stop. The stop is read off the template
itself: the control tokens it writes right after the content, both where the turn is the last
message (F_i) and where the conversation goes on; a closing token written only once after the
whole conversation (an eos) is after the stop and not trained. Where the template writes no stop
at all, the control token that begins the next turn is the stop (and is written after a final
turn that has none). A turn whose characters in the whole rendering differ from those of F_i (the
template re-renders earlier turns: drops their reasoning, writes another stop) is ``rerendered``
and never trained from that text: ``encoding.turns: expand`` trains it in its own example.

**Content spans.** The content of message i lies between the rendering of ``messages[:i]`` and that
of ``messages[:i+1]``, at the place where the template puts a probe string given as message i's
content. Templates that re-render history are certified on the whole rendering instead (the
conversation rendered with a probe in one message's place must equal the real rendering outside
that message); where a probe in the content's place changes the rendering elsewhere (the template
reads a flag from the content, as SmolLM3 reads ``/no_think`` from the system message and writes the
message without it), the place is bracketed by the probe put before and after the content as it is.
A template that writes a message's content more than once, or drops the content of a message, is
refused: its masks could not be exact.

Example::

    >>> t = get_template("chatml")
    >>> lay = t.layout([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    >>> lay.text
    '<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\nyo<|im_end|>\\n'
    >>> [lay.text[t.start:t.end] for t in lay.turns]
    ['yo<|im_end|>']
"""
from __future__ import annotations

import functools
import json
import os
import re
import time
from dataclasses import dataclass, field

from sftlab.fingerprints import config_hash, tokenizer_sha256
from sftlab.tokens.chat_formats import NOT_FROM_PROMPT, _FORMATS, _Format, _format_jinja, _format_layout
from sftlab.tokens.layout import Layout, Span, TemplateError, Turn
from sftlab.tokens.render_steps import (RENDER_MAX_STEPS, STEPS_PER_CHAR, STEPS_PER_MESSAGE, RenderLimitError,
                                        count_loop_steps, counted_filters, end_steps, loop_call_args, start_steps,
                                        step)

__all__ = ["BUILTIN_TEMPLATES", "ChatTemplate", "Layout", "Span", "TemplateError", "Turn", "get_template",
           "add_role_tokens", "install_template", "missing_control_tokens", "control_token_strings",
           "special_strings", "reasoning_tags", "tokenizer_sha256", "RENDER_SECONDS", "RENDER_MAX_CHARS", "RENDER_MAX_STEPS"]

BUILTIN_TEMPLATES = tuple(_FORMATS)

RENDER_SECONDS = 10.0
"""Longest time one rendering of a Jinja template may take before it is refused."""
RENDER_MAX_CHARS = 4_000_000
"""Most characters one rendering may write (plus 16 per character of message content)."""


@dataclass(frozen=True)
class ChatTemplate:
    """A chat format bound to a tokenizer's special-token strings. See the module docstring."""
    name: str
    source: str
    """Jinja source: what is installed as the tokenizer's ``chat_template``."""
    control_tokens: tuple[str, ...]
    """Strings the template writes as control tokens (role markers, end-of-turn, bos)."""
    end_of_turn: tuple[str, ...]
    """The control tokens of the stop sequence trained at the end of each assistant turn."""
    fingerprint: str
    """sha256 of the template source, control tokens, end-of-turn marker(s) and the tokenizer."""
    special: dict = field(compare=False, hash=False, repr=False, default_factory=dict)
    _format: _Format | None = field(default=None, compare=False, hash=False, repr=False)
    content_parts: bool = field(default=False, compare=False, hash=False)
    """The template iterates over content parts: message content is passed to it as
    ``[{"type": "text", "text": ...}]`` (derived from the template by a probe)."""

    @property
    def is_builtin(self) -> bool:
        return self._format is not None

    def render(self, messages: list[dict], add_generation_prompt: bool = False, tools: list | None = None) -> str:
        return self.layout(messages, add_generation_prompt, tools).text

    def layout(self, messages: list[dict], add_generation_prompt: bool = False, tools: list | None = None) -> Layout:
        """The rendered text, the content span of every message and the trained turns.

        ``messages`` are in the layout transformers' ``apply_chat_template`` takes: besides role and
        content, assistant ``tool_calls`` (arguments as objects) and ``reasoning_content``, tool
        ``tool_call_id`` and ``name``; ``tools`` are the JSON-schema function definitions. A Jinja
        template receives them exactly so; a built-in format renders them in its tool format
        (``sftlab.tokens.tool_formats``) or refuses them."""
        # A built-in format only reads them: a message of role and text content only (the usual
        # one) is taken as it is. A Jinja template gets copies.
        builtin = self._format is not None
        messages = [m if builtin and len(m) == 2 and "role" in m and type(m.get("content")) is str else
                    {**{k: m[k] for k in _MESSAGE_KEYS if m.get(k) is not None},
                     "role": m["role"], "content": text_content(m.get("content"))} for m in messages]
        tools = tools or None
        if self._format is not None:
            from sftlab.tokens.tool_formats import flatten

            flat = flatten(self.name, messages, tools)
            layout = _format_layout(self._format, flat, self.special.get("eos_token") or "",
                                    add_generation_prompt)  # it reads role and content only
            if flat is not messages:  # spans: each message's own content within the text written for it
                import dataclasses

                places = {i: m["content_at"] for i, m in enumerate(flat) if "content_at" in m}
                layout = dataclasses.replace(layout, spans=tuple(
                    dataclasses.replace(sp, start=sp.start + places[sp.index][0],
                                        end=sp.start + places[sp.index][0] + places[sp.index][1])
                    if sp.index in places else sp for sp in layout.spans))
            return _unshift(layout) if len(flat) > len(messages) else layout
        return _jinja_layout(self, call_arguments_form(self, messages, tools), add_generation_prompt, tools)

    def describe(self) -> dict:
        """The manifest's ``template`` section."""
        return {"name": self.name, "fingerprint": self.fingerprint, "builtin": self.is_builtin,
                "control_tokens": list(self.control_tokens), "end_of_turn": list(self.end_of_turn)}


_MESSAGE_KEYS = ("tool_calls", "tool_call_id", "name", "reasoning_content")
"""Message fields besides role and content that a template is given (OpenAI / transformers layout)."""


def call_arguments_form(t: ChatTemplate, messages: list[dict], tools: list | None = None) -> list[dict]:
    """``messages`` with tool-call arguments as objects (transformers' convention, what most templates
    ``tojson``), or as JSON text where the template can only write them as text (it concatenates
    them as strings, as DeepSeek-V3.1 and Functionary do): whichever the template renders."""
    calls = [c for m in messages for c in m.get("tool_calls") or ()]
    if t.is_builtin or not any(isinstance(c.get("function", c).get("arguments"), dict) for c in calls):
        return messages
    try:
        _render_jinja(t, messages, False, tools)
        return messages
    except RenderLimitError:
        raise
    except TemplateError:
        pass
    as_text = [{**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": json.dumps(
        c["function"]["arguments"], ensure_ascii=False)}} if "function" in c else c for c in m["tool_calls"]]}
        if m.get("tool_calls") else m for m in messages]
    try:
        _render_jinja(t, as_text, False, tools)
    except RenderLimitError:
        raise
    except TemplateError:
        return messages
    return as_text


def _unshift(layout: Layout) -> Layout:
    """The layout with the system message a tool format inserted first (index 0) taken out of the
    indices: spans and turns of the caller's messages, numbered as the caller numbered them."""
    import dataclasses

    spans = tuple(dataclasses.replace(s, index=s.index - 1) for s in layout.spans if s.index > 0)
    turns = tuple(dataclasses.replace(t, index=t.index - 1) for t in layout.turns)
    return dataclasses.replace(layout, spans=spans, turns=turns)


def text_content(content) -> str:
    """Message content as one string: a list of text parts (``[{"type": "text", "text": ...}]``) is
    joined; anything that is not text is a ``TemplateError`` (sftlab trains on text only)."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                out.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise TemplateError(f"content part of type {kind!r}: sftlab trains on text parts only")
        return "".join(out)
    if content is None:
        return ""
    raise TemplateError(f"message content must be text or a list of text parts, not {type(content).__name__}")


# -- rendering Jinja under limits ------------------------------------------------------------------

class _Limits:
    """The deadline and output budget of the rendering in progress (one per thread)."""
    import threading as _threading
    local = _threading.local()


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
def _compiled(source: str):
    """The template compiled in a sandboxed environment that checks the deadline on every call,
    attribute and item access and the size of every string or list built by ``*``, ``+`` or ``**``,
    and counts steps (``sftlab.tokens.render_steps``: loop iterations, calls and filter calls), with the globals and filters transformers gives chat templates."""
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
        from transformers.utils.chat_template_utils import _alias_reasoning_fields, _plain_template_data
    except ImportError:  # an older transformers: the messages are already plain dicts
        return messages
    return _alias_reasoning_fields(_plain_template_data(messages))


def _render_jinja(t: ChatTemplate, messages: list[dict], add_generation_prompt: bool, tools: list | None = None) -> str:
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
        compiled = _compiled(t.source)
        chunks, size = [], 0
        for chunk in compiled.generate(messages=_prepare_messages(messages), tools=tools, documents=None,
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


class _Renders:
    """Renderings of one conversation and of its probe variants, each made once."""

    def __init__(self, t: ChatTemplate, messages: list[dict], tools: list | None = None):
        self.t, self.messages, self.tools, self.memo = t, messages, tools, {}

    def _get(self, key, build):
        if key not in self.memo:
            try:
                self.memo[key] = _render_jinja(self.t, build(), key[-1], self.tools)
            except RenderLimitError:
                raise
            except TemplateError as e:
                self.memo[key] = e
        value = self.memo[key]
        if isinstance(value, Exception):
            raise value
        return value

    def prefix(self, n: int, add_generation_prompt: bool) -> str:
        """The rendering of ``messages[:n]``."""
        return self._get(("prefix", n, add_generation_prompt), lambda: self.messages[:n])

    def probed(self, n: int, i: int, content: str, add_generation_prompt: bool, then: dict | None = None) -> str:
        """The rendering of ``messages[:n]`` with message i's content replaced, then ``then``."""
        def build():
            msgs = [*self.messages[:i], {**self.messages[i], "content": content}, *self.messages[i + 1:n]]
            return msgs + ([then] if then is not None else [])
        key = ("probe", n, i, content, None if then is None else (then["role"], then["content"]), add_generation_prompt)
        return self._get(key, build)


class _PrefixUnstable(TemplateError):
    """A prefix rendering is not a prefix of the whole rendering."""


class _NotVerbatim(TemplateError):
    """A message's content is not in the rendering as it was given (or trimmed)."""


class _Duplicated(TemplateError):
    """The template writes a message's content more than once."""


TRANSFORMS = ("(a filter or test in the template changes or drops assistant content: escape, title, truncate, "
              "tojson, a test on the text); the trained text would not be the record's answer, so sftlab cannot "
              "certify this template: use one that writes content as it is")
"""Why a turn whose content the template transforms is refused (``check-template`` says it too)."""

_PROBE = "sftlab0probe0c7e1f"
_PROBE_NEXT = "sftlab0probe0next0a9d2"


def _jinja_layout(t: ChatTemplate, messages: list[dict], add_generation_prompt: bool,
                  tools: list | None = None) -> Layout:
    r = _Renders(t, messages, tools)
    text = r.prefix(len(messages), add_generation_prompt)
    rewritten: tuple[int, ...] = ()
    try:
        spans = _incremental_spans(t, r, messages, text)
    except (_PrefixUnstable, _NotVerbatim) as e:
        probed = _probed_spans(t, r, messages, text, add_generation_prompt)
        if probed is None:
            raise e from None
        spans, rewritten = probed
    if add_generation_prompt:  # a prompt for generation: nothing is trained from it
        return Layout(text, spans, (), rewritten)
    turns, rerendered, untrainable = [], [], {}
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        found = _turn(t, r, messages, i, text)
        if isinstance(found, tuple):
            turn, inserted = found
            if inserted:  # the final turn's stop, written where the template writes none
                text = text[:turn.stop_start] + inserted + text[turn.stop_start:]
            turns.append(turn)
        elif found == "rerendered":
            rerendered.append(i)
        else:
            untrainable[i] = found
    return Layout(text, spans, tuple(rerendered), rewritten, tuple(turns), untrainable)


def _control_run(s: str, control: tuple[str, ...]) -> tuple[int, list[str]]:
    """``(w, tokens)``: ``s`` has its first control token at ``w`` and from there the control tokens
    ``tokens`` back to back (the longest token wins at each place); ``tokens`` is empty when ``s``
    has no control token."""
    starts = [(k, -len(c), c) for c in control if (k := s.find(c)) >= 0]
    if not starts:
        return len(s), []
    w = min(starts)[0]
    pos, run = w, []
    while True:
        tok = next((c for c in control if s.startswith(c, pos)), None)
        if tok is None:
            return w, run
        run.append(tok)
        pos += len(tok)


def _turn(t: ChatTemplate, r: _Renders, messages: list[dict], i: int, text: str):
    """``(Turn, inserted)`` for assistant message i in ``text`` (``inserted``: the stop written after
    a final turn that has none, else ``""``), ``"rerendered"`` when the text does not show the turn
    as generated, or the reason it cannot be trained at all."""
    try:
        prompt = r.prefix(i, True)
        own = r.prefix(i + 1, False)
    except RenderLimitError:
        raise
    except TemplateError as e:
        return f"the template cannot render the prompt of this turn ({e})"
    if not own.startswith(prompt):
        return NOT_FROM_PROMPT
    if not messages[i]["content"]:
        return _turn_without_content(t, r, messages, i, text, prompt, own)
    try:
        probed = r.probed(i + 1, i, _PROBE, False)
    except TemplateError as e:
        return f"the template cannot render it with other content ({e})"
    if probed.count(_PROBE) != 1:
        return ("the template writes its content more than once" if probed.count(_PROBE) > 1
                else "the template does not write its content as given " + TRANSFORMS)
    after = probed[probed.index(_PROBE) + len(_PROBE):]
    content_end = len(own) - len(after)
    if not own.endswith(after) or content_end < len(prompt):
        return "its content cannot be located in its own rendering"
    # The trained text is the record's content as the model must generate it: what the template
    # writes before a probe content (an opener), then the content itself (trimmed at most).
    # (Or the content alone, where it is laid out as the template lays it out: a think block.)
    opener = probed[len(prompt):probed.index(_PROBE)] if probed.startswith(prompt) else ""
    written, forms = own[len(prompt):content_end], _forms(messages[i]["content"])
    if written not in forms and not (written.startswith(opener) and written[len(opener):] in forms):
        return (f"the template writes {written[:80]!r} where the record's answer is "
                f"{messages[i]['content'][:80]!r} " + TRANSFORMS)
    control = _sorted_control(t)
    w_a, run_a = _control_run(after, control)
    nxt = messages[i + 1] if i + 1 < len(messages) else {"role": "user", "content": _PROBE_NEXT}
    try:
        cont = r.probed(i + 1, i, _PROBE, False, then=nxt)
        k = cont.find(_PROBE)
        w_b, run_b = _control_run(cont[k + len(_PROBE):], control) if k >= 0 else (0, [])
    except RenderLimitError:
        raise
    except TemplateError:
        w_b, run_b = 0, []
    common = []
    if after[:w_a] == cont[k + len(_PROBE):][:w_b]:
        for a, b in zip(run_a, run_b):
            if a != b:
                break
            common.append(a)
    stop_run = common or run_a
    eos = t.special.get("eos_token")
    if eos in stop_run[:-1]:  # the run went on into the next turn's opener (a generation prompt always written)
        stop_run = stop_run[:len(stop_run) - stop_run[::-1].index(eos)]
    if stop_run:
        stop = after[:w_a] + "".join(stop_run)
        generated = own[len(prompt):content_end] + stop
        if text.startswith(prompt) and text.startswith(generated, len(prompt)):
            end = len(prompt) + len(generated)
            return Turn(i, len(prompt), end, end - len(stop)), ""
        return "rerendered"
    if not run_b:
        return _no_stop_reason(t)
    # No stop of its own: the control token that begins the next turn ends this one.
    stop = (cont[k + len(_PROBE):][:w_b]) + run_b[0]
    return _place_stop(i, len(messages), text, prompt, own[len(prompt):content_end], stop, w_b)


def _place_stop(i: int, n_messages: int, text: str, prompt: str, generated: str, stop: str, w: int):
    """The turn of message ``i`` in the whole rendering ``text``: ``generated`` right after ``prompt``,
    then ``stop`` (its first ``w`` characters are whitespace). A final turn whose rendering has no
    stop gets it appended (whitespace already there is kept): ``(Turn, appended text)``;
    ``"rerendered"`` where the rendering does not hold the turn as generated."""
    start = len(prompt)
    if not (text.startswith(prompt) and text.startswith(generated, start)):
        return "rerendered"
    end_content = start + len(generated)
    if text.startswith(stop, end_content):
        return Turn(i, start, end_content + len(stop), end_content), ""
    if i + 1 == n_messages:
        ws = stop[:w]
        if ws and text.startswith(ws, end_content):  # the whitespace is there already
            end_content += len(ws)
            stop = stop[w:]
        return Turn(i, start, end_content + len(stop), end_content, appended=True), stop
    return "rerendered"


def _turn_without_content(t: ChatTemplate, r: _Renders, messages: list[dict], i: int, text: str, prompt: str,
                          own: str):
    """The turn of an assistant message with no text content (tool calls, perhaps reasoning): all the
    template writes after the generation prompt is generated, up to and including its stop: the
    control tokens at the end of a run in the turn that the template also writes there when the
    conversation goes on (so an opener such as ``[TOOL_CALLS]`` is generated, the stop ends the turn,
    and an eos written once after the whole conversation is not part of it). Where the turn has no
    control token of its own, the one that begins the next turn is the stop, as for text turns."""
    after = own[len(prompt):]
    control = _sorted_control(t)
    runs, pos = [], 0  # (start, [control tokens]) of each run of control tokens in the turn
    while True:
        found = [(k, c) for c in control if (k := after.find(c, pos)) >= 0]
        if not found:
            break
        k, c = min(found, key=lambda kc: (kc[0], -len(kc[1])))
        if runs and runs[-1][0] + sum(map(len, runs[-1][1])) == k:
            runs[-1][1].append(c)
        else:
            runs.append((k, [c]))
        pos = k + len(c)
    nxt = messages[i + 1] if i + 1 < len(messages) else {"role": "user", "content": _PROBE_NEXT}
    try:
        cont = r.probed(i + 1, i, "", False, then=nxt)
    except RenderLimitError:
        raise
    except TemplateError:
        cont = None
    cont_after = cont[len(prompt):] if cont is not None and cont.startswith(prompt) else None
    start = len(prompt)
    if runs:
        stop = (runs[-1][0], runs[-1][0] + sum(map(len, runs[-1][1])))
        if cont_after is not None:
            k_next = cont_after.find(nxt["content"]) if nxt["content"] else -1
            before_next = cont_after[:k_next] if k_next >= 0 else cont_after
            stop = next(((k, k + len("".join(toks[:n]))) for k, toks in reversed(runs)
                         for n in range(len(toks), 0, -1) if after[:k] + "".join(toks[:n]) in before_next
                         and before_next.find(after[k:k + len("".join(toks[:n]))]) >= 0), stop)
        generated = after[:stop[1]]
        if not (text.startswith(prompt) and text.startswith(generated, start)):
            return "rerendered"
        return Turn(i, start, start + stop[1], start + stop[0]), ""
    # No control token of its own: the control token that begins the next turn ends this one.
    if cont_after is None or not cont_after.startswith(after.rstrip()):
        return _no_stop_reason(t)
    body = after.rstrip()
    w, run = _control_run(cont_after[len(body):], control)
    if not run:
        return _no_stop_reason(t)
    stop = cont_after[len(body):][:w] + run[0]
    return _place_stop(i, len(messages), text, prompt, body, stop, w)


_TOKEN_LIKE = re.compile(r"<\|[A-Za-z0-9_]+\|>|<(?:start|end)_of_turn>")


def _no_stop_reason(t: ChatTemplate) -> str:
    """Why a turn has no stop; where the template writes token-like text (``<|eot_id|>``,
    ``<end_of_turn>``) that this tokenizer does not have as a control token, that is the cause."""
    reason = ("the template writes no stop sequence after it and no control token begins the next turn, "
              "so the model could not learn to stop")
    lacking = [x for x in dict.fromkeys(_TOKEN_LIKE.findall(t.source or "")) if x not in t.control_tokens]
    if not lacking:
        return reason
    return (f"{reason}: this tokenizer lacks the template's control token(s) {', '.join(lacking[:4])}, so they "
            "are plain text here; use the built-in template of that family (llama3, gemma...), whose role "
            "tokens sftlab adds (sftlab.tokens.templates.add_role_tokens; sftlab train does it itself), add them "
            "to the tokenizer as special tokens, or use the tokenizer's own template")


def _sorted_control(t: ChatTemplate) -> tuple[str, ...]:
    return tuple(sorted((c for c in t.control_tokens if c), key=len, reverse=True))


def _probed_spans(t: ChatTemplate, r: _Renders, messages: list[dict], text: str, add_generation_prompt: bool):
    """``(spans, rewritten)`` for a template that re-renders history or rewrites content, or
    ``None`` when the spans cannot be certified.

    Message i is located by rendering the whole conversation with a probe string as its content:
    when the real rendering is that rendering with the probe replaced by some text, character for
    character, that text is what the template wrote for the content. It is the content's span;
    when it is not the content (as given, or trimmed) the message is ``rewritten``.
    """
    spans, rewritten = [], []
    n = len(messages)
    for i, m in enumerate(messages):
        if not m["content"]:
            continue  # empty content (an assistant turn of tool calls only): nothing of it to locate
        found = _replaced_by_probe(r, n, i, text, add_generation_prompt)
        if found is None:
            found = _followed_by_probe(r, n, i, m["content"], text, add_generation_prompt)
        if found is None:
            found = _bracketed_by_probes(r, n, i, m["content"], text, add_generation_prompt)
        if found is None:
            return None
        if found == ():
            if m["content"].strip() and m["role"] != "assistant":
                raise _missing(t, i, m["role"])
            if m["content"].strip():
                rewritten.append(i)  # history the template leaves out (earlier answers): context only
            continue
        start, end = found
        if text[start:end] not in _forms(m["content"]):
            rewritten.append(i)
        eot_end = _eot_end(text, end, len(text), t.end_of_turn) if m["role"] == "assistant" else None
        spans.append(Span(i, m["role"], start, end, eot_end))
    return tuple(spans), tuple(rewritten)


def _render_probe(r: _Renders, n: int, i: int, content: str, add_generation_prompt: bool):
    """The rendering with message i's content replaced, and the probe's one position in it.
    Raises ``_Duplicated`` when the template writes the probe more than once."""
    try:
        rendered = r.probed(n, i, content, add_generation_prompt)
    except RenderLimitError:
        raise
    except TemplateError:
        return None, -1
    k = rendered.find(_PROBE)
    if k >= 0 and rendered.find(_PROBE, k + 1) >= 0:
        raise _Duplicated(f"template '{r.t.name}' writes the content of message {i} ({r.messages[i]['role']}) more "
                          f"than once; which copy the model sees as its own text is undefined, so its tokens cannot "
                          f"be masked exactly")
    return rendered, k


def _replaced_by_probe(r, n, i, text, add_generation_prompt):
    """``(start, end)`` of what the template writes for message i's content, ``()`` when it writes
    nothing, ``None`` when the rendering with the probe as content does not certify it."""
    rendered, k = _render_probe(r, n, i, _PROBE, add_generation_prompt)
    if rendered is None:
        return None
    if k < 0:
        return () if rendered == text else None
    after = rendered[k + len(_PROBE):]
    end = len(text) - len(after)
    if end < k or not text.startswith(rendered[:k]) or not text.endswith(after):
        return None
    return k, end


def _followed_by_probe(r, n, i, content, text, add_generation_prompt):
    """``(start, end)`` of message i's verbatim content, certified by rendering it with the probe
    appended: for templates that lay content out by its own structure (a reasoning block), which
    a bare probe would not have. ``None`` when that does not certify it."""
    rendered, p = _render_probe(r, n, i, content + _PROBE, add_generation_prompt)
    if rendered is None or p < 0 or rendered[:p] != text[:p] or rendered[p + len(_PROBE):] != text[p:]:
        return None
    # The probe follows the content, so only leading whitespace can have been trimmed.
    form = next((f for f in (content, content.lstrip()) if f and text.endswith(f, 0, p)), None)
    return (p - len(form), p) if form is not None else None


def _bracketed_by_probes(r, n, i, content, text, add_generation_prompt):
    """``(start, end)`` of what the template writes in message i's place, certified by two renderings
    that keep the content as it is (so a flag the template reads from it, such as SmolLM3's
    ``/no_think`` in the system message, keeps its effect): the probe put before the content is the
    real rendering with the probe inserted at ``start``, and with the probe put after it the rendering
    agrees with the real one before ``start`` and from ``end`` on. What lies between is the template's
    text for this message (it may strip or rewrite the content there). ``None`` when either fails."""
    before, k = _render_probe(r, n, i, _PROBE + content, add_generation_prompt)
    if before is None or k < 0 or before[:k] != text[:k] or before[k + len(_PROBE):] != text[k:]:
        return None
    after_probe, p = _render_probe(r, n, i, content + _PROBE, add_generation_prompt)
    if after_probe is None or p < k or after_probe[:k] != text[:k]:
        return None
    after = after_probe[p + len(_PROBE):]
    end = len(text) - len(after)
    if end < k or not text.endswith(after):
        return None
    return k, end


def _incremental_spans(t: ChatTemplate, r: _Renders, messages: list[dict], text: str) -> tuple[Span, ...]:
    """Content spans from the renderings of each prefix of the conversation (see the module docstring).

    A prefix the template refuses to render on its own (a system message without a user turn) is
    not rendered alone: its messages are located in the next prefix the template accepts.
    """
    spans = []
    try:
        region_start = len(os.path.commonprefix([r.prefix(0, False), text])) if messages else 0
    except TemplateError:
        region_start = 0
    deferred: list[int] = []  # messages located in a later region (a folded system message, ...)
    closing: str | None = None  # what the template writes once after the last message (e.g. eos)
    for i, m in enumerate(messages):
        try:
            prefix = r.prefix(i + 1, False)
        except RenderLimitError:
            raise
        except TemplateError:
            if i + 1 < len(messages):
                deferred.append(i)  # the template accepts this prefix only with what follows
                continue
            raise
        region_end = len(prefix)
        if not text.startswith(prefix):
            common = len(os.path.commonprefix([prefix, text]))
            tail = prefix[common:]
            if closing is None:
                closing = tail
            if tail != closing or not text.endswith(tail) or i + 1 == len(messages):
                raise _PrefixUnstable(
                    f"template '{t.name}' is not prefix-stable: rendering messages[:{i + 1}] is not a prefix "
                    f"of the whole conversation (the template re-renders earlier turns), so message spans "
                    f"cannot be derived exactly")
            region_end = common
        for j in deferred:
            start = _placed(r, j, text, region_start, region_end, i + 1)
            if start is None:
                start = _find_content(text, messages[j]["content"], region_start, region_end, last=False)
            if start is None:
                if not messages[j]["content"].strip():
                    continue
                raise _not_verbatim(t, j, messages[j]["role"])
            spans.append(_span(text, messages[j], j, start, region_end, t.end_of_turn))
            region_start = spans[-1].end
        deferred = []
        start = _placed(r, i, text, region_start, region_end, i + 1)
        if start is None:
            search_from = region_start
            if m["role"] == "assistant":
                try:
                    gp = r.prefix(i, True)
                except RenderLimitError:
                    raise
                except TemplateError:
                    gp = ""
                if text.startswith(gp) and len(gp) >= region_start:
                    search_from = len(gp)
            start = _find_content(text, m["content"], search_from, region_end)
        if start is None:
            if m["role"] == "system" and i + 1 < len(messages):
                deferred.append(i)
                continue
            if not m["content"].strip():
                continue  # empty content: nothing of it reaches the tokens
            raise _not_verbatim(t, i, m["role"])
        spans.append(_span(text, m, i, start, region_end, t.end_of_turn))
        region_start = region_end
    for j in deferred:
        if messages[j]["content"].strip():
            raise _not_verbatim(t, j, messages[j]["role"])
    return tuple(sorted(spans, key=lambda s: s.index))


def _placed(r: _Renders, i: int, text: str, lo: int, hi: int, n: int) -> int | None:
    """Where message i's content starts: where the template puts a probe content in its place.

    Found by rendering ``messages[:n]`` with the probe as message i's content; the position is used
    when the rendering agrees with ``text`` up to it and the content (as it is, or trimmed) is
    there. A search for the content itself can land in scaffolding that happens to contain the
    same characters (an answer "d" inside ``<|im_end|>``); the probe cannot. ``None`` when the
    template does not place the probe (it folds the message elsewhere, or rewrites the content);
    the caller then searches.
    """
    rendered, k = _render_probe(r, n, i, _PROBE, False)
    if rendered is None or not lo <= k <= hi or not text.startswith(rendered[:k]):
        return None
    content = r.messages[i]["content"]
    if _content_at(text, content, k) is None and content.strip():
        return None
    return k


def _forms(content: str) -> tuple[str, ...]:
    """``content`` as given and with whitespace trimmed (templates often trim), in that order."""
    return tuple(dict.fromkeys((content, content.lstrip(), content.rstrip(), content.strip())))


def _content_at(text: str, content: str, start: int) -> str | None:
    """The form of ``content`` (see ``_forms``) that ``text`` has at ``start``."""
    for c in _forms(content):
        if c and text.startswith(c, start):
            return c
    return None


def _span(text: str, m: dict, i: int, start: int, region_end: int, end_of_turn: tuple[str, ...]) -> Span:
    content = _content_at(text, m["content"], start) or ""
    end = start + len(content)
    eot_end = _eot_end(text, end, region_end, end_of_turn) if m["role"] == "assistant" else None
    return Span(i, m["role"], start, end, eot_end)


def _not_verbatim(t: ChatTemplate, i: int, role: str) -> TemplateError:
    return _NotVerbatim(
        f"template '{t.name}' transforms message {i} ({role}) so that its content does not "
        f"appear verbatim in the rendering; its tokens cannot be masked exactly")


def _missing(t: ChatTemplate, i: int, role: str) -> TemplateError:
    return TemplateError(
        f"template '{t.name}' drops the content of message {i} ({role}): the model would be trained "
        f"without text the record gives it; remove that message or use a template that renders it")


def _find_content(text: str, content: str, lo: int, hi: int, last: bool = True) -> int | None:
    """Start of ``content`` (or its stripped form: templates often trim) within ``text[lo:hi]``.

    By default the last occurrence: scaffolding comes before the content and may contain its text
    by accident (content "user" in ``<|im_start|>user\n``). A folded system prompt comes first.
    """
    for c in (content, content.strip()):
        if not c:
            continue
        k = text.rfind(c, lo, hi) if last else text.find(c, lo, hi)
        if k >= 0:
            return k
    return None


def _eot_end(text: str, end: int, region_end: int, end_of_turn: tuple[str, ...]) -> int | None:
    """End of the end-of-turn marker right after assistant content (whitespace allowed before it)."""
    for marker in end_of_turn:
        k = text.find(marker, end, region_end)
        if k >= 0 and not text[end:k].strip():
            return k + len(marker)
    return None


def _probe_content_parts(source: str, special: dict) -> bool:
    """Whether the template iterates over content parts: a probe given as a string does not reach
    the rendering, the same probe given as one text part does, and not as the printed list (a
    template that filters its content, ``|truncate`` or ``|title``, loses a string probe too, and
    writes a list as its Python or JSON text: that is no content-parts template)."""
    t = ChatTemplate("probe", source, (), (), "", special)
    msgs = [{"role": "user", "content": _PROBE}]
    try:
        if _PROBE in _render_jinja(t, msgs, True):
            return False
    except RenderLimitError:
        raise
    except TemplateError:
        pass
    try:
        text = _render_jinja(ChatTemplate("probe", source, (), (), "", special, content_parts=True), msgs, True)
    except RenderLimitError:
        raise
    except TemplateError:
        return False
    part = [{"type": "text", "text": _PROBE}]
    return _PROBE in text and str(part) not in text and json.dumps(part) not in text


def _probe_end_of_turn(source: str, special: dict, control: tuple[str, ...], parts: bool) -> tuple[str, ...]:
    """The control tokens of the stop sequence the template trains at the end of an assistant turn,
    read from the turns of a probe conversation (one turn, and two)."""
    t = ChatTemplate("probe", source, control, (), "", special, content_parts=parts)
    found: list[str] = []
    control_sorted = _sorted_control(t)
    for msgs in ([{"role": "user", "content": "ping"}, {"role": "assistant", "content": "PONG-7f3a"}],
                 [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "PONG-7f3a"},
                  {"role": "user", "content": "again"}, {"role": "assistant", "content": "PONG-8e4b"}]):
        try:
            lay = _jinja_layout(t, msgs, False)
        except RenderLimitError:
            raise
        except TemplateError:
            continue
        for turn in lay.turns:
            _, run = _control_run(lay.text[turn.stop_start:turn.end], control_sorted)
            found.extend(run)
    return tuple(dict.fromkeys(found))


def reasoning_tags(source: str) -> tuple[tuple[str, str], ...]:
    """The (opener, closer) pairs of inline reasoning: ``<think>``/``</think>``, and a tag pair of
    that kind the template writes itself (``<seed:think>``, ``<thinking>``), first.

        >>> reasoning_tags("{{ '<seed:think>' + r + '</seed:think>' }}")
        (('<seed:think>', '</seed:think>'), ('<think>', '</think>'))
    """
    import re

    from sftlab.data.conversation import THINK_TAGS

    found = [(f"<{t}>", f"</{t}>") for t in dict.fromkeys(re.findall(r"<((?:\w+:)?think(?:ing)?)>", source))
             if f"</{t}>" in source]
    return tuple(dict.fromkeys(found + list(THINK_TAGS)))


def special_strings(tokenizer) -> dict:
    """Special-token variables a chat template may use (``bos_token``, ``eos_token``, ...)."""
    if tokenizer is None:
        return {}
    out = {}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            out[name] = str(v)
    return out


def control_token_strings(tokenizer) -> tuple[str, ...]:
    """Every special added token of the tokenizer (these are control tokens, never content)."""
    if tokenizer is None:
        return ()
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    toks = [t.content for t in decoder.values() if getattr(t, "special", False)]
    toks += [str(t) for t in getattr(tokenizer, "all_special_tokens", [])]
    return tuple(dict.fromkeys(toks))


def _fingerprint(source: str, control: tuple[str, ...], eot: tuple[str, ...], tok_sha: str | None) -> str:
    return config_hash({"source": source, "control_tokens": list(control), "end_of_turn": list(eot),
                        "tokenizer": tok_sha})


def get_template(name: str | None, tokenizer=None) -> ChatTemplate:
    """A built-in format by name, or (``name=None``) the tokenizer's own ``chat_template``.

    ``name`` may also be a Jinja source string (anything containing ``{%`` or ``{{``) or the path
    of a Jinja file (the peers' ``chat_template`` file option: a ``.jinja``/``.j2`` name, or any
    existing file). A file's template is treated exactly as a tokenizer's own: rendered in the same
    sandbox, probed for its end-of-turn marker, and fingerprinted by its source, so editing the file
    changes the fingerprint (and the prepared-data key). Its label is ``file:<name>``.
    """
    special = special_strings(tokenizer)
    tok_sha = tokenizer_sha256(tokenizer)
    if name is not None and name in _FORMATS:
        f = _FORMATS[name]
        eos = special.get("eos_token", "")
        if "{eos}" in "".join(f.eot) and not eos:
            raise TemplateError(f"the {name} format ends turns with the tokenizer's eos token, "
                                f"but the tokenizer has none")
        eot = tuple(e.replace("{eos}", eos) for e in f.eot)
        known = set(control_token_strings(tokenizer)) if tokenizer is not None else None
        extra = tuple(c for c in f.extra_control if c not in f.text_markers or known is None or c in known)
        control = tuple(dict.fromkeys(c for c in (f.bos, *eot, *extra, f.closing.replace("{eos}", eos)) if c))
        from sftlab.tokens.tool_formats import jinja_prelude

        source = jinja_prelude(f.name) + _format_jinja(f)
        return ChatTemplate(name, source, control, eot, _fingerprint(source, control, eot, tok_sha),
                            special, f)
    if name is None:
        source = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        if isinstance(source, dict):  # several named templates: the default one
            source = source.get("default")
        if not source:
            raise TemplateError("the tokenizer has no chat_template; pass a built-in template name "
                                f"({', '.join(BUILTIN_TEMPLATES)}) or a Jinja template")
        label = "tokenizer"
    elif "{%" in name or "{{" in name:
        source, label = name, "custom"
    elif _is_template_file(name):
        source, label = _read_template_file(name), f"file:{os.path.basename(name)}"
    else:
        raise TemplateError(f"unknown template '{name}'; built-in templates: {', '.join(BUILTIN_TEMPLATES)} "
                            "(or leave it unset to use the tokenizer's own chat_template)")
    try:
        _compiled(source)
    except Exception as e:  # a syntax error: nothing can be rendered, say so once
        raise TemplateError(f"template '{label}' does not compile: {type(e).__name__}: {e}") from None
    control = control_token_strings(tokenizer)
    parts = _probe_content_parts(source, special)
    eot = _probe_end_of_turn(source, special, control, parts)
    return ChatTemplate(label, source, control, eot, _fingerprint(source, control, eot, tok_sha), special,
                        content_parts=parts)


_TEMPLATE_SUFFIXES = (".jinja", ".jinja2", ".j2")


def _is_template_file(name: str) -> bool:
    return name.lower().endswith(_TEMPLATE_SUFFIXES) or os.path.isfile(name)


def _read_template_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_TEMPLATE_FILE_BYTES + 1)
    except OSError as e:
        raise TemplateError(f"template file {path}: cannot read it ({e.strerror or e}); expected a Jinja "
                            "chat template file, a built-in name or a Jinja string") from None
    if len(data) > _MAX_TEMPLATE_FILE_BYTES:
        raise TemplateError(f"template file {path}: larger than {_MAX_TEMPLATE_FILE_BYTES:,} bytes; "
                            "expected a chat template (a few KB)")
    try:
        source = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TemplateError(f"template file {path}: not UTF-8 text (byte {e.start}); expected a Jinja "
                            "chat template") from None
    if not source.strip():
        raise TemplateError(f"template file {path}: empty; expected a Jinja chat template")
    return source


_MAX_TEMPLATE_FILE_BYTES = 1 << 20


def missing_control_tokens(template: ChatTemplate, tokenizer) -> list[str]:
    """Control tokens the template writes that the tokenizer does not know as special tokens."""
    known = set(control_token_strings(tokenizer))
    return [t for t in template.control_tokens if t not in known]


def install_template(tokenizer, template: ChatTemplate):
    """Set the template's Jinja source as the tokenizer's ``chat_template`` (in place; returns it)."""
    tokenizer.chat_template = template.source
    return tokenizer


def add_role_tokens(tokenizer, model, template: ChatTemplate) -> dict:
    """Add the template's missing control tokens as special tokens and grow the embeddings.

    New embedding rows (input and, when untied, output) are set to the mean of the existing rows,
    so a new role token starts as an "average" token instead of noise. Returns the record that
    goes into the manifest: ``{"added": [...], "vocab_before": n, "vocab_after": m, "init": "mean"}``.
    """
    missing = missing_control_tokens(template, tokenizer)
    record = {"added": missing, "vocab_before": len(tokenizer), "vocab_after": len(tokenizer), "init": "mean"}
    if not missing:
        return record
    tokenizer.add_tokens(missing, special_tokens=True)  # the same call in transformers 4 and 5
    if model is not None:
        grow_embeddings(model, len(tokenizer))
    record["vocab_after"] = len(tokenizer)
    return record


def grow_embeddings(model, size: int) -> None:
    """Resize ``model``'s embeddings (and an untied output layer) to ``size`` rows when it has fewer,
    each new row the mean of the old ones: how role tokens start in training, and how a LoRA
    adapter's base is grown again to its tokenizer on load."""
    import torch

    old = model.get_input_embeddings().weight.shape[0]
    if size <= old:
        return
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[old:] = emb[:old].mean(dim=0, keepdim=True)
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():
            out.weight[old:] = out.weight[:old].mean(dim=0, keepdim=True)

