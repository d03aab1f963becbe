"""Chat templates: how a conversation becomes text, and where each message's content lies in it.

A ``ChatTemplate`` is either one of the built-in formats (``chatml``, ``llama3``, ``mistral``,
``gemma``, ``zephyr``, ``phi3``, ``alpaca``) or the Jinja ``chat_template`` of a Hugging Face
tokenizer, rendered with transformers' sandboxed Jinja environment. Either way it produces a
``Layout``: the rendered text plus the character span of every message's content. Encoding
(``sftlab.tokens.encoding``) turns that into token ids and loss weights; nothing here tokenizes.

Built-in formats are data (``_Format``): a fast Python renderer that records spans while it
concatenates, and the equivalent Jinja source (with ``{% generation %}`` markers) that is installed
into the tokenizer of a trained model, so ``apply_chat_template`` reproduces the training text.
A test checks that both renderings agree for every built-in.

For a Jinja template the spans are derived from incremental renderings: the content of message i
lies between the rendering of ``messages[:i]`` and that of ``messages[:i+1]``, at the place where
the template puts a probe string given as message i's content (so an answer "d" is found where
the answer is, not inside ``<|im_end|>``). That holds only when each prefix rendering is a prefix
of the whole rendering, up to a closing string the template writes once after the last message
(an eos). Templates that re-render history (for example by dropping earlier reasoning) or
rewrite content are detected and reported, never silently mis-masked: their spans are then
certified on the whole rendering (the conversation rendered with a probe in one message's place
must equal the real rendering outside that message), and the ``Layout`` lists the messages that
are not rendered as the model generates them (``rerendered``) or not verbatim (``rewritten``);
``sftlab.tokens.encoding`` refuses to train those, so only a final turn can be trained with such templates.

Example::

    >>> t = get_template("chatml")
    >>> lay = t.layout([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    >>> lay.text
    '<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\nyo<|im_end|>\\n'
    >>> [(lay.text[s.start:s.end], s.eot_end and lay.text[s.end:s.eot_end]) for s in lay.spans]
    [('hi', None), ('yo', '<|im_end|>')]
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from sftlab.fingerprints import config_hash, tokenizer_sha256

BUILTIN_TEMPLATES = ("chatml", "llama3", "mistral", "gemma", "zephyr", "phi3", "alpaca")


class TemplateError(ValueError):
    """The template cannot render this conversation exactly (reason in the message)."""


@dataclass(frozen=True)
class Span:
    """Where message ``index``'s content lies in the rendered text (``text[start:end]``).

    ``eot_end`` is set for assistant messages only: ``text[end:eot_end]`` is the end-of-turn
    marker the template writes right after the content (for example ``<|im_end|>``), which is
    trained with the content; ``None`` when the template writes none.
    """
    index: int
    role: str
    start: int
    end: int
    eot_end: int | None = None


@dataclass(frozen=True)
class Layout:
    text: str
    spans: tuple[Span, ...]
    rerendered: tuple[int, ...] = ()
    """Assistant messages this rendering does not show as the model generates them: the template
    re-renders them once the conversation goes on (for example it drops their reasoning), so
    their tokens here are not what follows the generation prompt at their turn. Their spans are
    exact in this text, but they must not be trained (``sftlab.tokens.encoding`` refuses)."""
    rewritten: tuple[int, ...] = ()
    """Messages whose content the template changes beyond trimming (strips reasoning, upper-cases,
    ...): their span is the text the template wrote in the content's place, which is kept from
    becoming control tokens like content, but cannot be trained (``sftlab.tokens.encoding`` refuses)."""


@dataclass(frozen=True)
class _Format:
    """A built-in chat format. ``{eos}`` in any piece is replaced by the tokenizer's eos token."""
    name: str
    prefix: dict[str, str]            # role -> text before the content
    suffix: dict[str, str]            # role -> text after the content (assistant: starts with the eot)
    eot: tuple[str, ...]              # the end-of-turn marker(s) trained after assistant content
    generation_prompt: str
    bos: str = ""
    merge_system: bool = False        # system text is prepended to the first user message
    default_system: str | None = None
    role_names: dict[str, str] = field(default_factory=dict)  # role -> name written in the header
    extra_control: tuple[str, ...] = ()


