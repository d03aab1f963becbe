"""Where each message's content lies in the rendering of a Jinja chat template (content spans).

The content of message i lies between the rendering of ``messages[:i]`` and that of
``messages[:i+1]``, at the place where the template puts a probe string given as message i's
content (``incremental_spans``). Templates that re-render history are certified on the whole
rendering instead (``probed_spans``): the conversation rendered with a probe in one message's place
must equal the real rendering outside that message; where a probe in the content's place changes
the rendering elsewhere (the template reads a flag from the content, as SmolLM3 reads ``/no_think``
from the system message), the place is bracketed by the probe put before and after the content as
it is. A template that writes a message's content more than once, or drops the content of a
message, is refused: its masks could not be exact.

Example::

    >>> from sftlab.tokens.templates import get_template
    >>> t = get_template("{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}")
    >>> msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    >>> r = Renders(t, msgs)
    >>> [(s.index, s.start, s.end) for s in incremental_spans(t, r, msgs, r.prefix(2, False))]
    [(0, 6, 8), (1, 23, 25)]
"""
from __future__ import annotations

import os
from sftlab.tokens.jinja_render import render_jinja
from sftlab.tokens.layout import Span
from sftlab.tokens.template_errors import RenderLimitError, TemplateError

# ``ChatTemplate`` in annotations is sftlab.tokens.templates's (not imported: that module imports this one).

__all__ = ["PROBE", "PROBE_NEXT", "Renders", "PrefixUnstable", "NotVerbatim", "incremental_spans", "probed_spans",
           "forms"]

PROBE = "sftlab0probe0c7e1f"
PROBE_NEXT = "sftlab0probe0next0a9d2"


class Renders:
    """Renderings of one conversation and of its probe variants, each made once."""

    def __init__(self, t: ChatTemplate, messages: list[dict], tools: list | None = None):
        self.t, self.messages, self.tools, self.memo = t, messages, tools, {}

    def _get(self, key, build):
        if key not in self.memo:
            try:
                self.memo[key] = render_jinja(self.t, build(), key[-1], self.tools)
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


class PrefixUnstable(TemplateError):
    """A prefix rendering is not a prefix of the whole rendering."""


class NotVerbatim(TemplateError):
    """A message's content is not in the rendering as it was given (or trimmed)."""


class _Duplicated(TemplateError):
    """The template writes a message's content more than once."""


def probed_spans(t: ChatTemplate, r: Renders, messages: list[dict], text: str, add_generation_prompt: bool):
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
        if text[start:end] not in forms(m["content"]):
            rewritten.append(i)
        eot_end = _eot_end(text, end, len(text), t.end_of_turn) if m["role"] == "assistant" else None
        spans.append(Span(i, m["role"], start, end, eot_end))
    return tuple(spans), tuple(rewritten)


def _render_probe(r: Renders, n: int, i: int, content: str, add_generation_prompt: bool):
    """The rendering with message i's content replaced, and the probe's one position in it.
    Raises ``_Duplicated`` when the template writes the probe more than once."""
    try:
        rendered = r.probed(n, i, content, add_generation_prompt)
    except RenderLimitError:
        raise
    except TemplateError:
        return None, -1
    k = rendered.find(PROBE)
    if k >= 0 and rendered.find(PROBE, k + 1) >= 0:
        raise _Duplicated(f"template '{r.t.name}' writes the content of message {i} ({r.messages[i]['role']}) more "
                          f"than once; which copy the model sees as its own text is undefined, so its tokens cannot "
                          f"be masked exactly")
    return rendered, k


def _replaced_by_probe(r, n, i, text, add_generation_prompt):
    """``(start, end)`` of what the template writes for message i's content, ``()`` when it writes
    nothing, ``None`` when the rendering with the probe as content does not certify it."""
    rendered, k = _render_probe(r, n, i, PROBE, add_generation_prompt)
    if rendered is None:
        return None
    if k < 0:
        return () if rendered == text else None
    after = rendered[k + len(PROBE):]
    end = len(text) - len(after)
    if end < k or not text.startswith(rendered[:k]) or not text.endswith(after):
        return None
    return k, end


def _followed_by_probe(r, n, i, content, text, add_generation_prompt):
    """``(start, end)`` of message i's verbatim content, certified by rendering it with the probe
    appended: for templates that lay content out by its own structure (a reasoning block), which
    a bare probe would not have. ``None`` when that does not certify it."""
    rendered, p = _render_probe(r, n, i, content + PROBE, add_generation_prompt)
    if rendered is None or p < 0 or rendered[:p] != text[:p] or rendered[p + len(PROBE):] != text[p:]:
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
    before, k = _render_probe(r, n, i, PROBE + content, add_generation_prompt)
    if before is None or k < 0 or before[:k] != text[:k] or before[k + len(PROBE):] != text[k:]:
        return None
    after_probe, p = _render_probe(r, n, i, content + PROBE, add_generation_prompt)
    if after_probe is None or p < k or after_probe[:k] != text[:k]:
        return None
    after = after_probe[p + len(PROBE):]
    end = len(text) - len(after)
    if end < k or not text.endswith(after):
        return None
    return k, end


def incremental_spans(t: ChatTemplate, r: Renders, messages: list[dict], text: str) -> tuple[Span, ...]:
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
                raise PrefixUnstable(
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


def _placed(r: Renders, i: int, text: str, lo: int, hi: int, n: int) -> int | None:
    """Where message i's content starts: where the template puts a probe content in its place.

    Found by rendering ``messages[:n]`` with the probe as message i's content; the position is used
    when the rendering agrees with ``text`` up to it and the content (as it is, or trimmed) is
    there. A search for the content itself can land in scaffolding that happens to contain the
    same characters (an answer "d" inside ``<|im_end|>``); the probe cannot. ``None`` when the
    template does not place the probe (it folds the message elsewhere, or rewrites the content);
    the caller then searches.
    """
    rendered, k = _render_probe(r, n, i, PROBE, False)
    if rendered is None or not lo <= k <= hi or not text.startswith(rendered[:k]):
        return None
    content = r.messages[i]["content"]
    if _content_at(text, content, k) is None and content.strip():
        return None
    return k


def forms(content: str) -> tuple[str, ...]:
    """``content`` as given and with whitespace trimmed (templates often trim), in that order."""
    return tuple(dict.fromkeys((content, content.lstrip(), content.rstrip(), content.strip())))


def _content_at(text: str, content: str, start: int) -> str | None:
    """The form of ``content`` (see ``forms``) that ``text`` has at ``start``."""
    for c in forms(content):
        if c and text.startswith(c, start):
            return c
    return None


def _span(text: str, m: dict, i: int, start: int, region_end: int, end_of_turn: tuple[str, ...]) -> Span:
    content = _content_at(text, m["content"], start) or ""
    end = start + len(content)
    eot_end = _eot_end(text, end, region_end, end_of_turn) if m["role"] == "assistant" else None
    return Span(i, m["role"], start, end, eot_end)


def _not_verbatim(t: ChatTemplate, i: int, role: str) -> TemplateError:
    return NotVerbatim(
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

