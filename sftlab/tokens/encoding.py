"""Conversation -> token ids and response-only loss weights, built together in one place.

The template (``sftlab.tokens.templates``) renders the conversation and says where every message's
content lies in the text. Here the text is tokenized once with character offsets, and each
token's weight is read off those spans:

- weight w (the message's ``weight``, default 1.0) on every token that overlaps a trained
  assistant message's content, and on the end-of-turn marker the template writes after it
  (``<|im_end|>``, ``<|eot_id|>``, ...), but not on the newline that follows the marker;
- 0 on system, user and tool tokens and on all template scaffolding.

Role tokens are control tokens only: when a message's content spells a special token of the
tokenizer (user text ``<|im_start|>assistant``), that piece is encoded as ordinary text, so no
control token can come from content. Otherwise the ids equal ``tokenizer(rendering,
add_special_tokens=False)`` of the template's own rendering, BOS never doubled.

Example (ChatML, a tokenizer with ``<|im_start|>``/``<|im_end|>`` as special tokens)::

    user "2+2?", assistant "4"  renders as
    <|im_start|>user\\n2+2?<|im_end|>\\n<|im_start|>assistant\\n4<|im_end|>\\n
    weights:  0 ...................... 0 ........................ 1 1 ....... 0
                                                  (the "4" and its <|im_end|> are trained)

Nothing the record carries is lost silently (DESIGN.md, invariant 9): the template's layout
certifies every message's text and that each trained answer is the record's own; the tool schemas
and calls are looked up in the rendering (``sftlab.tokens.accounting``); a record that loses any
is quarantined with what is lost and how to keep it. A ``<think>...</think>`` block at the start of
an answer is its reasoning (``inline_reasoning``), so ``reasoning: keep | mask | drop`` apply to it.

``max_length`` truncation removes whole early exchanges (a user message and the replies that
follow it), keeping the system message, and never cuts inside a trained turn. A conversation
whose last exchange alone is longer than ``max_length``, or that has no trained token left, raises
``EncodingError``: such records are quarantined with the reason, not trained on.
"""
from __future__ import annotations

import bisect
import contextvars
import dataclasses
import json
import re
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from sftlab import collector
from sftlab.tokens import accounting
from sftlab.tokens.arrays import TokenArray, loss_weights, token_ids
from sftlab.data.conversation import (REASONING_MODES, Conversation, Message, Origin, inline_reasoning,
                                      template_messages, unpaired_surrogate)
from sftlab.tokens.role_tokens import missing_control_tokens
from sftlab.tokens.templates import ChatTemplate, Layout, TemplateError, get_template, reasoning_tags
from sftlab.tokens.generation_markers import check_mask_source, marked_layout
from sftlab.tokens.continuation import continuation_layout


class EncodingError(ValueError):
    """This record cannot be encoded exactly; the message is the quarantine reason, ``code`` the
    short name of the rule (as in the loaders' quarantine entries)."""

    def __init__(self, reason: str, code: str = "encode_failed"):
        super().__init__(reason)
        self.code = code


class _Rejected(str):
    """A quarantine reason that carries its rule's ``code``."""
    code: str = "encode_failed"


class Trace:
    """The rendering an example was encoded from: its ``Layout``, the character offsets of its
    tokens, and the messages it holds (after truncation or expansion)."""
    __slots__ = ("layout", "offsets", "messages")

    def __init__(self, layout: Layout, offsets, messages):
        self.layout, self.offsets, self.messages = layout, list(offsets), tuple(messages)


_KEEP_TRACE: "contextvars.ContextVar[bool]" = contextvars.ContextVar("sftlab_keep_trace", default=False)


@dataclass(frozen=True)
class EncodedExample:
    input_ids: TokenArray
    """Token ids, stored compactly (``sftlab.tokens.arrays``: int32, 4 bytes a token); equal to a list of them."""
    loss_weights: TokenArray
    """Same length as ``input_ids``; the weight of predicting that token (shifted by the objective),
    float32."""
    slice: str | None = None
    task: str | None = None
    id: str | None = None
    expected: str | None = None
    policy_category: str | None = None
    trained_tokens: int = 0
    """Tokens with a weight > 0."""
    trained_weight: float = 0.0
    """Sum of the weights."""
    dropped_turns: int = 0
    """Messages removed from the front by ``max_length`` truncation."""
    origin: Origin | None = None
    derived: str | None = None
    """``None`` for a record's own example; ``"turn"`` for an extra example made by
    ``turns="expand"`` (one re-rendered assistant turn with its inference context); ``"overflow"``
    for one made by ``overflow="split"`` (exchanges truncation dropped, with the context that fits)."""
    lost_trained_tokens: int = 0
    """Trained tokens of this record that no example holds (dropped by ``max_length`` truncation
    and not split into further examples); counted on the record's own example."""
    reasoning_tokens: int = 0
    """Trained tokens inside reasoning (``encoding.reasoning: keep``), for the statistics."""
    trace: "Trace | None" = dataclasses.field(default=None, compare=False, repr=False)
    """How the example was made (rendering, spans, token offsets), kept only where asked
    (``encode_expanded(..., trace=True)``, ``sftlab.tokens.masks.annotate``), never in bulk encoding."""

    def __post_init__(self):
        object.__setattr__(self, "input_ids", token_ids(self.input_ids))
        object.__setattr__(self, "loss_weights", loss_weights(self.loss_weights))

    def __len__(self) -> int:
        return len(self.input_ids)


def as_conversation(record) -> Conversation:
    """A ``Conversation`` from itself or from a record dict (any format ``sftlab.data.formats`` reads)."""
    if isinstance(record, Conversation):
        return record
    if isinstance(record, dict):
        from sftlab.data import formats

        return formats.to_conversation(record)
    raise TypeError(f"expected a Conversation or a record dict, got {type(record).__name__}")