_CHATML = _Format(
    "chatml",
    prefix={r: f"<|im_start|>{r}\n" for r in ("system", "user", "assistant", "tool")},
    suffix={r: "<|im_end|>\n" for r in ("system", "user", "assistant", "tool")},
    eot=("<|im_end|>",), generation_prompt="<|im_start|>assistant\n", extra_control=("<|im_start|>",))

_LLAMA3 = _Format(
    "llama3",
    prefix={r: f"<|start_header_id|>{n}<|end_header_id|>\n\n" for r, n in
            (("system", "system"), ("user", "user"), ("assistant", "assistant"), ("tool", "ipython"))},
    suffix={r: "<|eot_id|>" for r in ("system", "user", "assistant", "tool")},
    eot=("<|eot_id|>",), generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
    bos="<|begin_of_text|>", extra_control=("<|start_header_id|>", "<|end_header_id|>"))

_MISTRAL = _Format(
    "mistral",
    prefix={"user": "[INST] ", "assistant": ""},
    suffix={"user": " [/INST]", "assistant": "</s>"},
    eot=("</s>",), generation_prompt="", bos="<s>", merge_system=True,
    extra_control=("[INST]", "[/INST]"))

_GEMMA = _Format(
    "gemma",
    prefix={"user": "<start_of_turn>user\n", "assistant": "<start_of_turn>model\n"},
    suffix={"user": "<end_of_turn>\n", "assistant": "<end_of_turn>\n"},
    eot=("<end_of_turn>",), generation_prompt="<start_of_turn>model\n", bos="<bos>", merge_system=True,
    extra_control=("<start_of_turn>",))

_ZEPHYR = _Format(
    "zephyr",
    prefix={r: f"<|{r}|>\n" for r in ("system", "user", "assistant")},
    suffix={r: "</s>\n" for r in ("system", "user", "assistant")},
    eot=("</s>",), generation_prompt="<|assistant|>\n", extra_control=("<|system|>", "<|user|>", "<|assistant|>"))

_PHI3 = _Format(
    "phi3",
    prefix={r: f"<|{r}|>\n" for r in ("system", "user", "assistant")},
    suffix={r: "<|end|>\n" for r in ("system", "user", "assistant")},
    eot=("<|end|>",), generation_prompt="<|assistant|>\n", extra_control=("<|system|>", "<|user|>", "<|assistant|>"))

_ALPACA = _Format(
    "alpaca",
    prefix={"system": "", "user": "### Instruction:\n", "assistant": "### Response:\n"},
    suffix={"system": "\n\n", "user": "\n\n", "assistant": "{eos}\n\n"},
    eot=("{eos}",), generation_prompt="### Response:\n",
    default_system="Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")

_FORMATS = {f.name: f for f in (_CHATML, _LLAMA3, _MISTRAL, _GEMMA, _ZEPHYR, _PHI3, _ALPACA)}


def _jinja_str(s: str) -> str:
    """A Jinja expression for the literal ``s`` (``{eos}`` becomes the ``eos_token`` variable)."""
    parts = s.split("{eos}")
    out = " + eos_token + ".join(json.dumps(p) for p in parts)
    return out.replace('"" + ', "").replace(' + ""', "") or '""'


