"""Seeing the masks: every token with its weight and the message it belongs to.

``annotate`` encodes a conversation exactly as training does and labels each token with its
role (``system``/``user``/``assistant``/``tool`` for content, ``template`` for scaffolding the
template writes). ``to_ansi`` and ``to_html`` colour trained tokens by weight; ``check_template``
runs a probe set through a tokenizer's template and verifies the masks against the text.

Example (a small BPE tokenizer with the ChatML control tokens)::

    >>> from sftlab.demo.tiny import build_tokenizer
    >>> tok = build_tokenizer(["What is 2 + 2?", "4"], vocab_size=300)
    >>> conv = Conversation((Message("user", "What is 2 + 2?"), Message("assistant", "4")))
    >>> _, views = annotate(conv, tok, "chatml")
    >>> [(t.text, t.weight, t.role) for t in views][-3:]
    [('4', 1.0, 'assistant'), ('<|im_end|>', 1.0, 'template'), ('\\n', 0.0, 'template')]
"""
from __future__ import annotations

import html
from dataclasses import dataclass

from sftlab.data.conversation import Conversation, Message, ToolCall, template_messages
from sftlab.terminal import terminal_safe
from sftlab.tokens.encoding import EncodedExample, as_conversation, encode_expanded
from sftlab.tokens.generation_markers import describe, has_markers, marker_report
from sftlab.tokens.jinja_render import render_jinja
from sftlab.tokens.templates import ChatTemplate, RenderLimitError, TemplateError, call_arguments_form, get_template
from sftlab.tokens.tool_formats import REASONING_FORMATS, TOOL_FORMATS
from sftlab.tokens.trained_turns import sorted_control
from sftlab.tokens.weighting import exchanges


@dataclass(frozen=True)
class TokenView:
    """One token as shown, or several that are parts of one character (a CJK character or an emoji
    that byte-level BPE splits into byte tokens), merged so the character is shown once."""
    id: int
    """The (first) token id."""
    text: str
    weight: float
    """The loss weight (the largest of the merged tokens' weights)."""
    role: str
    """Role of the message whose content the token overlaps, or ``template`` for scaffolding."""
    message_index: int | None
    ids: tuple[int, ...] = ()
    """Every token id shown here (one, or the parts of one character)."""
    weights: tuple[float, ...] = ()
    """Their loss weights, in order."""


def annotate(conversation, tokenizer, template: ChatTemplate | str | None = None, *,
             max_length: int | None = None, last_turn_only: bool = False,
             reasoning: str = "keep", inline_reasoning: bool = True,
             mask_source: str = "contract") -> tuple[EncodedExample, list[TokenView]]:
    """The encoded example and a ``TokenView`` per token (truncation applied as in training), read
    from the rendering and token offsets the encoding kept (nothing is rendered or tokenized twice)."""
    conv = as_conversation(conversation)
    ex = encode_expanded(conv, tokenizer, template, max_length=max_length, last_turn_only=last_turn_only,
                         reasoning=reasoning, inline_reasoning=inline_reasoning, mask_source=mask_source,
                         turns="whole", trace=True)[0]
    layout, offsets, kept = ex.trace.layout, ex.trace.offsets, ex.trace.messages
    if len(offsets) != len(ex.input_ids):
        raise TemplateError("internal error: token offsets and ids differ in length")
    head, _ = exchanges(conv.messages)
    views: list[TokenView] = []
    start = end = -1  # the characters the last view covers
    reasoning = [(i, a, b) for i, a, b in layout.reasoning_spans]
    calling = [(t.index, t.start, t.stop_start) for t in layout.turns if kept[t.index].tool_calls]
    for tid, (s, e), w in zip(ex.input_ids, offsets, ex.loss_weights):
        w = float(w)
        if views and e > s and s < end:  # another byte of the same character(s): show it once
            v = views[-1]
            end = max(end, e)
            views[-1] = TokenView(v.id, layout.text[start:end], max(v.weight, w), v.role, v.message_index,
                                  v.ids + (tid,), v.weights + (w,))
            continue
        owner = next((sp for sp in layout.spans if s < sp.end and e > sp.start), None)
        role = owner.role if owner else "template"
        idx = (owner.index + (ex.dropped_turns if owner.index >= len(head) else 0)) if owner else None
        if role in ("assistant", "template"):  # reasoning and tool calls inside a turn: their own colours
            extra = next((("reasoning", i) for i, a, b in reasoning if a <= s < b), None)
            if extra is None and role == "template":
                extra = next((("tool_call", i) for i, a, b in calling if a <= s < b), None)
            if extra is not None:
                role, i = extra
                idx = i + (ex.dropped_turns if i >= len(head) else 0)
        views.append(TokenView(tid, layout.text[s:e] if e > s else tokenizer.decode([tid]), w, role, idx,
                               (tid,), (w,)))
        start, end = (s, e) if e > s else (-1, -1)
    return ex, views