class _Encoder:
    """A tokenizer bound to a template, with the lookups encoding needs prepared once."""

    def __init__(self, tokenizer, template: ChatTemplate, *, allow_missing_control: bool = False,
                 reasoning: str = "keep", inline_reasoning: bool = True,
                 mask_source: str = "contract"):
        if reasoning not in REASONING_MODES:
            raise ValueError(f"reasoning must be one of {', '.join(REASONING_MODES)}, not {reasoning!r}")
        self.reasoning = reasoning
        self.mask_source = check_mask_source(mask_source, template)
        self.thinks = reasoning_tags(template.source) if inline_reasoning else ()
        """The (opener, closer) pairs read as reasoning at the start of assistant content."""
        self.openers = tuple(o for o, _ in self.thinks)
        self.writes_reasoning = bool(self.thinks) and _writes_reasoning(template)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TemplateError("sftlab needs a fast (Rust) tokenizer: character offsets make the masks exact")
        missing = missing_control_tokens(template, tokenizer)
        if missing and not allow_missing_control:
            raise TemplateError(
                f"the {template.name} template writes control tokens the tokenizer does not have as special "
                f"tokens: {missing}; add them with sftlab.tokens.role_tokens.add_role_tokens(tokenizer, model, template) "
                f"(sftlab train does this itself), or use the tokenizer's own template")
        self.tokenizer = tokenizer
        self.template = template
        # Two private copies of the Rust tokenizer, so padding or truncation configured on the
        # user's tokenizer cannot leak in; the second never matches special tokens, for content
        # that spells one.
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_str(backend.to_str())
        self.plain = Tokenizer.from_str(backend.to_str())
        for t in (self.backend, self.plain):
            t.no_padding()
            t.no_truncation()
        self.plain.encode_special_tokens = True
        specials = [t for t in template.control_tokens if t not in missing]
        for tok in getattr(tokenizer, "all_special_tokens", []):
            specials.append(str(tok))
        for added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
            if getattr(added, "special", False):
                specials.append(added.content)
        specials = sorted(set(s for s in specials if s), key=len, reverse=True)
        self.special_re = re.compile("|".join(map(re.escape, specials))) if specials else None

    # -- tokenization ---------------------------------------------------------------------------
    def tokenize(self, layout: Layout, encoding=None) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and character offsets of the rendering; special-token text inside content stays text."""
        injected = self._injected(layout)
        if not injected:
            enc = encoding if encoding is not None else self.backend.encode(layout.text, add_special_tokens=False)
            return enc.ids, enc.offsets
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        pos = 0
        for a, b in injected + [(len(layout.text), len(layout.text))]:
            for piece_start, piece_end, tok in ((pos, a, self.backend), (a, b, self.plain)):
                if piece_end <= piece_start:
                    continue
                enc = tok.encode(layout.text[piece_start:piece_end], add_special_tokens=False)
                ids.extend(enc.ids)
                offsets.extend((piece_start + s, piece_start + e) for s, e in enc.offsets)
            pos = b
        return ids, offsets

    def _injected(self, layout: Layout) -> list[tuple[int, int]]:
        """Character ranges inside message content that spell a special token."""
        if self.special_re is None:
            return []
        found = []
        for a, b in [(s.start, s.end) for s in layout.spans] + list(layout.data_ranges):
            for m in self.special_re.finditer(layout.text, a, b):
                found.append((m.start(), m.end()))
        return sorted(set(found))

    # -- weights --------------------------------------------------------------------------------
    @staticmethod
    def weights(offsets: Sequence[tuple[int, int]], layout: Layout, trained: dict[int, float]) -> list[float]:
        """Per-token weights: ``trained[i]`` on tokens overlapping assistant turn i's trained characters."""
        n = len(offsets)
        w = [0.0] * n
        if not trained:
            return w
        starts = [s for s, _ in offsets]
        ends = [e for _, e in offsets]
        for turn in layout.turns:
            weight = trained.get(turn.index)
            if not weight:
                continue
            lo = bisect.bisect_right(ends, turn.start)      # first token ending after the start
            hi = bisect.bisect_left(starts, turn.end)       # first token starting at/after the end
            for k in range(lo, hi):
                if ends[k] > starts[k]:
                    w[k] = weight
        for a, b in layout.unweighted:  # masked reasoning: rendered, not trained
            for k in range(bisect.bisect_left(starts, a), bisect.bisect_left(starts, b)):
                w[k] = 0.0
        return w


_ENCODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _encoder(tokenizer, template: ChatTemplate | str | None, allow_missing_control: bool = False,
             reasoning: str = "keep", inline_reasoning: bool = True,
             mask_source: str = "contract") -> _Encoder:
    if not isinstance(template, ChatTemplate):
        template = get_template(template, tokenizer)
    key = (template.fingerprint, allow_missing_control, reasoning, inline_reasoning, mask_source)
    try:
        cache = _ENCODERS.setdefault(tokenizer, {})
    except TypeError:
        cache = {}
    if key not in cache:
        cache[key] = _Encoder(tokenizer, template, allow_missing_control=allow_missing_control,
                              reasoning=reasoning, inline_reasoning=inline_reasoning, mask_source=mask_source)
    return cache[key]


def _writes_reasoning(template: ChatTemplate) -> bool:
    """Whether the template writes an assistant message's ``reasoning_content`` (Qwen3, gpt-oss, the
    chatml built-in), found by rendering a probe as the reasoning of a final answer."""
    probe = "sftlab0reasoning0probe"
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": probe}]
    try:
        return probe in template.render(msgs)
    except TemplateError:
        return False