def _format_jinja(f: _Format) -> str:
    """The Jinja source equivalent to ``_Format`` rendering, with ``{% generation %}`` markers."""
    # The assistant suffix is the trained end-of-turn marker followed by untrained text.
    a_eot = "".join(f.eot)
    a_after = f.suffix["assistant"][len(a_eot):]
    lines = []
    if f.bos:
        lines.append("{{- " + _jinja_str(f.bos) + " }}")
    if f.default_system is not None:
        lines.append("{%- if messages and messages[0]['role'] != 'system' %}{{- "
                     + _jinja_str(f.default_system + f.suffix["system"]) + " }}{%- endif %}")
    if f.merge_system:
        lines.append("{%- set ns = namespace(system='') %}")
    lines.append("{%- for message in messages %}")
    branches = []
    for role in ("system", "user", "assistant", "tool"):
        if role == "system" and f.merge_system:
            body = "{%- set ns.system = message['content'] + '\\n\\n' %}"
        elif role not in f.prefix:
            body = ("{{- raise_exception('the " + f.name + " format has no " + role + " role') }}")
        elif role == "assistant":
            body = ("{{- " + _jinja_str(f.prefix[role]) + " }}{%- generation %}{{- message['content'] + "
                    + _jinja_str(a_eot) + " }}{%- endgeneration %}"
                    + ("{{- " + _jinja_str(a_after) + " }}" if a_after else ""))
        elif role == "user" and f.merge_system:
            body = ("{{- " + _jinja_str(f.prefix[role]) + " + ns.system + message['content'] + "
                    + _jinja_str(f.suffix[role]) + " }}{%- set ns.system = '' %}")
        else:
            body = ("{{- " + _jinja_str(f.prefix[role]) + " + message['content'] + "
                    + _jinja_str(f.suffix[role]) + " }}")
        branches.append(("{%- if" if not branches else "{%- elif") + f" message['role'] == '{role}' %}}" + body)
    lines.extend(branches)
    lines.append("{%- else %}{{- raise_exception('unknown role: ' + message['role']) }}{%- endif %}")
    lines.append("{%- endfor %}")
    if f.generation_prompt:
        lines.append("{%- if add_generation_prompt %}{{- " + _jinja_str(f.generation_prompt) + " }}{%- endif %}")
    return "".join(lines)


_PIECES: dict = {}


def _format_pieces(f: _Format, eos: str) -> tuple:
    """The format's strings with ``{eos}`` filled in, computed once per (format, eos)."""
    key = (id(f), eos)
    if key not in _PIECES:
        sub = (lambda s: s.replace("{eos}", eos))
        default_system = None if f.default_system is None else sub(f.default_system + f.suffix["system"])
        _PIECES[key] = (f, sub(f.bos), default_system, {r: sub(p) for r, p in f.prefix.items()},
                        {r: sub(p) for r, p in f.suffix.items()}, sub("".join(f.eot)), sub(f.generation_prompt))
    return _PIECES[key][1:]


def _format_layout(f: _Format, messages: list[dict], eos: str, add_generation_prompt: bool) -> Layout:
    """Render with a built-in format, recording each content span as the text is built."""
    bos, default_system, prefixes, suffixes, eot, generation_prompt = _format_pieces(f, eos)
    parts: list[str] = [bos]
    pos = len(bos)
    spans: list[Span] = []
    if default_system is not None and messages and messages[0]["role"] != "system":
        parts.append(default_system)
        pos += len(default_system)
    pending_system: tuple[int, str] | None = None
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role == "system" and f.merge_system:
            pending_system = (i, content)
            continue
        prefix = prefixes.get(role)
        if prefix is None:
            raise TemplateError(f"the {f.name} format has no {role} role")
        parts.append(prefix)
        pos += len(prefix)
        if role == "user" and pending_system is not None:
            spans.append(Span(pending_system[0], "system", pos, pos + len(pending_system[1])))
            parts.append(pending_system[1] + "\n\n")
            pos += len(pending_system[1]) + 2
            pending_system = None
        start = pos
        parts.append(content)
        pos += len(content)
        spans.append(Span(i, role, start, pos, pos + len(eot) if role == "assistant" else None))
        suffix = suffixes[role]
        parts.append(suffix)
        pos += len(suffix)
    if add_generation_prompt:
        parts.append(generation_prompt)
    return Layout("".join(parts), tuple(spans))