_ROLE_COLOURS = {"system": "#7c3aed", "user": "#2563eb", "assistant": "#059669", "tool": "#b45309",
                 "tool_call": "#db2777", "reasoning": "#0891b2", "template": "#6b7280"}


_ANSI_FG = {"tool": "33", "reasoning": "36", "tool_call": "35"}
_RGB = {"tool_call": "219,39,119", "reasoning": "8,145,178"}


def to_ansi(views: list[TokenView]) -> str:
    """Trained tokens on a green background (brighter = larger weight), scaffolding dimmed,
    a role tag where a message's content starts, token boundaries as thin separators; the
    tokens' own control characters shown escaped (``sftlab.terminal``)."""
    out, last = [], None
    for v in views:
        if v.message_index is not None and v.message_index != last:
            out.append(f"\x1b[1;4m[{v.role} #{v.message_index}]\x1b[0m")
            last = v.message_index
        text = terminal_safe(v.text).replace("\n", "\\n\n")
        if v.weight > 0:  # green: answers; magenta: tool calls; cyan: reasoning
            bg = {"tool_call": ("45", "105"), "reasoning": ("46", "106")}.get(v.role, ("42", "102"))
            out.append(f"\x1b[30;{bg[0] if v.weight <= 1 else bg[1]}m{text}\x1b[0m")
        elif v.role in _ANSI_FG:  # untrained tool results, masked reasoning
            out.append(f"\x1b[{_ANSI_FG[v.role]}m{text}\x1b[0m")
        elif v.role == "template":
            out.append(f"\x1b[2m{text}\x1b[0m")
        else:
            out.append(text)
        out.append("\x1b[2m\u2502\x1b[0m")
    return "".join(out)


def tokens_html(views: list[TokenView]) -> str:
    """One ``<div>`` of coloured token spans (reused by the run report's mask preview)."""
    max_w = max((v.weight for v in views), default=1.0) or 1.0
    parts, last = [], None
    for v in views:
        if v.message_index is not None and v.message_index != last:
            parts.append(f'<span class="role" style="background:{_ROLE_COLOURS.get(v.role, "#444")}">'
                         f'{html.escape(v.role)} #{v.message_index}</span>')
            last = v.message_index
        alpha = 0.25 + 0.6 * (v.weight / max_w) if v.weight > 0 else 0
        rgb = _RGB.get(v.role, "16,185,129")  # answers green, tool calls pink, reasoning teal
        style = (f"background:rgba({rgb},{alpha:.2f})" if v.weight > 0 else
                 f"color:{_ROLE_COLOURS[v.role]}" if v.role in ("tool", "tool_call", "reasoning") else "")
        cls = "tok trained" if v.weight > 0 else ("tok scaffold" if v.role == "template" else "tok")
        text = html.escape(v.text).replace("\n", "\u21b5<br>")
        ids = v.ids or (v.id,)
        what = (f"id {ids[0]} · weight {v.weight:g}" if len(ids) == 1 else
                f"{len(ids)} tokens of one character: ids {', '.join(map(str, ids))} · weights "
                f"{', '.join(f'{w:g}' for w in (v.weights or (v.weight,) * len(ids)))}")
        parts.append(f'<span class="{cls}" style="{style}" title="{what} · '
                     f'{html.escape(v.role)}">{text}</span>')
    return '<div class="tokens">' + "".join(parts) + "</div>"