def _inline_reasoning(enc: _Encoder, conv: Conversation) -> Conversation:
    """``conv`` with a reasoning block at the start of an assistant message's content read as its
    reasoning (``encoding.inline_reasoning``), so ``encoding.reasoning`` applies to it; ``conv``
    itself where there is none. A template that writes reasoning gets it as ``reasoning_content``
    and lays it out itself; under one that does not, the block stays in the content where it is
    rendered as the data gives it (trained under ``keep``, weight 0 under ``mask``), and ``drop``
    removes it."""
    openers = enc.openers
    if not openers or conv.plain or not any(m.role == "assistant" and (m.content.startswith(openers) or (
            m.content[:1].isspace() and m.content.lstrip().startswith(openers))) for m in conv.messages):
        return conv  # the usual record: no answer opens with a reasoning block
    msgs = []
    for m in conv.messages:
        if m.role == "assistant":
            split = inline_reasoning(m, enc.thinks)
            if split is not m and not enc.writes_reasoning and enc.reasoning != "drop":
                split = dataclasses.replace(m, reasoning=split.reasoning)
            m = split
        msgs.append(m)
    if all(a is b for a, b in zip(msgs, conv.messages)):
        return conv
    return dataclasses.replace(conv, messages=tuple(msgs))


def _trained_messages(messages: Sequence[Message], last_turn_only: bool) -> dict[int, float]:
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


def _exchanges(messages: Sequence[Message]) -> tuple[list[int], list[list[int]]]:
    """(leading system indices, exchanges): an exchange is a user message and what follows it."""
    head = [i for i, m in enumerate(messages) if m.role == "system" and i == 0]
    groups: list[list[int]] = []
    for i in range(len(head), len(messages)):
        if messages[i].role == "user" or not groups:
            groups.append([])
        groups[-1].append(i)
    return head, groups


def _layout(enc: _Encoder, messages: Sequence[Message], tools: str | None = None) -> Layout:
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
        layout = _protect_data(enc, messages, tools, layout)
    return layout


def _protect_data(enc: _Encoder, messages: Sequence[Message], tools: str | None, layout: Layout) -> Layout:
    """Record text a template writes outside content spans that spells a special token (DESIGN.md,
    invariant 4): tool-call names and arguments and tool-schema strings, found as the JSON the
    template writes for them (quoted, so scaffolding never matches), and reasoning inside its turn."""
    texts: list[str] = []

    def strings(value):
        if isinstance(value, str):
            texts.append(json.dumps(value, ensure_ascii=False))
        elif isinstance(value, dict):
            for k, v in value.items():
                strings(k)
                strings(v)
        elif isinstance(value, list):
            for v in value:
                strings(v)

    strings(json.loads(tools) if tools else [])
    for m in messages:
        for c in m.tool_calls:
            texts.append(json.dumps(c.arguments_value(), ensure_ascii=False))
            strings(c.name)
            strings(c.arguments_value())
    found = set()
    for t in {t for t in texts if enc.special_re.search(t)}:
        k = layout.text.find(t)
        while k >= 0:
            found.add((k, k + len(t)))
            k = layout.text.find(t, k + 1)
    for i, a, b in layout.reasoning_spans:
        if enc.special_re.search(layout.text, a, b):
            found.add((a, b))
    if not found:
        return layout
    return dataclasses.replace(layout, data_ranges=tuple(sorted(found)))


def _reasoning_spans(enc: _Encoder, messages: Sequence[Message], layout: Layout) -> Layout:
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


def _build(enc: _Encoder, conv: Conversation, messages: Sequence[Message], last_turn_only: bool,
           dropped: int, layout: Layout | None = None, encoding=None, skip: frozenset = frozenset()) -> EncodedExample:
    """One example from ``messages`` (all of ``conv``'s, or what truncation kept); ``encoding`` is
    the tokenizer's encoding of ``layout.text`` when the caller already has it (batched)."""
    layout = layout if layout is not None else _layout(enc, messages, conv.tools)
    trained = {i: w for i, w in _trained_messages(messages, last_turn_only).items() if i not in skip}
    _check_turns(enc.template, layout, trained)
    accounting.check(layout, messages, conv.tool_list() if conv.tools else None, enc.template.name, trained)
    weights, offsets = None, None
    if encoding is not None and not enc._injected(layout):
        ids = encoding.ids
        weights = _weights_by_char(encoding, len(ids), layout, trained)
    if weights is None:
        ids, offsets = enc.tokenize(layout, encoding)
        weights = loss_weights(enc.weights(offsets, layout, trained))
    n_trained = int(np.count_nonzero(np.frombuffer(weights, dtype=np.float32)))  # weights != 0, in C
    keep_trace = _KEEP_TRACE.get()
    if offsets is None and (keep_trace or (layout.reasoning_spans and n_trained)):
        offsets = encoding.offsets  # a list of tuples per token: made only where it is read
    trace = Trace(layout, offsets, messages) if keep_trace else None
    n_reasoning = 0
    if layout.reasoning_spans and n_trained:
        spans = [(a, b) for _, a, b in layout.reasoning_spans]
        n_reasoning = sum(1 for (s, _), w in zip(offsets, weights) if w > 0 and any(a <= s < b for a, b in spans))
    # Every weight 1.0 (the usual case): their sum is the count, exactly, without a pass over the tokens.
    total = float(n_trained) if all(w == 1.0 for w in trained.values()) else float(sum(weights))
    return EncodedExample(token_ids(ids), weights, conv.slice, conv.task, conv.id, conv.expected,
                          conv.policy_category, n_trained, total, dropped, conv.origin,
                          reasoning_tokens=n_reasoning, trace=trace)