@dataclass(frozen=True)
class ChatTemplate:
    """A chat format bound to a tokenizer's special-token strings. See the module docstring."""
    name: str
    source: str
    """Jinja source: what is installed as the tokenizer's ``chat_template``."""
    control_tokens: tuple[str, ...]
    """Strings the template writes as control tokens (role markers, end-of-turn, bos)."""
    end_of_turn: tuple[str, ...]
    """The end-of-turn marker(s) trained after each assistant message."""
    fingerprint: str
    """sha256 of the template source, control tokens, end-of-turn marker(s) and the tokenizer."""
    special: dict = field(compare=False, hash=False, repr=False, default_factory=dict)
    _format: _Format | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def is_builtin(self) -> bool:
        return self._format is not None

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.layout(messages, add_generation_prompt).text

    def layout(self, messages: list[dict], add_generation_prompt: bool = False) -> Layout:
        """The rendered text and the content span of every message (see ``Span``)."""
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        if self._format is not None:
            return _format_layout(self._format, messages, self.special.get("eos_token") or "",
                                  add_generation_prompt)
        return _jinja_layout(self, messages, add_generation_prompt)

    def describe(self) -> dict:
        """The manifest's ``template`` section."""
        return {"name": self.name, "fingerprint": self.fingerprint, "builtin": self.is_builtin,
                "control_tokens": list(self.control_tokens), "end_of_turn": list(self.end_of_turn)}


def _render_jinja(t: ChatTemplate, messages: list[dict], add_generation_prompt: bool) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template(conversations=[messages], chat_template=t.source,
                                            add_generation_prompt=add_generation_prompt, **t.special)
    except Exception as e:  # jinja2 TemplateError, raise_exception(), a template bug
        hint = ""
        if "system" in str(e).lower() and any(m["role"] == "system" for m in messages):
            hint = ("; the template takes no system message: drop it, or use the built-in 'gemma' or "
                    "'mistral' format, which fold it into the first user turn")
        raise TemplateError(f"template '{t.name}' failed to render: {type(e).__name__}: {e}{hint}") from None
    return rendered[0]


class _PrefixUnstable(TemplateError):
    """A prefix rendering is not a prefix of the whole rendering."""


class _NotVerbatim(TemplateError):
    """A message's content is not in the rendering as it was given (or trimmed)."""


def _jinja_layout(t: ChatTemplate, messages: list[dict], add_generation_prompt: bool) -> Layout:
    text = _render_jinja(t, messages, add_generation_prompt)
    try:
        return _incremental_layout(t, messages, text)
    except (_PrefixUnstable, _NotVerbatim):
        probed = _probed_spans(t, messages, text, add_generation_prompt)
        if probed is None:
            raise
    spans, rewritten = probed
    rerendered = tuple(i for i, m in enumerate(messages)
                       if m["role"] == "assistant" and not _as_generated(t, messages, i, text))
    return Layout(text, spans, rerendered, rewritten)


def _probed_spans(t: ChatTemplate, messages: list[dict], text: str, add_generation_prompt: bool):
    """``(spans, rewritten)`` for a template that re-renders history or rewrites content, or
    ``None`` when the spans cannot be certified.

    Message i is located by rendering the whole conversation with a probe string as its content:
    when the real rendering is that rendering with the probe replaced by some text, character for
    character, that text is what the template wrote for the content. It is the content's span;
    when it is not the content (as given, or trimmed) the message is ``rewritten``. A message the
    template does not render at all (the probe appears nowhere and the rendering is the same)
    has no span.
    """
    spans, rewritten = [], []
    for i, m in enumerate(messages):
        found = _replaced_by_probe(t, messages, i, text, add_generation_prompt)
        if found is None:
            found = _followed_by_probe(t, messages, i, text, add_generation_prompt)
        if found is None:
            return None
        if found == ():
            continue  # not rendered: nothing of it reaches the tokens
        start, end = found
        if text[start:end] not in _forms(m["content"]):
            rewritten.append(i)
        eot_end = _eot_end(text, end, len(text), t.end_of_turn) if m["role"] == "assistant" else None
        spans.append(Span(i, m["role"], start, end, eot_end))
    return tuple(spans), tuple(rewritten)