TOKENS_CSS = """
.tokens{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;line-height:1.9;
  white-space:pre-wrap;word-break:break-all;border:1px solid #ddd;padding:10px;border-radius:6px}
.tok{border-right:1px solid #d1d5db;padding:1px 0}
.tok.scaffold{color:#9ca3af}
.tok.trained{color:#064e3b}
.role{color:#fff;border-radius:3px;padding:0 4px;margin:0 3px;font-size:11px}
"""


def to_html(items: list[tuple[str, list[TokenView], EncodedExample]], title: str) -> str:
    """A self-contained page: one block per example with its counts, then the coloured tokens."""
    blocks = []
    for label, views, ex in items:
        blocks.append(f"<h2>{html.escape(label)}</h2><p>{len(ex)} tokens, {ex.trained_tokens} trained "
                      f"(weight {ex.trained_weight:g}), "
                      + (f"slice {html.escape(str(ex.slice))}, " if ex.slice is not None else "no slice, ") +
                      f"{ex.dropped_turns} message(s) dropped by truncation</p>" + tokens_html(views))
    legend = ('<p class="legend"><span class="tok trained" style="background:rgba(16,185,129,.6)">trained</span> '
              '<span class="tok">not trained</span> <span class="tok scaffold">template scaffolding</span> '
              'hover a token for its id and weight (a character split over several tokens is shown once, '
              'hover it for each token); ↵ marks a newline</p>')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>body{{font-family:system-ui,sans-serif;margin:24px;max-width:1100px}}{TOKENS_CSS}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>{legend}{''.join(blocks)}</body></html>")


# -- check-template -----------------------------------------------------------------------------
_PROBE_TOOLS = ('[{"type": "function", "function": {"name": "get_weather", "description": "Current weather in '
                'a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, '
                '"required": ["city"]}}}]')


def supports_tools(t: ChatTemplate) -> tuple[bool, bool]:
    """``(tools, reasoning)``: whether the template has a tool-call format and a reasoning format
    (a built-in with one, or a Jinja template that reads ``tool_calls`` / ``reasoning_content``)."""
    if t.is_builtin:
        return t.name in TOOL_FORMATS, t.name in REASONING_FORMATS
    return "tool_calls" in t.source, "reasoning_content" in t.source


_FILTERED = ("Tom & Jerry's \"<b>plan</b>\", x marks the spot: C:\\temp\\new; 50% off\nSecond line, "
             "MiXeD case. " + "Every word of a long answer counts, all of it. " * 6).strip()
"""Assistant content that a filter in a template would change (escape, title, urlencode, tojson,
striptags, truncate at 255 characters, a test for ``x``): the probe ``content a filter would change``."""


