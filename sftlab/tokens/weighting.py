"""One example's token ids and loss weights, built together from the template's layout.

``render_layout`` renders the messages (the template's own ``{% generation %}`` markers where
``mask_source: generation_markers``), checks that every trained turn with reasoning shows it, and
marks record text outside content that spells a special token (tool calls, schemas, reasoning) so
it is encoded as text. ``build`` tokenizes the rendering once and gives each token the weight of
the trained turn it overlaps (DESIGN.md, invariants 2 and 4), after checking that each trained turn
can be trained exactly (``check_turns``) and that the record's content is all in the rendering
(``sftlab.tokens.accounting``).

Example::

    >>> from sftlab.data.conversation import Message
    >>> trained_messages((Message("user", "q"), Message("assistant", "a", weight=0.5),
    ...                   Message("user", "q2"), Message("assistant", "b")), last_turn_only=False)
    {1: 0.5, 3: 1.0}
    >>> exchanges((Message("system", "s"), Message("user", "q"), Message("assistant", "a"), Message("user", "q2")))
    ([0], [[1, 2], [3]])
"""
from __future__ import annotations

import bisect
import dataclasses
import json
from collections.abc import Sequence

import numpy as np

from sftlab.data.conversation import Conversation, Message, template_messages, unpaired_surrogate
from sftlab.tokens import accounting
from sftlab.tokens.arrays import TokenArray, loss_weights, token_ids
from sftlab.tokens.encoded import KEEP_TRACE, EncodedExample, EncodingError, Trace
from sftlab.tokens.encoder import Encoder
from sftlab.tokens.generation_markers import marked_layout
from sftlab.tokens.layout import Layout
from sftlab.tokens.protected_data import protect_data
from sftlab.tokens.templates import ChatTemplate, TemplateError

__all__ = ["trained_messages", "exchanges", "render_layout", "build", "check_turns", "opening_weights",
           "check_trained"]


def trained_messages(messages: Sequence[Message], last_turn_only: bool) -> dict[int, float]:
    """Message index -> weight for every assistant message that is trained."""
    assistant = [i for i, m in enumerate(messages) if m.role == "assistant"]
    last = assistant[-1] if assistant else None
    out = {}
    for i in assistant:
        m = messages[i]
        if m.train is False or (last_turn_only and i != last and m.train is not True):
            continue
        weight = 1.0 if m.weight is None else float(m.weight)
        if weight > 0:
            out[i] = weight
    return out


def exchanges(messages: Sequence[Message]) -> tuple[list[int], list[list[int]]]:
    """(leading system indices, exchanges): an exchange is a user message and what follows it."""
    head = [i for i, m in enumerate(messages) if m.role == "system" and i == 0]
    groups: list[list[int]] = []
    for i in range(len(head), len(messages)):
        if messages[i].role == "user" or not groups:
            groups.append([])
        groups[-1].append(i)
    return head, groups


def render_layout(enc: Encoder, messages: Sequence[Message], tools: str | None = None) -> Layout:
    """The template's layout of ``messages`` (tool calls, results and reasoning included, as
    ``apply_chat_template`` receives them) with the record's ``tools`` (JSON text)."""
    msgs, tool_list = template_messages(messages, enc.reasoning), json.loads(tools) if tools else None
    layout = enc.template.layout(msgs, tools=tool_list)
    if enc.mask_source == "generation_markers":  # the template's own markers are the trained turns
        layout = marked_layout(enc.tokenizer, enc.template, msgs, tool_list, layout)
    at = unpaired_surrogate(layout.text)  # a Conversation built in code, not read by sftlab.data.formats
    if at is not None:
        raise TemplateError(f"unpaired surrogate at character {at} of the rendering: not valid "
                            "Unicode text, no tokenizer can encode it")
    if enc.reasoning != "drop":
        layout = _reasoning_spans(enc, messages, layout)
    if enc.special_re is not None and (tools or any(m.tool_calls or m.reasoning for m in messages)):
        layout = protect_data(enc, messages, msgs, tool_list, layout)
    return layout