def _check_turns(template: ChatTemplate, layout: Layout, trained: dict[int, float]) -> None:
    """Refuse a record whose trained turns the layout cannot train exactly (DESIGN.md, invariant 2)."""
    bad = sorted(i for i in trained if i in layout.untrainable)
    if bad:
        raise EncodingError(f"assistant message {bad[0]} cannot be trained with {accounting.the(template.name)}: "
                            f"{layout.untrainable[bad[0]]}", code="untrainable_turn")
    rerendered = sorted(set(trained) & set(layout.rerendered))
    if rerendered:
        raise EncodingError(
            f"the {template.name} template renders assistant message(s) {rerendered} differently once the "
            f"conversation goes on (it re-renders earlier turns, e.g. drops their reasoning or writes another "
            f"stop), so their tokens here are not what the model generates at that turn; set "
            f"encoding.turns: expand to train each such turn in its own example with its inference context, "
            f"or train the final turn only (encoding.last_turn_only: true)", code="template_rerenders")
    missing = sorted(i for i in trained if layout.turn(i) is None)
    if missing:
        raise EncodingError(f"assistant message {missing[0]} has no certified trained span in the "
                            f"{template.name} template's rendering", code="uncertified_turn")


def _weights_by_char(encoding, n: int, layout: Layout, trained: dict[int, float]) -> TokenArray | None:
    """Fast path of ``_Encoder.weights``: token indices of the turn ends via ``char_to_token``.

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


# -- truncation ----------------------------------------------------------------------------------

_SLACK = 16
"""Tokens by which a length estimate may undershoot (see ``_Truncation``)."""


class _Truncation:
    """Which early exchanges to drop so that a too-long conversation fits ``max_length``.

    The result is always exact: every candidate is rendered and tokenized on its own, and the
    example is built from that encoding. What makes it cheap is the choice of candidates: the
    length of "drop the first k exchanges" is estimated from the full encoding (its tokens minus
    those between the first exchange's content and exchange k's), which is exact whenever a
    turn starts with a control token (the tokenizer splits there, so the kept text tokenizes as
    before), and close otherwise. The first candidate is the fewest drops whose estimate fits;
    more drops are tried while the encoding does not fit (dropping more never makes the example
    longer), fewer while the estimate is within ``_SLACK`` tokens of fitting. Typically one
    encoding per truncated conversation, batched with the others of its batch by ``encode_all``.
    """

    def __init__(self, conv: Conversation, full: EncodedExample, layout: Layout, encoding, max_length: int,
                 skip: frozenset = frozenset()):
        self.conv, self.full, self.max_length, self.skip = conv, full, max_length, skip
        self.head, self.groups = _exchanges(conv.messages)
        self.estimate = self._estimates(layout, encoding)
        fits = [k for k in range(1, len(self.groups)) if self.estimate[k] <= max_length]
        self.k = fits[0] if fits else len(self.groups) - 1

    def _estimates(self, layout: Layout, encoding) -> list[float]:
        g = len(self.groups)
        starts = {s.index: s.start for s in layout.spans}
        if encoding is None or g < 2 or any(grp[0] not in starts for grp in self.groups):
            return [float(len(self.full))] + [float("-inf")] * (g - 1)  # no estimate: walk up from one drop
        before = [encoding.char_to_token(starts[grp[0]]) for grp in self.groups]
        if None in before:  # a start no token covers (an empty message at the end): count by offsets
            token_starts = [a for a, _ in encoding.offsets]
            before = [bisect.bisect_left(token_starts, starts[grp[0]]) for grp in self.groups]
        return [float(len(self.full) - (b - before[0])) for b in before]

    def messages(self, k: int) -> list[Message]:
        kept = self.head + [i for grp in self.groups[k:] for i in grp]
        return [self.conv.messages[i] for i in kept]

    def layout(self, enc: _Encoder, k: int) -> Layout:
        return _layout(enc, self.messages(k), self.conv.tools)

    def cut(self, enc: _Encoder, k: int, last_turn_only: bool, layout=None, encoding=None) -> EncodedExample:
        kept_idx = self.head + [i for grp in self.groups[k:] for i in grp]
        kept = [self.conv.messages[i] for i in kept_idx]
        skip = frozenset(n for n, i in enumerate(kept_idx) if i in self.skip)
        return _build(enc, self.conv, kept, last_turn_only, len(self.conv.messages) - len(kept), layout, encoding,
                      skip)

    def search(self, enc: _Encoder, last_turn_only: bool, first: EncodedExample | None) -> EncodedExample:
        """The example with the fewest drops that fits; ``first`` is candidate ``self.k``, encoded
        (``None`` when there is no exchange to drop)."""
        if first is None:
            return self._reject(self.full)
        best = first
        while len(best) > self.max_length and self.k < len(self.groups) - 1:
            self.k += 1
            best = self.cut(enc, self.k, last_turn_only)
        if len(best) > self.max_length:
            return self._reject(best)
        while self.k > 1 and self.estimate[self.k - 1] <= self.max_length + _SLACK:
            candidate = self.cut(enc, self.k - 1, last_turn_only)
            if len(candidate) > self.max_length:
                break
            self.k, best = self.k - 1, candidate
        return best

    def overflow(self, enc: _Encoder, best: EncodedExample, last_turn_only: bool, mode: str,
                 turns: str = "whole") -> list[EncodedExample]:
        """``best`` (with ``lost_trained_tokens`` set) and, with ``mode="split"``, the examples made
        of the exchanges it dropped: the system message and those exchanges, truncated again as
        needed, each trained on its own turns only."""
        lost = max(self.full.trained_tokens - best.trained_tokens, 0)
        if mode != "split":
            return [dataclasses.replace(best, lost_trained_tokens=lost)]
        trained = _trained_messages(self.conv.messages, last_turn_only)
        parts: list[EncodedExample] = []
        # The dropped exchanges with the system message; an exchange too long for max_length on its own is
        # left out (lost) and the ones before it are tried again.
        for j in range(self.k, 0, -1):
            dropped = [i for grp in self.groups[:j] for i in grp]
            if not any(i in trained and i not in self.skip for i in dropped):
                break
            keep = set(self.head) | set(dropped)
            msgs = tuple(dataclasses.replace(m, train=(i in trained and i not in self.skip)) if m.role == "assistant"
                         else m for i, m in enumerate(self.conv.messages) if i in keep)
            try:
                parts = _encode_one(enc, dataclasses.replace(self.conv, messages=msgs), self.max_length, False, turns,
                                    "split")
                break
            except (EncodingError, TemplateError):
                continue
        parts = [dataclasses.replace(p, derived=p.derived or "overflow", lost_trained_tokens=0) for p in parts]
        split_lost = max(lost - sum(p.trained_tokens for p in parts), 0)
        return [dataclasses.replace(best, lost_trained_tokens=split_lost), *parts]

    def _reject(self, final: EncodedExample):
        raise EncodingError(
            f"the final exchange alone is {len(final)} tokens, longer than max_length={self.max_length}; "
            f"it cannot be truncated without cutting a trained turn (raise max_length or shorten it)",
            code="too_long")


def _check_trained(ex: EncodedExample) -> EncodedExample:
    if ex.trained_tokens == 0:
        raise EncodingError("no trained token: no assistant message is trained (all have train=false or "
                            "weight 0, or truncation removed them)", code="no_trained_token")
    return ex


TURNS = ("whole", "expand")
"""``encoding.turns``: ``whole`` trains every turn in the record's one example and refuses a record
whose template re-renders a trained turn; ``expand`` gives each such turn an example of its own."""
OVERFLOW = ("drop", "split")
"""``encoding.overflow``: what happens to the early exchanges ``max_length`` truncation drops:
``drop`` loses them (counted in ``lost_trained_tokens``); ``split`` makes them further examples."""


def _options(turns: str, overflow: str) -> None:
    if turns not in TURNS:
        raise ValueError(f"turns must be one of {', '.join(TURNS)}, not {turns!r}")
    if overflow not in OVERFLOW:
        raise ValueError(f"overflow must be one of {', '.join(OVERFLOW)}, not {overflow!r}")


def encode(conversation, tokenizer, template: ChatTemplate | str | None = None, *,
           max_length: int | None = None, last_turn_only: bool = False, reasoning: str = "keep",
           inline_reasoning: bool = True, mask_source: str = "contract") -> EncodedExample:
    """Encode one conversation (a ``Conversation`` or a record dict) with response-only weights.

    ``template=None`` uses the tokenizer's own ``chat_template``; a name picks a built-in format.
    Raises ``EncodingError`` for a record that cannot be trained on (see the module docstring) and
    ``TemplateError`` when the template and tokenizer do not fit together.
    """
    enc = _encoder(tokenizer, template, reasoning=reasoning, inline_reasoning=inline_reasoning,
                   mask_source=mask_source)
    return _encode_one(enc, as_conversation(conversation), max_length, last_turn_only)[0]


def encode_expanded(conversation, tokenizer, template: ChatTemplate | str | None = None, *,
                    max_length: int | None = None, last_turn_only: bool = False, turns: str = "expand",
                    overflow: str = "drop", trace: bool = False, reasoning: str = "keep",
                    inline_reasoning: bool = True, mask_source: str = "contract") -> list[EncodedExample]:
    """Every example one conversation gives with the ``turns`` and ``overflow`` options (the
    record's own example first, where it has a trained turn); raises ``EncodingError`` as ``encode``.
    ``trace=True`` keeps each example's ``Trace`` (rendering, spans, token offsets)."""
    _options(turns, overflow)
    token = _KEEP_TRACE.set(trace)
    try:
        enc = _encoder(tokenizer, template, reasoning=reasoning, inline_reasoning=inline_reasoning,
                       mask_source=mask_source)
        return _encode_one(enc, as_conversation(conversation), max_length, last_turn_only, turns, overflow)
    finally:
        _KEEP_TRACE.reset(token)


def _encode_one(enc: _Encoder, conv: Conversation, max_length, last_turn_only, turns="whole",
                overflow="drop") -> list[EncodedExample]:
    conv = _inline_reasoning(enc, conv)
    results, layouts = _render_chunk(enc, [conv])
    encodings = enc.backend.encode_batch([lay.text for lay in layouts.values()], add_special_tokens=False)
    _finish_chunk(enc, [conv], results, layouts, encodings, max_length, last_turn_only, turns, overflow)
    if isinstance(results[0], str):
        raise EncodingError(results[0], getattr(results[0], "code", "encode_failed"))
    return results[0] if isinstance(results[0], list) else [results[0]]


def encode_all(conversations: Iterable, tokenizer, template: ChatTemplate | str | None = None, *,
               max_length: int | None = None, last_turn_only: bool = False, num_proc: int = 1,
               batch_size: int = 1024, progress: bool = False, turns: str = "whole", overflow: str = "drop",
               reasoning: str = "keep", inline_reasoning: bool = True,
               mask_source: str = "contract"):
    """Encode many conversations: ``(examples, quarantined)``, examples in the input's order.

    ``quarantined`` holds one dict per record that could not be encoded, with ``file``, ``line``,
    ``id`` and ``reason``, so records in = examples + quarantined. Texts are tokenized in batches
    (the Rust tokenizer runs them on all cores), the first truncation candidates of a batch too;
    ``num_proc > 1`` also spreads rendering and weighting over processes.
    """
    _options(turns, overflow)
    convs = [as_conversation(c) for c in conversations]
    if num_proc > 1 and len(convs) > 4 * batch_size:
        return _encode_parallel(convs, tokenizer, template, max_length, last_turn_only, num_proc, batch_size,
                                turns, overflow, reasoning, inline_reasoning, mask_source)
    enc = _encoder(tokenizer, template, reasoning=reasoning, inline_reasoning=inline_reasoning,
                   mask_source=mask_source)
    examples: list[EncodedExample] = []
    quarantined: list[dict] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(convs), desc="encode", unit="conv")
    work = [_inline_reasoning(enc, c) for c in convs] if enc.openers else convs
    done = 0
    with collector.paused():
        for chunk, results, layouts, encodings in _rendered_and_tokenized(enc, work, batch_size):
            _finish_chunk(enc, chunk, results, layouts, encodings, max_length, last_turn_only, turns, overflow)
            for conv, result in zip(convs[done:done + len(chunk)], results):  # the record as it was read
                if isinstance(result, str):
                    quarantined.append(_quarantine_entry(conv, result))
                elif isinstance(result, list):
                    examples.extend(result)
                else:
                    examples.append(result)
            done += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return examples, quarantined