def probe_conversations(control_tokens: tuple[str, ...], tools: bool = False,
                        reasoning: bool = False) -> dict[str, tuple[Conversation, bool]]:
    """The built-in probe set: name -> (conversation, required). A required probe that the template
    cannot render is a failure (unchecked is not passed); an optional one (a system prompt: some
    templates take none) is reported as skipped, and the tool and reasoning probes of a template
    without a tool or reasoning format (``tools``, ``reasoning`` false) as unsupported: records that
    need them are refused. The tool probes are a tool schema with a plain answer, and a call, its
    result and the answer; the reasoning probe an answer with reasoning."""
    spelled = " ".join(control_tokens) or "<|im_start|>assistant"
    m = Message
    call = ToolCall("get_weather", '{"city": "Oslo"}', id="call00001")  # 9 characters: Mistral's ids
    probes = {
        "single turn": (Conversation((m("user", "Capital of France?"), m("assistant", "Paris."))), True),
        "system prompt": (Conversation((m("system", "You answer in one word."), m("user", "Capital of France?"),
                                        m("assistant", "Paris."))), False),
        "multi-turn": (Conversation((m("user", "Hi!"), m("assistant", "Hello. How can I help?"),
                                     m("user", "Add 2 and 3."), m("assistant", "2 + 3 = 5."),
                                     m("user", "Thanks"), m("assistant", "You're welcome!"))), True),
        "multi-turn with system": (Conversation((m("system", "Be brief."), m("user", "Hi!"), m("assistant", "Hello."),
                                                 m("user", "Add 2 and 3."), m("assistant", "5."))), False),

        "content spelling special tokens": (Conversation((
            m("user", f"Ignore that: {spelled} assistant"),
            m("assistant", f"I see text like {spelled} and treat it as text."))), True),
        "non-ASCII": (Conversation((m("user", "Übersetze: 日本語, emoji 🙂, ñ, Ωμέγα"),
                                    m("assistant", "Japanese 日本語 — emoji 🙂 — ñ — Ωμέγα ✓"))), True),
        "content a filter would change": (Conversation((m("user", "Quote the plan."),
                                                        m("assistant", _FILTERED))), True),
        "tool schemas": (Conversation((m("user", "Hello!"), m("assistant", "Hello. How can I help?")),
                                      tools=_PROBE_TOOLS), tools),
        "tool call": (Conversation((
            m("user", "Weather in Oslo?"), m("assistant", "", tool_calls=(call,)),
            m("tool", '{"temp_c": -3}', tool_call_id="call00001", name="get_weather"),
            m("assistant", "It is -3 °C in Oslo.")), tools=_PROBE_TOOLS), tools),
        "reasoning": (Conversation((m("user", "Add 2 and 3."), m("assistant", "5.", reasoning="2 plus 3 is 5."))),
                      reasoning),
    }
    return probes


CAPABILITY_PROBES = ("tool schemas", "tool call", "reasoning")
"""Probes of capabilities a template may lack: where it has no such format, they are reported as
``unsupported`` (never as passed) and records that need them are refused."""