def _reasoning_spans(enc: Encoder, messages: Sequence[Message], layout: Layout) -> Layout:
    """Check that every trainable turn with reasoning shows it; under ``reasoning: mask`` record
    its characters as ``unweighted`` (rendered, weight 0). A turn whose reasoning the template does
    not write is made untrainable with the reason (training it would teach answers without the
    reasoning the data has, or the template would differ at inference)."""
    masked, shown, untrainable = [], [], dict(layout.untrainable)
    for turn in layout.turns:
        reasoning = messages[turn.index].reasoning
        if not reasoning or not reasoning.strip():
            continue
        region = layout.text[turn.start:turn.stop_start]
        form = next((f for f in (reasoning, reasoning.strip()) if f in region), None)
        if form is None:
            untrainable[turn.index] = (f"{accounting.the(enc.template.name)} does not write the reasoning of this "
                                       "turn; "
                                       "set encoding.reasoning: drop to train it without, or use a template with a "
                                       "reasoning format")
            continue
        a = turn.start + region.index(form)
        shown.append((turn.index, a, a + len(form)))
        if enc.reasoning == "mask":
            masked.append((a, a + len(form)))
    if not shown and len(untrainable) == len(layout.untrainable):
        return layout
    turns = tuple(t for t in layout.turns if t.index not in untrainable)
    return dataclasses.replace(layout, turns=turns, untrainable=untrainable, unweighted=tuple(masked),
                               reasoning_spans=tuple(shown))


def build(enc: Encoder, conv: Conversation, messages: Sequence[Message], last_turn_only: bool,
           dropped: int, layout: Layout | None = None, encoding=None, skip: frozenset = frozenset()) -> EncodedExample:
    """One example from ``messages`` (all of ``conv``'s, or what truncation kept); ``encoding`` is
    the tokenizer's encoding of ``layout.text`` when the caller already has it (batched)."""
    layout = layout if layout is not None else render_layout(enc, messages, conv.tools)
    trained = {i: w for i, w in trained_messages(messages, last_turn_only).items() if i not in skip}
    check_turns(enc.template, layout, trained)
    accounting.check(layout, messages, conv.tool_list() if conv.tools else None, enc.template.name, trained)
    weights, offsets = None, None
    if encoding is not None and not enc._injected(layout):
        ids = encoding.ids
        weights = _weights_by_char(encoding, len(ids), layout, trained)
    if weights is None:
        ids, offsets = enc.tokenize(layout, encoding)
        weights = loss_weights(enc.weights(offsets, layout, trained))
    n_trained = int(np.count_nonzero(np.frombuffer(weights, dtype=np.float32)))  # weights != 0, in C
    keep_trace = KEEP_TRACE.get()
    opening = enc.opening[0] and enc.opening[1] != 1.0 and n_trained
    if offsets is None and (keep_trace or (layout.reasoning_spans and n_trained) or opening):
        offsets = encoding.offsets  # a list of tuples per token: made only where it is read
    if opening:
        weights = opening_weights(weights, offsets, layout, trained, *enc.opening)
    if enc.untrained_markers is not None and n_trained:
        offsets = _check_no_marker_trained(enc, conv, messages, layout, trained, weights, offsets, encoding)
    trace = Trace(layout, offsets, messages) if keep_trace else None
    n_reasoning = 0
    if layout.reasoning_spans and n_trained:
        spans = [(a, b) for _, a, b in layout.reasoning_spans]
        n_reasoning = sum(1 for (s, _), w in zip(offsets, weights) if w > 0 and any(a <= s < b for a, b in spans))
    # Every weight 1.0 (the usual case): their sum is the count, exactly, without a pass over the tokens.
    total = float(n_trained) if not opening and all(w == 1.0 for w in trained.values()) else float(sum(weights))
    return EncodedExample(token_ids(ids), weights, conv.slice, conv.task, conv.id, conv.expected,
                          conv.policy_category, n_trained, total, dropped, conv.origin,
                          reasoning_tokens=n_reasoning, trace=trace)


def _check_no_marker_trained(enc: Encoder, conv: Conversation, messages: Sequence[Message], layout: Layout,
                             trained: dict[int, float], weights, offsets, encoding):
    """Under ``reasoning: mask | drop``, refuse the example where a trained token of an answer's
    text holds a reasoning marker of any known convention (``Encoder.untrained_markers``): reasoning
    that was not read as such would be trained. The usual answer holds none and costs one search
    of its text; a marker found (a masked block's) is checked token by token. Returns the offsets
    where it had to read them."""
    text, find = layout.text, enc.untrained_markers.search
    spans = {s.index: s for s in layout.spans}
    for turn in layout.turns:
        span = spans.get(turn.index)
        if turn.index not in trained or span is None:
            continue
        a, b = max(span.start, turn.start), min(span.end, turn.end)
        hit = find(text, a, b)
        while hit is not None:
            if offsets is None:
                offsets = encoding.offsets
            k = bisect.bisect_left(offsets, (hit.end(),))  # the first token starting at or after its end
            while k > 0 and offsets[k - 1][1] > hit.start():
                k -= 1
                if weights[k] > 0 and offsets[k][1] > offsets[k][0]:
                    where = conv.where(turn.index, "content") if messages is conv.messages \
                        else f"assistant message {turn.index}"
                    raise EncodingError(
                        f"{where}: the reasoning marker {hit.group()!r} would be trained under encoding.reasoning: "
                        f"{enc.reasoning} (its reasoning was not read as such); put the reasoning in one block at the "
                        f"start of the content or in its reasoning field, or set encoding.reasoning: keep",
                        code="reasoning_trained")
            hit = find(text, hit.end(), b)
    return offsets