def _render_probe(t: ChatTemplate, messages: list[dict], i: int, content: str, add_generation_prompt: bool):
    """The rendering with message i's content replaced, and the probe's one position in it."""
    try:
        rendered = _render_jinja(t, [*messages[:i], {**messages[i], "content": content}, *messages[i + 1:]],
                                 add_generation_prompt)
    except TemplateError:
        return None, -1
    k = rendered.find(_PROBE)
    if k >= 0 and rendered.find(_PROBE, k + 1) >= 0:
        return None, -1  # the template writes the content twice: no one place to certify
    return rendered, k


def _replaced_by_probe(t, messages, i, text, add_generation_prompt):
    """``(start, end)`` of what the template writes for message i's content, ``()`` when it writes
    nothing, ``None`` when the rendering with the probe as content does not certify it."""
    rendered, k = _render_probe(t, messages, i, _PROBE, add_generation_prompt)
    if rendered is None:
        return None
    if k < 0:
        return () if rendered == text else None
    after = rendered[k + len(_PROBE):]
    end = len(text) - len(after)
    if end < k or not text.startswith(rendered[:k]) or not text.endswith(after):
        return None
    return k, end


def _followed_by_probe(t, messages, i, text, add_generation_prompt):
    """``(start, end)`` of message i's verbatim content, certified by rendering it with the probe
    appended: for templates that lay content out by its own structure (a reasoning block), which
    a bare probe would not have. ``None`` when that does not certify it."""
    content = messages[i]["content"]
    rendered, p = _render_probe(t, messages, i, content + _PROBE, add_generation_prompt)
    if rendered is None or p < 0 or rendered[:p] != text[:p] or rendered[p + len(_PROBE):] != text[p:]:
        return None
    # The probe follows the content, so only leading whitespace can have been trimmed.
    form = next((f for f in (content, content.lstrip()) if f and text.endswith(f, 0, p)), None)
    return (p - len(form), p) if form is not None else None


def _as_generated(t: ChatTemplate, messages: list[dict], i: int, text: str) -> bool:
    """Whether assistant message i appears in ``text`` as the model generates it: after the
    generation prompt of its turn, rendered as it is when it is the last message."""
    try:
        prompt = _render_jinja(t, messages[:i], True)
        own = _render_jinja(t, messages[:i + 1], False)
    except TemplateError:
        return False
    return text.startswith(prompt) and (i + 1 == len(messages) or text.startswith(own))


def _incremental_layout(t: ChatTemplate, messages: list[dict], text: str) -> Layout:
    spans = []
    try:
        region_start = len(_render_jinja(t, [], False)) if messages else 0
    except TemplateError:
        region_start = 0
    deferred: list[int] = []  # system messages some templates fold into the next user turn
    closing: str | None = None  # what the template writes once after the last message (e.g. eos)
    for i, m in enumerate(messages):
        prefix = _render_jinja(t, messages[:i + 1], False)
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
                    f"cannot be derived exactly; use a built-in template or one with stable history")
            region_end = common
        for j in deferred:
            start = _find_content(text, messages[j]["content"], region_start, region_end, last=False)
            if start is None:
                raise _not_verbatim(t, j, messages[j]["role"])
            spans.append(_span(text, messages[j], j, start, region_end, t.end_of_turn))
            region_start = spans[-1].end
        deferred = []
        start = _placed(t, messages, i, text, region_start, region_end)
        if start is None:
            search_from = region_start
            if m["role"] == "assistant":
                gp = _render_jinja(t, messages[:i], True)
                if text.startswith(gp) and len(gp) >= region_start:
                    search_from = len(gp)
            start = _find_content(text, m["content"], search_from, region_end)
        if start is None:
            if m["role"] == "system" and i + 1 < len(messages):
                deferred.append(i)
                continue
            raise _not_verbatim(t, i, m["role"])
        spans.append(_span(text, m, i, start, region_end, t.end_of_turn))
        region_start = region_end
    if deferred:
        raise _not_verbatim(t, deferred[0], "system")
    return Layout(text, tuple(sorted(spans, key=lambda s: s.index)))


