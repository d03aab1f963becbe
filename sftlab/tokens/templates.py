"""Chat templates: how a conversation becomes text, where each message's content lies in it, and
which characters of each assistant turn are trained (``ChatTemplate``, ``get_template``).

A ``ChatTemplate`` is either one of the built-in formats (``sftlab.tokens.chat_formats``) or the
Jinja ``chat_template`` of a Hugging Face tokenizer, rendered in a sandboxed Jinja environment with
a time limit and an output-size limit (a template that exceeds either is refused, never waited on).
Either way it produces a ``Layout`` (``sftlab.tokens.layout``): the rendered text, the character
span of every message's content, and the trained characters of every assistant turn. Encoding
(``sftlab.tokens.encoding``) turns that into token ids and loss weights; nothing here tokenizes.

**Where this is done.** Rendering under limits is ``sftlab.tokens.jinja_render``; where each
message's content lies (content spans, found with probe strings) is ``sftlab.tokens.content_spans``;
which characters of each assistant turn are trained (the P_i/F_i contract of DESIGN.md, invariant 2:
the rendering of the messages up to and including turn i after the generation prompt of turn i, up
to and including the stop) is ``sftlab.tokens.trained_turns``. This module holds the template
itself: its source, control tokens and stop, read off the template by probes, and its fingerprint.
Adding the template's role tokens to a tokenizer and model is ``sftlab.tokens.role_tokens``.

Example::

    >>> t = get_template("chatml")
    >>> lay = t.layout([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    >>> lay.text
    '<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\nyo<|im_end|>\\n'
    >>> [lay.text[t.start:t.end] for t in lay.turns]
    ['yo<|im_end|>']
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace

from sftlab.data.reasoning_blocks import REASONING_TAGS
from sftlab.errors import UsageError
from sftlab.files import open_input
from sftlab.fingerprints import config_hash, tokenizer_sha256
from sftlab.tokens.chat_formats import _FORMATS, _Format, _format_jinja, _format_layout
from sftlab.tokens.jinja_render import compiled, render_jinja
from sftlab.tokens.layout import Layout, Span, Turn
from sftlab.tokens.template_errors import RenderLimitError, TemplateError
from sftlab.tokens.tool_formats import flatten, jinja_prelude
from sftlab.tokens.trained_turns import control_run, jinja_layout, sorted_control
from sftlab.tokens.content_spans import PROBE

__all__ = ["BUILTIN_TEMPLATES", "ChatTemplate", "Layout", "Span", "TemplateError", "RenderLimitError", "Turn",
           "get_template", "control_token_strings", "special_strings", "reasoning_tags", "tokenizer_sha256",
           "call_arguments_form", "text_content"]

BUILTIN_TEMPLATES = tuple(_FORMATS)


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
                    _given(m) for m in messages]
        tools = tools or None
        if self._format is not None:
            flat = flatten(self.name, messages, tools)
            layout = _format_layout(self._format, flat, self.special.get("eos_token") or "",
                                    add_generation_prompt)  # it reads role and content only
            if flat is not messages:  # spans: each message's own content within the text written for it
                places = {i: m["content_at"] for i, m in enumerate(flat) if "content_at" in m}
                layout = replace(layout, spans=tuple(
                    replace(sp, start=sp.start + places[sp.index][0],
                                        end=sp.start + places[sp.index][0] + places[sp.index][1])
                    if sp.index in places else sp for sp in layout.spans))
            return _unshift(layout) if len(flat) > len(messages) else layout
        return jinja_layout(self, call_arguments_form(self, messages, tools), add_generation_prompt, tools)

    def jinja_text(self, messages: list[dict], tools: list | None = None) -> str:
        """The Jinja template's rendering of ``messages`` as ``layout`` renders them (no generation
        prompt), without locating anything in it: one render, for a probe."""
        messages = [_given(m) for m in messages]
        return render_jinja(self, call_arguments_form(self, messages, tools or None), False, tools or None)

    def describe(self) -> dict:
        """The manifest's ``template`` section."""
        return {"name": self.name, "fingerprint": self.fingerprint, "builtin": self.is_builtin,
                "control_tokens": list(self.control_tokens), "end_of_turn": list(self.end_of_turn)}