def _rendered_and_tokenized(enc: _Encoder, convs: Sequence[Conversation], batch_size: int):
    """``(chunk, results, layouts, encodings)`` per batch of ``batch_size`` conversations.

    The tokenizer works on batch i+1 in a background thread (it releases the GIL) while the
    caller builds the examples of batch i, so rendering and weighting overlap tokenization.
    ``results[j]`` is already the quarantine reason where chunk[j] could not be rendered.
    """
    from concurrent.futures import ThreadPoolExecutor

    def tokenize(layouts: dict[int, Layout]):
        return enc.backend.encode_batch([lay.text for lay in layouts.values()], add_special_tokens=False)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sftlab-tokenize") as pool:
        ahead = None
        for b in range(0, len(convs), batch_size):
            chunk = convs[b:b + batch_size]
            results, layouts = _render_chunk(enc, chunk)
            submitted = (chunk, results, layouts, pool.submit(tokenize, layouts))
            if ahead is not None:
                yield *ahead[:3], ahead[3].result()
            ahead = submitted
        if ahead is not None:
            yield *ahead[:3], ahead[3].result()


def _render_chunk(enc: _Encoder, chunk: Sequence[Conversation]) -> tuple[list, dict[int, Layout]]:
    results: list = [None] * len(chunk)
    layouts: dict[int, Layout] = {}
    for j, conv in enumerate(chunk):
        try:
            layouts[j] = continuation_layout(enc, conv) if conv.plain else _layout(enc, conv.messages, conv.tools)
        except TemplateError as e:
            results[j] = _reason(e, _inline_hint(enc, conv.messages))
    return results, layouts