def check_turns(template: ChatTemplate, layout: Layout, trained: dict[int, float]) -> None:
    """Refuse a record whose trained turns the layout cannot train exactly (DESIGN.md, invariant 2)."""
    bad = sorted(i for i in trained if i in layout.untrainable) if layout.untrainable else ()
    if bad:
        raise EncodingError(f"assistant message {bad[0]} cannot be trained with {accounting.the(template.name)}: "
                            f"{layout.untrainable[bad[0]]}", code="untrainable_turn")
    rerendered = sorted(set(trained) & set(layout.rerendered)) if layout.rerendered else ()
    if rerendered:
        raise EncodingError(
            f"the {template.name} template renders assistant message(s) {rerendered} differently once the "
            f"conversation goes on (it re-renders earlier turns, e.g. drops their reasoning or writes another "
            f"stop), so their tokens here are not what the model generates at that turn; set "
            f"encoding.turns: expand to train each such turn in its own example with its inference context, "
            f"or train the final turn only (encoding.last_turn_only: true)", code="template_rerenders")
    certified = {t.index for t in layout.turns}
    missing = sorted(i for i in trained if i not in certified)
    if missing:
        raise EncodingError(f"assistant message {missing[0]} has no certified trained span in the "
                            f"{template.name} template's rendering", code="uncertified_turn")


def _weights_by_char(encoding, n: int, layout: Layout, trained: dict[int, float]) -> TokenArray | None:
    """Fast path of ``Encoder.weights``: token indices of the turn ends via ``char_to_token``.

    Returns ``None`` (use offsets) when a turn edge falls on a character no token covers.
    """
    w = loss_weights(bytes(4 * n))  # n zeros
    for turn in layout.turns:
        weight = trained.get(turn.index)
        if not weight:
            continue
        lo, hi = encoding.char_to_token(turn.start), encoding.char_to_token(turn.end - 1)
        if lo is None or hi is None:
            return None
        w[lo:hi + 1] = loss_weights([weight]) * (hi + 1 - lo)
    if layout.unweighted:
        return None  # masked reasoning: the offsets path zeroes it token by token
    return w



def opening_weights(weights: TokenArray, offsets, layout: Layout, trained: dict[int, float], k: int,
                    w: float) -> TokenArray:
    """``weights`` with the first ``k`` trained tokens of each trained turn multiplied by ``w``
    (``encoding.opening_weight``: a response's opening decides between answering and refusing).

    >>> from sftlab.tokens.layout import Layout, Turn
    >>> layout = Layout("q a b c d q e", (), turns=(Turn(1, 2, 9, 9), Turn(3, 12, 13, 13)))
    >>> offsets = [(i, i + 1) for i in range(0, 13, 2)]  # one token per letter
    >>> opening_weights(loss_weights([0, 1, 1, 1, 1, 0, 1]), offsets, layout, {1: 1.0, 3: 1.0}, 2, 4.0)
    TokenArray('f', [0.0, 4.0, 4.0, 1.0, 1.0, 0.0, 4.0])
    """
    a = np.array(weights, dtype=np.float32)
    ends = [e for _, e in offsets]
    starts = sorted(bisect.bisect_right(ends, t.start) for t in layout.turns if trained.get(t.index))
    nonzero = np.flatnonzero(a)
    for lo, hi in zip(starts, [*starts[1:], len(a)]):
        a[nonzero[(nonzero >= lo) & (nonzero < hi)][:k]] *= w
    return loss_weights(a.tolist())


def check_trained(ex: EncodedExample) -> EncodedExample:
    if ex.trained_tokens == 0:
        raise EncodingError("no trained token: no assistant message is trained (all have train=false or "
                            "weight 0, or truncation removed them)", code="no_trained_token")
    return ex