_PROBE = "sftlab0probe0c7e1f"


def _placed(t: ChatTemplate, messages: list[dict], i: int, text: str, lo: int, hi: int) -> int | None:
    """Where message i's content starts: where the template puts a probe content in its place.

    Found by rendering ``messages[:i]`` plus message i with the probe as its content; the position
    is used when the rendering agrees with ``text`` up to it and the content (as it is, or
    trimmed) is there. A search for the content itself can land in scaffolding that happens to
    contain the same characters (an answer "d" inside ``<|im_end|>``); the probe cannot.
    ``None`` when the template does not place the probe (it folds the message elsewhere, or
    rewrites the content); the caller then searches.
    """
    rendered, k = _render_probe(t, messages[:i + 1], i, _PROBE, False)
    if rendered is None or not lo <= k <= hi or not text.startswith(rendered[:k]):
        return None
    content = messages[i]["content"]
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


def _find_content(text: str, content: str, lo: int, hi: int, last: bool = True) -> int | None:
    """Start of ``content`` (or its stripped form: templates often trim) within ``text[lo:hi]``.

    By default the last occurrence: scaffolding comes before the content and may contain its text
    by accident (content "user" in ``<|im_start|>user\n``). A folded system prompt comes first.
    """
    for c in (content, content.strip()):
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


def _probe_end_of_turn(source: str, special: dict, control: tuple[str, ...]) -> tuple[str, ...]:
    """The end-of-turn marker a Jinja template writes right after an assistant message's content.

    Read from the ``{% generation %}`` block when the template has one (what it marks after the
    content is the marker), else the control token that directly follows the content.
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    probe = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "PONG-7f3a"}]
    marked = re.search(r"\{%-?\s*generation\s*-?%\}", source) is not None
    try:
        rendered, indices = render_jinja_template(conversations=[probe], chat_template=source,
                                                  return_assistant_tokens_mask=marked, **special)
    except Exception:
        return ()
    text = rendered[0]
    k = text.rfind("PONG-7f3a")
    if k < 0:
        return ()
    after = k + len("PONG-7f3a")
    if marked and indices and indices[0]:
        gen_end = max(e for s_, e in indices[0] if s_ <= k)
        marker = text[after:gen_end].strip(" ")
        if marker:
            return (marker,)
    rest = text[after:].lstrip(" ")
    for tok in sorted(control, key=len, reverse=True):
        if rest.startswith(tok):
            return (tok,)
    return ()


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

    ``name`` may also be a Jinja source string (anything containing ``{%`` or ``{{``).
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
        control = tuple(dict.fromkeys(c for c in (f.bos, *eot, *f.extra_control) if c))
        source = _format_jinja(f)
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
    else:
        raise TemplateError(f"unknown template '{name}'; built-in templates: {', '.join(BUILTIN_TEMPLATES)} "
                            "(or leave it unset to use the tokenizer's own chat_template)")
    control = control_token_strings(tokenizer)
    eot = _probe_end_of_turn(source, special, control)
    return ChatTemplate(label, source, control, eot, _fingerprint(source, control, eot, tok_sha), special)


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
    import torch

    missing = missing_control_tokens(template, tokenizer)
    record = {"added": missing, "vocab_before": len(tokenizer), "vocab_after": len(tokenizer), "init": "mean"}
    if not missing:
        return record
    tokenizer.add_tokens(missing, special_tokens=True)  # the same call in transformers 4 and 5
    if model is not None:
        old = model.get_input_embeddings().weight.shape[0]
        new = len(tokenizer)
        if new > old:
            model.resize_token_embeddings(new, mean_resizing=False)
            with torch.no_grad():
                emb = model.get_input_embeddings().weight
                emb[old:] = emb[:old].mean(dim=0, keepdim=True)
                out = model.get_output_embeddings()
                if out is not None and out.weight.data_ptr() != emb.data_ptr():
                    out.weight[old:] = out.weight[:old].mean(dim=0, keepdim=True)
    record["vocab_after"] = len(tokenizer)
    return record