def _finish_chunk(enc: _Encoder, chunk: Sequence[Conversation], results: list, layouts: dict[int, Layout],
                  encodings, max_length: int | None, last_turn_only: bool, turns: str = "whole",
                  overflow: str = "drop") -> None:
    """Fill ``results`` with each conversation's example (a list of them where ``turns`` or
    ``overflow`` made more than one), or the reason it is quarantined."""
    long: dict[int, _Truncation] = {}
    full: dict[int, object] = {}  # the encodings of the truncated ones
    extra: dict[int, list[EncodedExample]] = {}
    for j, encoding in zip(layouts, encodings):
        conv = chunk[j]
        try:
            skip: frozenset = frozenset()
            if turns == "expand":
                skip, extra[j] = _expand(enc, conv, layouts[j], max_length, last_turn_only, overflow)
                if not set(_trained_messages(conv.messages, last_turn_only)) - skip:
                    results[j] = extra[j]  # every trained turn has an example of its own
                    continue
            ex = _build(enc, conv, conv.messages, last_turn_only, 0, layouts[j], encoding, skip)
            if max_length is not None and len(ex) > max_length:
                long[j] = _Truncation(conv, ex, layouts[j], encoding, max_length, skip)
                full[j] = encoding
            else:
                results[j] = _with_extra(_check_trained(ex), extra.get(j))
        except (EncodingError, TemplateError) as e:
            results[j] = _reason(e, _inline_hint(enc, conv.messages))
    # Truncated conversations: the first candidate of each, tokenized in one batch.
    firsts: dict[int, Layout] = {}
    for j, t in long.items():
        if len(t.groups) >= 2:
            try:
                firsts[j] = t.layout(enc, t.k)
            except TemplateError as e:
                results[j] = _reason(e)
    # A candidate that is the full text with whole exchanges cut out between two equal special
    # tokens is read from the full encoding (``_splice``); the others are tokenized in one batch.
    encoded = {j: sp for j in firsts if (sp := _splice(enc, layouts[j], full[j], firsts[j])) is not None}
    rest = [j for j in firsts if j not in encoded]
    encoded.update(zip(rest, enc.backend.encode_batch([firsts[j].text for j in rest], add_special_tokens=False)))
    for j, t in long.items():
        if results[j] is not None:
            continue
        try:
            first = t.cut(enc, t.k, last_turn_only, firsts[j], encoded[j]) if j in firsts else None
            best = _check_trained(t.search(enc, last_turn_only, first))
            parts = t.overflow(enc, best, last_turn_only, overflow, turns)
            results[j] = _with_extra(parts[0], parts[1:] + extra.get(j, []))
        except (EncodingError, TemplateError) as e:
            results[j] = _reason(e)


class _Spliced:
    """The encoding of ``text[:s] + text[s + d:]`` read from the encoding ``full`` of ``text``,
    where token ``ia`` of ``full`` starts at ``s`` and token ``ib`` at ``s + d`` (see ``_splice``):
    ``ids``, ``offsets`` and ``char_to_token`` as the tokenizer's own encoding of that text gives them."""
    __slots__ = ("ids", "_full", "_s", "_d", "_ia", "_shift")

    def __init__(self, full, ids: list[int], s: int, d: int, ia: int, ib: int):
        self.ids = ids[:ia] + ids[ib:]
        self._full, self._s, self._d, self._ia, self._shift = full, s, d, ia, ib - ia

    @property
    def offsets(self) -> list[tuple[int, int]]:
        offsets, d = self._full.offsets, self._d
        return offsets[:self._ia] + [(a - d, b - d) for a, b in offsets[self._ia + self._shift:]]

    def char_to_token(self, pos: int, sequence_index: int = 0):
        if pos < self._s:
            return self._full.char_to_token(pos)
        k = self._full.char_to_token(pos + self._d)
        return None if k is None else k - self._shift