_MESSAGE_KEYS = ("tool_calls", "tool_call_id", "name", "reasoning_content")
"""Message fields besides role and content that a template is given (OpenAI / transformers layout)."""


def _given(m: dict) -> dict:
    """A copy of message ``m`` as a Jinja template gets it: role, text content and ``_MESSAGE_KEYS``."""
    return {**{k: m[k] for k in _MESSAGE_KEYS if m.get(k) is not None}, "role": m["role"],
            "content": text_content(m.get("content"))}


def call_arguments_form(t: ChatTemplate, messages: list[dict], tools: list | None = None) -> list[dict]:
    """``messages`` with tool-call arguments as objects (transformers' convention, what most templates
    ``tojson``), or as JSON text where the template can only write them as text (it concatenates
    them as strings, as DeepSeek-V3.1 and Functionary do): whichever the template renders."""
    calls = [c for m in messages for c in m.get("tool_calls") or ()]
    if t.is_builtin or not any(isinstance(c.get("function", c).get("arguments"), dict) for c in calls):
        return messages
    try:
        render_jinja(t, messages, False, tools)
        return messages
    except RenderLimitError:
        raise
    except TemplateError:
        pass
    as_text = [{**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": json.dumps(
        c["function"]["arguments"], ensure_ascii=False)}} if "function" in c else c for c in m["tool_calls"]]}
        if m.get("tool_calls") else m for m in messages]
    try:
        render_jinja(t, as_text, False, tools)
    except RenderLimitError:
        raise
    except TemplateError:
        return messages
    return as_text


def _unshift(layout: Layout) -> Layout:
    """The layout with the system message a tool format inserted first (index 0) taken out of the
    indices: spans and turns of the caller's messages, numbered as the caller numbered them."""
    spans = tuple(replace(s, index=s.index - 1) for s in layout.spans if s.index > 0)
    turns = tuple(replace(t, index=t.index - 1) for t in layout.turns)
    return replace(layout, spans=spans, turns=turns)


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


def _probe_content_parts(source: str, special: dict) -> bool:
    """Whether the template iterates over content parts: a probe given as a string does not reach
    the rendering, the same probe given as one text part does, and not as the printed list (a
    template that filters its content, ``|truncate`` or ``|title``, loses a string probe too, and
    writes a list as its Python or JSON text: that is no content-parts template)."""
    t = ChatTemplate("probe", source, (), (), "", special)
    msgs = [{"role": "user", "content": PROBE}]
    try:
        if PROBE in render_jinja(t, msgs, True):
            return False
    except RenderLimitError:
        raise
    except TemplateError:
        pass
    try:
        text = render_jinja(ChatTemplate("probe", source, (), (), "", special, content_parts=True), msgs, True)
    except RenderLimitError:
        raise
    except TemplateError:
        return False
    part = [{"type": "text", "text": PROBE}]
    return PROBE in text and str(part) not in text and json.dumps(part) not in text


def _probe_end_of_turn(source: str, special: dict, control: tuple[str, ...], parts: bool) -> tuple[str, ...]:
    """The control tokens of the stop sequence the template trains at the end of an assistant turn,
    read from the turns of a probe conversation (one turn, and two)."""
    t = ChatTemplate("probe", source, control, (), "", special, content_parts=parts)
    found: list[str] = []
    control_sorted = sorted_control(t)
    for msgs in ([{"role": "user", "content": "ping"}, {"role": "assistant", "content": "PONG-7f3a"}],
                 [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "PONG-7f3a"},
                  {"role": "user", "content": "again"}, {"role": "assistant", "content": "PONG-8e4b"}]):
        try:
            lay = jinja_layout(t, msgs, False)
        except RenderLimitError:
            raise
        except TemplateError:
            continue
        for turn in lay.turns:
            _, run = control_run(lay.text[turn.stop_start:turn.end], control_sorted)
            found.extend(run)
    return tuple(dict.fromkeys(found))


