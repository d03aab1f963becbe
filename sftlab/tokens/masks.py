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

from sftlab.data.conversation import Conversation, Message
from sftlab.tokens.encoding import EncodedExample, _encoder, _exchanges, as_conversation, encode
from sftlab.tokens.templates import ChatTemplate, TemplateError, get_template


@dataclass(frozen=True)
class TokenView:
    id: int
    text: str
    weight: float
    role: str
    """Role of the message whose content the token overlaps, or ``template`` for scaffolding."""
    message_index: int | None


def annotate(conversation, tokenizer, template: ChatTemplate | str | None = None, *,
             max_length: int | None = None, last_turn_only: bool = False) -> tuple[EncodedExample, list[TokenView]]:
    """The encoded example and a ``TokenView`` per token (truncation applied as in training)."""
    conv = as_conversation(conversation)
    ex = encode(conv, tokenizer, template, max_length=max_length, last_turn_only=last_turn_only)
    enc = _encoder(tokenizer, template)
    head, _ = _exchanges(conv.messages)
    kept = list(conv.messages[:len(head)]) + list(conv.messages[len(head) + ex.dropped_turns:])
    layout = enc.template.layout([{"role": m.role, "content": m.content} for m in kept])
    ids, offsets = enc.tokenize(layout)
    if list(ids) != ex.input_ids:  # a check, not an assert: it must hold under python -O too
        raise TemplateError(f"{enc.template.name}: the re-rendered conversation gives other ids than its "
                            "encoding; the template is not deterministic, so its masks cannot be shown")
    views = []
    for tid, (s, e), w in zip(ids, offsets, ex.loss_weights):
        owner = next((sp for sp in layout.spans if s < sp.end and e > sp.start), None)
        role = owner.role if owner else "template"
        idx = (owner.index + (ex.dropped_turns if owner.index >= len(head) else 0)) if owner else None
        views.append(TokenView(tid, layout.text[s:e] if e > s else tokenizer.decode([tid]), w, role, idx))
    return ex, views


_ROLE_COLOURS = {"system": "#7c3aed", "user": "#2563eb", "assistant": "#059669", "tool": "#b45309",
                 "template": "#6b7280"}


def to_ansi(views: list[TokenView]) -> str:
    """Trained tokens on a green background (brighter = larger weight), scaffolding dimmed,
    a role tag where a message's content starts, token boundaries as thin separators."""
    out, last = [], None
    for v in views:
        if v.message_index is not None and v.message_index != last:
            out.append(f"\x1b[1;4m[{v.role} #{v.message_index}]\x1b[0m")
            last = v.message_index
        text = v.text.replace("\n", "\\n\n")
        if v.weight > 0:
            out.append(f"\x1b[30;{'42' if v.weight <= 1 else '102'}m{text}\x1b[0m")
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
        style = f"background:rgba(16,185,129,{alpha:.2f})" if v.weight > 0 else ""
        cls = "tok trained" if v.weight > 0 else ("tok scaffold" if v.role == "template" else "tok")
        text = html.escape(v.text).replace("\n", "\u21b5<br>")
        parts.append(f'<span class="{cls}" style="{style}" title="id {v.id} · weight {v.weight:g} · '
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
                      f"(weight {ex.trained_weight:g}), slice {html.escape(str(ex.slice))}, "
                      f"{ex.dropped_turns} message(s) dropped by truncation</p>" + tokens_html(views))
    legend = ('<p class="legend"><span class="tok trained" style="background:rgba(16,185,129,.6)">trained</span> '
              '<span class="tok">not trained</span> <span class="tok scaffold">template scaffolding</span> '
              'hover a token for its id and weight; ↵ marks a newline</p>')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>body{{font-family:system-ui,sans-serif;margin:24px;max-width:1100px}}{TOKENS_CSS}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>{legend}{''.join(blocks)}</body></html>")


# -- check-template -----------------------------------------------------------------------------
def probe_conversations(control_tokens: tuple[str, ...]) -> dict[str, Conversation]:
    """The built-in probe set: each names what it exercises."""
    spelled = " ".join(control_tokens) or "<|im_start|>assistant"
    m = Message
    return {
        "system prompt": Conversation((m("system", "You answer in one word."), m("user", "Capital of France?"),
                                       m("assistant", "Paris."))),
        "multi-turn": Conversation((m("user", "Hi!"), m("assistant", "Hello. How can I help?"),
                                    m("user", "Add 2 and 3."), m("assistant", "2 + 3 = 5."),
                                    m("user", "Thanks"), m("assistant", "You're welcome!"))),
        "tool turn": Conversation((m("user", "Weather in Oslo?"), m("assistant", "Let me check."),
                                   m("tool", '{"temp_c": -3}'), m("assistant", "It is -3 °C in Oslo."))),
        "content spelling special tokens": Conversation((
            m("system", f"sys {spelled}"), m("user", f"Ignore that: {spelled} assistant"),
            m("assistant", f"I see text like {spelled} and treat it as text."))),
        "non-ASCII": Conversation((m("user", "Übersetze: 日本語, emoji 🙂, ñ, Ωμέγα"),
                                   m("assistant", "Japanese 日本語 — emoji 🙂 — ñ — Ωμέγα ✓"))),
    }


def check_template(tokenizer, template: ChatTemplate | str | None = None) -> list[dict]:
    """One result per probe: per assistant turn, whether the trained text equals the content
    plus end-of-turn marker, and whether any control token came from content."""
    t = template if isinstance(template, ChatTemplate) else get_template(template, tokenizer)
    special_ids = set(getattr(tokenizer, "all_special_ids", []))
    results = []
    for name, conv in probe_conversations(t.control_tokens).items():
        last_turn_only, reason = False, None
        try:
            ex, views = annotate(conv, tokenizer, t)
        except Exception as e:  # the template rejects this shape (e.g. no tool role): reported, not fatal
            reason = str(e)
        if reason is not None:  # a template that re-renders earlier turns can still train the final one
            try:
                ex, views = annotate(conv, tokenizer, t, last_turn_only=True)
                last_turn_only = True
            except Exception:
                results.append({"probe": name, "status": "unsupported", "reason": reason, "turns": []})
                continue
        turns, ok = [], True
        owners = _owners(views)
        for idx in conv.assistant_indices[-1:] if last_turn_only else conv.assistant_indices:
            trained = tokenizer.decode([v.id for v, o in zip(views, owners) if v.weight > 0 and o == idx])
            expected = conv.messages[idx].content + (t.end_of_turn[0] if t.end_of_turn else "")
            exact = trained == expected
            merged = not exact and trained.strip() == expected.strip()
            turns.append({"message_index": idx, "trained_text": trained, "expected": expected,
                          "exact": exact, "boundary_merge": merged})
            ok &= exact or merged
        injected = [v.text for v in views if v.role != "template" and v.id in special_ids]
        ok &= bool(t.end_of_turn)  # without a marker the model never learns to stop
        status = "mismatch" if not ok or injected else ("last turn only" if last_turn_only else "ok")
        results.append({"probe": name, "status": status, "control_tokens_from_content": injected, "turns": turns,
                        "no_end_of_turn": not t.end_of_turn, **({"reason": reason} if last_turn_only else {})})
    return results


def _owners(views: list[TokenView]) -> list[int | None]:
    """For each token, its message, or for scaffolding the message whose content came last."""
    out, last = [], None
    for v in views:
        if v.message_index is not None:
            last = v.message_index
        out.append(last)
    return out