def _splice_ids(enc: _Encoder) -> frozenset:
    """Ids of the added tokens at which a text can be cut and its encoding spliced: special,
    matched as written (not normalised, no stripping of the whitespace around them, not only as a
    whole word) and inside no other added token. The tokenizer splits its input at every added
    token before normalising and pre-tokenizing, and tokenizes each piece between them on its own,
    so such a token is found, and the pieces around it tokenized, whatever precedes or follows it.
    Empty (no splicing) for a model that samples its merges (BPE dropout)."""
    found = enc.__dict__.get("_splice_ids")
    if found is None:
        added = enc.backend.get_added_tokens_decoder()
        contents = [t.content for t in added.values()]
        found = frozenset(i for i, t in added.items()
                          if t.special and t.content and not (t.lstrip or t.rstrip or t.single_word or t.normalized)
                          and not any(t.content in u and u != t.content for u in contents))
        if getattr(enc.backend.model, "dropout", None):
            found = frozenset()
        enc._splice_ids = found
    return found


def _splice(enc: _Encoder, layout: Layout, full, candidate: Layout) -> _Spliced | None:
    """The encoding of ``candidate`` (a truncation candidate) read from ``full``, the encoding of
    ``layout``, when the candidate's text is the full text with one stretch cut out that starts
    where a splicing token (``_splice_ids``) starts and ends where the same token starts again:
    the kept pieces are tokenized exactly as in the full text. ``None`` otherwise (the candidate
    is then tokenized on its own)."""
    text, cand = layout.text, candidate.text
    d = len(text) - len(cand)
    specials = _splice_ids(enc)
    if d <= 0 or not specials or enc.special_re is None or enc._injected(layout):
        return None
    lo, hi = 0, len(cand)  # the longest common prefix, by halving (slices compare in C)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if text[:mid] == cand[:mid]:
            lo = mid
        else:
            hi = mid - 1
    ids = full.ids
    at: dict[int, tuple[int, int]] = {}  # start -> (token index, id) of the splicing tokens
    for m in enc.special_re.finditer(text):  # where the template wrote a special token (none in content)
        k = full.char_to_token(m.start())
        if k is not None and ids[k] in specials and full.token_to_chars(k)[0] == m.start():
            at[m.start()] = (k, ids[k])
    cuts = [s for s in at if s <= lo and s + d in at and at[s + d][1] == at[s][1]]
    if not cuts:
        return None
    s = max(cuts)
    ia, ib = at[s][0], at[s + d][0]
    if (ia and full.token_to_chars(ia - 1)[1] > s) or full.token_to_chars(ib - 1)[1] > s + d:
        return None
    if text[s + d:] != cand[s:]:  # text[:s] == cand[:s]: s is within the common prefix
        return None
    return _Spliced(full, ids, s, d, ia, ib)


def _with_extra(ex: EncodedExample, extra: list[EncodedExample] | None):
    return [ex, *extra] if extra else ex


def _expand(enc: _Encoder, conv: Conversation, layout: Layout, max_length, last_turn_only, overflow):
    """``(turns trained elsewhere, their examples)``: each trained assistant turn that the layout
    shows re-rendered becomes an example of its own, the conversation up to and including it,
    rendered as the template renders it at inference for that turn, with only that turn trained."""
    trained = _trained_messages(conv.messages, last_turn_only)
    rerendered = sorted(set(trained) & set(layout.rerendered))
    out: list[EncodedExample] = []
    for i in rerendered:
        msgs = tuple(dataclasses.replace(m, train=(k == i)) for k, m in enumerate(conv.messages[:i + 1]))
        sub = dataclasses.replace(conv, messages=msgs)
        for ex in _encode_one(enc, sub, max_length, False, "whole", overflow):
            out.append(dataclasses.replace(ex, derived=ex.derived or "turn"))
    return frozenset(rerendered), out

def encoding_summary(examples: Sequence[EncodedExample]) -> dict:
    """What ``turns: expand`` and ``overflow: split`` added and what truncation lost, for stats,
    the manifest and the report: extra examples and their tokens, and the trained tokens lost."""
    out = {"expanded_examples": 0, "expanded_tokens": 0, "overflow_examples": 0, "overflow_tokens": 0,
           "lost_trained_tokens": 0}
    for ex in examples:
        if ex.derived == "turn":
            out["expanded_examples"] += 1
            out["expanded_tokens"] += len(ex)
        elif ex.derived == "overflow":
            out["overflow_examples"] += 1
            out["overflow_tokens"] += len(ex)
        out["lost_trained_tokens"] += ex.lost_trained_tokens
    return out


def _inline_hint(enc: _Encoder, messages: Sequence[Message]) -> str:
    """For a refused record whose answer holds a reasoning tag: where ``encoding.inline_reasoning``
    is off and an answer starts with a reasoning block, how a template that reads such a block as
    reasoning (Qwen3) can render it; where an answer holds a closing tag elsewhere, that the
    template may read the text before it as reasoning."""
    tags = enc.thinks or reasoning_tags(enc.template.source)
    answers = [m for m in messages if m.role == "assistant"]
    if not enc.thinks and any(inline_reasoning(m, tags) is not m for m in answers):
        return ("; an answer starts with a reasoning block, which this template reads as reasoning: set "
                "encoding.inline_reasoning: true, or move the block into the message's reasoning_content")
    closer = next((c for _, c in tags for m in answers if c in m.content), None)
    if closer is not None:
        return (f"; an answer contains {closer!r}, and templates that read reasoning from the content take the "
                f"text before it for reasoning: remove the stray tag from the answer")
    return ""