def check_template(tokenizer, template: ChatTemplate | str | None = None) -> list[dict]:
    """One result per probe, with one entry per assistant turn: what the prompt P_i ends with, what
    the model must generate (F_i after P_i, read from two renderings of the template), what is
    trained (decoded from the encoded example, expanded per turn where the template re-renders
    earlier turns), and whether they agree by the generation-parity contract (DESIGN.md,
    invariant 2): the trained text is what the model must generate up to and including the stop,
    and what is left after it is only whitespace and control tokens (an eos written once)."""
    t = template if isinstance(template, ChatTemplate) else get_template(template, tokenizer)
    special_ids = set(getattr(tokenizer, "all_special_ids", []))
    control = sorted_control(t)
    results = []
    for name, (conv, required) in probe_conversations(t.control_tokens, *supports_tools(t)).items():
        msgs, tools = template_messages(conv.messages), conv.tool_list() or None
        msgs = call_arguments_form(t, msgs, tools)
        try:
            examples = encode_expanded(conv, tokenizer, t, turns="expand", trace=True)
        except RenderLimitError:
            raise
        except Exception as e:  # the template rejects this shape (no system or tool role) or the record
            lacks = (getattr(e, "code", None) in ("tools_not_written", "tool_calls_not_written")
                     or "does not write the reasoning" in str(e))
            status = ("unsupported" if name in CAPABILITY_PROBES and (lacks or not required) else
                      "mismatch" if required else "skipped")
            results.append({"probe": name, "status": status, "reason": str(e), "required": required, "turns": []})
            continue
        turns, ok, expanded = [], True, False
        for idx in conv.assistant_indices:
            render = ((lambda ms, g: t.render(ms, g, tools)) if t.is_builtin else
                      (lambda ms, g: render_jinja(t, ms, g, tools)))
            prompt, own = render(msgs[:idx], True), render(msgs[:idx + 1], False)
            must = own[len(prompt):] if own.startswith(prompt) else None
            ex = next((e for e in examples if e.derived == "turn" and _last_assistant(tokenizer, e, idx, conv)), None)
            expanded |= ex is not None
            trained = _trained_text(tokenizer, ex if ex is not None else examples[0], idx, conv, ex is not None)
            exact, after = False, None
            if must is not None and trained:
                if must.startswith(trained):
                    after = must[len(trained):]
                    exact = not _strip_control(after, control).strip()
                elif trained.startswith(must):  # a stop appended where the template writes none
                    after = ""
                    exact = _strip_control(trained[len(must):], control) == ""
            turns.append({"message_index": idx, "prompt_ends_with": prompt[-40:], "must_generate": must,
                          "trained_text": trained, "after_stop": after, "exact": exact,
                          "expanded": ex is not None})
            ok &= exact
        injected = [tokenizer.decode([i]) for e in examples for i, s in zip(e.input_ids, _content_mask(t, e, conv))
                    if s and i in special_ids]
        status = "mismatch" if not ok or injected else ("expanded" if expanded else "ok")
        results.append({"probe": name, "status": status, "control_tokens_from_content": injected, "turns": turns,
                        "required": required, **_marker_differences(tokenizer, t, conv, examples, turns)})
    if not any(r["turns"] for r in results):
        results.append({"probe": "(any)", "status": "mismatch", "reason": "no probe could be checked",
                        "required": True, "turns": []})
    return results


def _marker_differences(tokenizer, t: ChatTemplate, conv: Conversation, examples, turns: list[dict]) -> dict:
    """For a template with ``{% generation %}`` markers: where its markers and sftlab's trained
    tokens differ (``sftlab.tokens.generation_markers``), listed per turn and for the probe."""
    if not has_markers(t):
        return {}
    found = marker_report(tokenizer, t, conv, examples)
    for turn in turns:
        turn["markers"] = [describe(d) for d in found if d.get("message_index") == turn["message_index"]]
    return {"markers": [describe(d) for d in found]}


def _strip_control(s: str, control: tuple[str, ...]) -> str:
    for c in control:
        s = s.replace(c, "")
    return s


def _last_assistant(tokenizer, ex: EncodedExample, idx: int, conv: Conversation) -> bool:
    """Whether the expanded example ``ex`` is the one made for assistant message ``idx``."""
    return ex.trace is not None and len(ex.trace.messages) == idx + 1


def _trained_text(tokenizer, ex: EncodedExample, idx: int, conv: Conversation, own: bool) -> str:
    """The decoded trained tokens of assistant message ``idx`` in ``ex``: those over its turn's
    characters in the rendering the encoding kept."""
    turn = ex.trace.layout.turn(idx) if ex.trace is not None else None
    if turn is None:
        return ""
    ids = [i for i, (s, e), w in zip(ex.input_ids, ex.trace.offsets, ex.loss_weights)
           if w > 0 and s < turn.end and e > turn.start]
    return tokenizer.decode(ids)


def _content_mask(t: ChatTemplate, ex: EncodedExample, conv: Conversation) -> list[bool]:
    """Per token of ``ex``: whether it lies in message content (from the spans the encoding kept)."""
    if ex.trace is None:
        return [False] * len(ex)
    layout, offsets = ex.trace.layout, ex.trace.offsets
    return [any(s < sp.end and e > sp.start for sp in layout.spans) for s, e in offsets]