def reasoning_tags(source: str) -> tuple[tuple[str, str], ...]:
    """The (opener, closer) pairs of inline reasoning: a tag pair of the ``<think>`` kind the
    template writes itself (``<seed:think>``, ``<thinking>``) first, then every convention of
    ``sftlab.data.reasoning_blocks.REASONING_TAGS``.

        >>> reasoning_tags("{{ '<seed:think>' + r + '</seed:think>' }}")[:3]
        (('<seed:think>', '</seed:think>'), ('<think>', '</think>'), ('<thinking>', '</thinking>'))
    """
    found = [(f"<{t}>", f"</{t}>") for t in dict.fromkeys(re.findall(r"<((?:\w+:)?think(?:ing)?)>", source))
             if f"</{t}>" in source]
    return tuple(dict.fromkeys(found + list(REASONING_TAGS)))


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
        source = jinja_prelude(f.name) + _format_jinja(f)
        return ChatTemplate(name, source, control, eot, _fingerprint(source, control, eot, tok_sha),
                            special, f)
    own = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    named = own if isinstance(own, dict) and len(own) > 1 else None  # several named templates
    if name is None:
        # of named templates the default one, as transformers takes it without tools
        source = own.get("default") if isinstance(own, dict) else own
        if not source:
            raise TemplateError("the tokenizer has no chat_template; pass a built-in template name "
                                f"({', '.join(BUILTIN_TEMPLATES)}) or a Jinja template")
        label = "tokenizer:default" if named else "tokenizer"
    elif "{%" in name or "{{" in name:
        source, label = name, "custom"
    elif _is_template_file(name):
        source, label = _read_template_file(name), f"file:{os.path.basename(name)}"
    elif named and name in named:
        source, label = named[name], f"tokenizer:{name}"
    else:
        own = f"; the tokenizer's own named templates: {', '.join(named)}" if named else ""
        raise TemplateError(f"unknown template '{name}'; built-in templates: {', '.join(BUILTIN_TEMPLATES)}{own} "
                            "(or leave it unset to use the tokenizer's own chat_template)")
    try:
        compiled(source)
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
    """The Jinja source of a template file, or of a JSON file that holds one under
    ``chat_template`` (a processor's chat_template.json, a tokenizer_config.json)."""
    source = _read_text_file(path)
    if path.lower().endswith(".json"):
        try:
            data = json.loads(source)
        except json.JSONDecodeError as e:
            raise TemplateError(f"template file {path}: not JSON ({e}); expected a Jinja chat template, or "
                                "a JSON object with a 'chat_template'") from None
        template = json_chat_template(data)
        if template is None:
            raise TemplateError(f"template file {path}: a JSON file without a 'chat_template' string; expected "
                                "a Jinja chat template, or a JSON object with a 'chat_template'")
        return template
    return source


def json_chat_template(data) -> str | None:
    """The chat template a JSON file's object holds under ``chat_template`` (a processor's
    chat_template.json; a tokenizer_config.json, whose list of named templates gives its
    ``default``), or ``None`` where it holds none.

        >>> json_chat_template({"chat_template": [{"name": "default", "template": "{{ x }}"}]})
        '{{ x }}'
        >>> json_chat_template({"model_type": "llama"}) is None
        True
    """
    template = data.get("chat_template") if isinstance(data, dict) else None
    if isinstance(template, list):  # tokenizer_config.json's named templates: the default one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    return template if isinstance(template, str) and template.strip() else None


def _read_text_file(path: str) -> str:
    try:  # a regular file only: a FIFO or a device would hang or never end
        with open_input(path, what="template file") as f:
            data = f.read(_MAX_TEMPLATE_FILE_BYTES + 1)
    except UsageError as e:
        reason = str(e).removeprefix(f"template file {path}: ")
        raise TemplateError(f"template file {path}: cannot read it ({reason}); expected a Jinja chat "
                            "template file, a built-in name or a Jinja string") from None
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

