"""Built-in chat formats: data (``_Format``) rendered by a fast Python renderer that records each
content span and trained turn while it concatenates, plus the equivalent Jinja source (with
``{% generation %}`` markers) that is installed into the tokenizer of a trained model, so
``apply_chat_template`` reproduces the training text. A test checks that both renderings agree for
every built-in, and the fixture tests check each version-named built-in against the official
template of that model version, token for token.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from sftlab.tokens.layout import Layout, Span, TemplateError, Turn

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
    trim: tuple[str, ...] = ()        # roles whose content the format trims (as the official template does)
    closing: str = ""                 # written once after the last message when no generation prompt follows


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

_LLAMA31_HEADER = ("<|start_header_id|>system<|end_header_id|>\n\n"
                   "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n")
_LLAMA31 = _Format(
    "llama3.1",
    prefix={"system": _LLAMA31_HEADER, **{r: f"<|start_header_id|>{n}<|end_header_id|>\n\n" for r, n in
                                          (("user", "user"), ("assistant", "assistant"), ("tool", "ipython"))}},
    suffix={r: "<|eot_id|>" for r in ("system", "user", "assistant", "tool")},
    eot=("<|eot_id|>",), generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
    bos="<|begin_of_text|>", default_system=_LLAMA31_HEADER, trim=("system", "user", "assistant"),
    extra_control=("<|start_header_id|>", "<|end_header_id|>"))
"""Llama 3.1 / 3.2 / 3.3 Instruct without tools: the system header with the date lines is always written
(``date_string`` is the template's own default, 26 Jul 2024), content is trimmed."""

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
    trim=("user", "assistant"), extra_control=("<start_of_turn>",))

_ZEPHYR = _Format(
    "zephyr",
    prefix={r: f"<|{r}|>\n" for r in ("system", "user", "assistant")},
    suffix={r: "</s>\n" for r in ("system", "user", "assistant")},
    eot=("</s>",), generation_prompt="<|assistant|>\n", extra_control=("<|system|>", "<|user|>", "<|assistant|>"))

_PHI3 = _Format(
    "phi3",
    prefix={r: f"<|{r}|>\n" for r in ("system", "user", "assistant")},
    suffix={r: "<|end|>\n" for r in ("system", "user", "assistant")},
    eot=("<|end|>",), generation_prompt="<|assistant|>\n", closing="{eos}",
    extra_control=("<|system|>", "<|user|>", "<|assistant|>"))

_ALPACA = _Format(
    "alpaca",
    prefix={"system": "", "user": "### Instruction:\n", "assistant": "### Response:\n"},
    suffix={"system": "\n\n", "user": "\n\n", "assistant": "{eos}\n\n"},
    eot=("{eos}",), generation_prompt="### Response:\n",
    default_system="Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")

_FORMATS = {f.name: f for f in (_CHATML, _LLAMA3, _LLAMA31, _MISTRAL, _GEMMA, _ZEPHYR, _PHI3, _ALPACA)}


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

    def content(role):
        return "(message['content'] | trim)" if role in f.trim else "message['content']"

    for role in ("system", "user", "assistant", "tool"):
        if role == "system" and f.merge_system:
            body = "{%- set ns.system = " + content(role) + " + '\\n\\n' %}"
        elif role not in f.prefix:
            body = ("{{- raise_exception('the " + f.name + " format has no " + role + " role') }}")
        elif role == "assistant":
            body = ("{{- " + _jinja_str(f.prefix[role]) + " }}{%- generation %}{{- " + content(role) + " + "
                    + _jinja_str(a_eot) + " }}{%- endgeneration %}"
                    + ("{{- " + _jinja_str(a_after) + " }}" if a_after else ""))
        elif role == "user" and f.merge_system:
            body = ("{{- " + _jinja_str(f.prefix[role]) + " + ns.system + " + content(role) + " + "
                    + _jinja_str(f.suffix[role]) + " }}{%- set ns.system = '' %}")
        else:
            body = ("{{- " + _jinja_str(f.prefix[role]) + " + " + content(role) + " + "
                    + _jinja_str(f.suffix[role]) + " }}")
        branches.append(("{%- if" if not branches else "{%- elif") + f" message['role'] == '{role}' %}}" + body)
    lines.extend(branches)
    lines.append("{%- else %}{{- raise_exception('unknown role: ' + message['role']) }}{%- endif %}")
    lines.append("{%- endfor %}")
    if f.generation_prompt or f.closing:
        lines.append("{%- if add_generation_prompt %}{{- " + _jinja_str(f.generation_prompt) + " }}"
                     + ("{%- else %}{{- " + _jinja_str(f.closing) + " }}" if f.closing else "") + "{%- endif %}")
    return "".join(lines)


_PIECES: dict = {}


def _format_pieces(f: _Format, eos: str) -> tuple:
    """The format's strings with ``{eos}`` filled in, computed once per (format, eos)."""
    key = (id(f), eos)
    if key not in _PIECES:
        sub = (lambda s: s.replace("{eos}", eos))
        default_system = None if f.default_system is None else sub(f.default_system + f.suffix["system"])
        _PIECES[key] = (f, sub(f.bos), default_system, {r: sub(p) for r, p in f.prefix.items()},
                        {r: sub(p) for r, p in f.suffix.items()}, sub("".join(f.eot)), sub(f.generation_prompt),
                        sub(f.closing))
    return _PIECES[key][1:]


def _format_layout(f: _Format, messages: list[dict], eos: str, add_generation_prompt: bool) -> Layout:
    """Render with a built-in format, recording each content span as the text is built."""
    bos, default_system, prefixes, suffixes, eot, generation_prompt, closing = _format_pieces(f, eos)
    parts: list[str] = [bos]
    pos = len(bos)
    spans: list[Span] = []
    turns: list[Turn] = []
    if default_system is not None and messages and messages[0]["role"] != "system":
        parts.append(default_system)
        pos += len(default_system)
    pending_system: tuple[int, str] | None = None
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role in f.trim:
            content = content.strip()
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
        if role == "assistant":
            spans.append(Span(i, role, start, pos, pos + len(eot)))
            turns.append(Turn(i, start, pos + len(eot), pos))
        else:
            spans.append(Span(i, role, start, pos))
        suffix = suffixes[role]
        parts.append(suffix)
        pos += len(suffix)
    if add_generation_prompt:  # a prompt for generation: nothing is trained from it
        parts.append(generation_prompt)
        turns = []
    else:
        parts.append(closing)
    return Layout("".join(parts), tuple(spans), turns=tuple(turns))