def _reason(e: Exception, hint: str = "") -> str:
    reason = _Rejected((str(e) or type(e).__name__) + hint)
    reason.code = getattr(e, "code", None) or ("template_error" if isinstance(e, TemplateError) else "encode_failed")
    return reason


def _quarantine_entry(conv: Conversation, reason: str) -> dict:
    """One quarantine entry, in the loaders' schema (``QuarantineEntry.to_dict``) plus ``stage``."""
    origin = conv.origin
    return {"file": origin.file if origin else None, "line": origin.line if origin else None,
            "id": conv.id, "code": getattr(reason, "code", "encode_failed"), "stage": "encode",
            "reason": str(reason), "record": conv.to_dict()}


def encode_report(report, tokenizer, template: ChatTemplate | str | None = None, *,
                  max_length: int | None = None, last_turn_only: bool = False, progress: bool = False,
                  turns: str = "whole", overflow: str = "drop", reasoning: str = "keep",
                  inline_reasoning: bool = True, mask_source: str = "contract"):
    """Encode the accepted records of a load report (``sftlab.data.loading.LoadReport``):
    ``(examples, report)``, the new report with the records that encoding quarantined (too long,
    nothing trained, ...) added to its quarantine in the same schema (``stage: "encode"``) and
    counted against their files, so ``records = accepted + quarantined`` per file still holds.
    ``sftlab validate --tokenizer`` and training both call it: a file that validates at a
    ``max_length`` loses no record to length when training at it.
    """
    from sftlab.data.loading import FileReport, LoadReport, QuarantineEntry

    examples, failed = encode_all(report.conversations, tokenizer, template, max_length=max_length,
                                  last_turn_only=last_turn_only, progress=progress, turns=turns,
                                  overflow=overflow, reasoning=reasoning, inline_reasoning=inline_reasoning,
                                  mask_source=mask_source)
    files = [FileReport(f.path, f.records, f.accepted, f.quarantined) for f in report.files]
    by_path = {f.path: f for f in files}
    quarantined = list(report.quarantined)
    for e in failed:
        quarantined.append(QuarantineEntry(file=e["file"], line=e["line"], reason=e["reason"],
                                           record=e["record"], id=e["id"], code=e["code"], stage="encode"))
        f = by_path.get(e["file"])
        if f is not None:
            f.accepted -= 1
            f.quarantined += 1
    failed_at = {(e["file"], e["line"]) for e in failed}
    conversations = [c for c in report.conversations
                     if c.origin is None or (c.origin.file, c.origin.line) not in failed_at]
    return examples, LoadReport(conversations=conversations, quarantined=quarantined, files=files,
                                warnings=report.warnings)


_WORKER: dict = {}


def _worker_init(tokenizer, template, max_length, last_turn_only, batch_size, turns, overflow, reasoning,
                 inline_reasoning=True, mask_source="contract"):
    _WORKER.update(tokenizer=tokenizer, template=template, max_length=max_length,
                   last_turn_only=last_turn_only, batch_size=batch_size, turns=turns, overflow=overflow,
                   reasoning=reasoning, inline_reasoning=inline_reasoning, mask_source=mask_source)


def _worker_run(convs):
    w = _WORKER
    return encode_all(convs, w["tokenizer"], w["template"], max_length=w["max_length"],
                      last_turn_only=w["last_turn_only"], batch_size=w["batch_size"], turns=w["turns"],
                      overflow=w["overflow"], reasoning=w["reasoning"], inline_reasoning=w["inline_reasoning"],
                      mask_source=w["mask_source"])


def _encode_parallel(convs, tokenizer, template, max_length, last_turn_only, num_proc, batch_size, turns, overflow,
                     reasoning="keep", inline_reasoning=True, mask_source="contract"):
    import multiprocessing as mp
    import os

    if not isinstance(template, ChatTemplate):
        template = get_template(template, tokenizer)
    # Fail early, in this process, on a template/tokenizer mismatch.
    _encoder(tokenizer, template, reasoning=reasoning, inline_reasoning=inline_reasoning, mask_source=mask_source)
    step = -(-len(convs) // (num_proc * 4))
    chunks = [convs[i:i + step] for i in range(0, len(convs), step)]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ctx = mp.get_context("fork")
    with ctx.Pool(num_proc, initializer=_worker_init,
                  initargs=(tokenizer, template, max_length, last_turn_only, batch_size, turns, overflow,
                            reasoning, inline_reasoning, mask_source)) as pool:
        results = pool.map(_worker_run, chunks)
    examples, quarantined = [], []
    for ex, q in results:
        examples.extend(ex)
        quarantined.extend(q)
    return examples, quarantined


def encode_prompt(messages: Sequence[dict | Message], tokenizer, template: ChatTemplate | str | None = None,
                  add_generation_prompt: bool = True, tools: list | None = None) -> list[int]:
    """Ids of a prompt for generation, with the same guarantee: content never becomes a control token.

    ``messages`` are ``Message`` values or dicts in the layout ``apply_chat_template`` takes (tool
    calls, results and reasoning included); ``tools`` the function definitions the model may call.
    A template whose control tokens the tokenizer lacks (an alternate template in a robustness
    check) is still rendered; its markers are then ordinary text, as they would be for any user.
    """
    enc = _encoder(tokenizer, template, allow_missing_control=True)
    msgs = [template_messages([m])[0] if isinstance(m, Message) else m for m in messages]
    layout = enc.template.layout(msgs, add_generation_prompt=add_generation_prompt, tools=tools)
    ids, _ = enc.tokenize(layout)
    return list(ids)
