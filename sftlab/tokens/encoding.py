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
is quarantined with what is lost and how to keep it. The reasoning that opens an answer (a block of
any convention of ``sftlab.data.reasoning_blocks``) is its reasoning, so ``reasoning: keep | mask |
drop`` apply to it; under ``mask`` and ``drop`` no reasoning text is trained
(``sftlab.tokens.inline_reasoning`` refuses what it cannot read, ``build`` a trained marker).

``max_length`` truncation removes whole early exchanges (a user message and the replies that
follow it), keeping the system message, and never cuts inside a trained turn. A conversation
whose last exchange alone is longer than ``max_length``, or that has no trained token left, raises
``EncodingError``: such records are quarantined with the reason, not trained on.

Here: the options (``turns``, ``overflow``, ``reasoning``), truncation, batching and the worker pool,
and the quarantine entries. The pieces: ``sftlab.tokens.encoder`` (the tokenizer bound to a template:
offsets and weights), ``sftlab.tokens.weighting`` (one example from its layout),
``sftlab.tokens.splicing`` (a truncation candidate read from the full encoding),
``sftlab.tokens.encoded`` (``EncodedExample``, ``EncodingError``).
"""
from __future__ import annotations

import bisect
import dataclasses
import multiprocessing as mp
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from sftlab import collector
from sftlab.data.conversation import Conversation, Message, template_messages
from sftlab.data.formats import to_conversation
from sftlab.data.loading import FileReport, LoadReport, QuarantineEntry
from sftlab.progress import progress_bar
from sftlab.tokens import accounting
from sftlab.tokens.continuation import continuation_layout
from sftlab.tokens.encoded import KEEP_TRACE, EncodedExample, EncodingError, Trace
from sftlab.tokens.encoder import Encoder, encoder_for
from sftlab.tokens.inline_reasoning import inline_hint, read_inline_reasoning
from sftlab.tokens.layout import Layout
from sftlab.tokens.splicing import splice
from sftlab.tokens.templates import ChatTemplate, TemplateError, get_template
from sftlab.tokens.weighting import build, check_trained, exchanges, render_layout, trained_messages

__all__ = ["EncodedExample", "EncodingError", "Trace", "TURNS", "OVERFLOW", "as_conversation", "encode",
           "encode_expanded", "encode_all", "encode_report", "encode_prompt", "encoding_summary"]


class _Rejected(str):
    """A quarantine reason that carries its rule's ``code``."""
    code: str = "encode_failed"



def as_conversation(record) -> Conversation:
    """A ``Conversation`` from itself or from a record dict (any format ``sftlab.data.formats`` reads)."""
    if isinstance(record, Conversation):
        return record
    if isinstance(record, dict):
        return to_conversation(record)
    raise TypeError(f"expected a Conversation or a record dict, got {type(record).__name__}")


def _prepared(enc: Encoder, conv: Conversation):
    """``read_inline_reasoning`` of ``conv``, or the quarantine reason it raised."""
    try:
        return read_inline_reasoning(enc, conv)
    except EncodingError as e:
        return _reason(e)


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
        self.head, self.groups = exchanges(conv.messages)
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

    def layout(self, enc: Encoder, k: int) -> Layout:
        return render_layout(enc, self.messages(k), self.conv.tools)

    def cut(self, enc: Encoder, k: int, last_turn_only: bool, layout=None, encoding=None) -> EncodedExample:
        kept_idx = self.head + [i for grp in self.groups[k:] for i in grp]
        kept = [self.conv.messages[i] for i in kept_idx]
        skip = frozenset(n for n, i in enumerate(kept_idx) if i in self.skip)
        return build(enc, self.conv, kept, last_turn_only, len(self.conv.messages) - len(kept), layout, encoding,
                      skip)

    def search(self, enc: Encoder, last_turn_only: bool, first: EncodedExample | None) -> EncodedExample:
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

    def overflow(self, enc: Encoder, best: EncodedExample, last_turn_only: bool, mode: str,
                 turns: str = "whole") -> list[EncodedExample]:
        """``best`` (with ``lost_trained_tokens`` set) and, with ``mode="split"``, the examples made
        of the exchanges it dropped: the system message and those exchanges, truncated again as
        needed, each trained on its own turns only."""
        lost = max(self.full.trained_tokens - best.trained_tokens, 0)
        if mode != "split":
            return [dataclasses.replace(best, lost_trained_tokens=lost)]
        trained = trained_messages(self.conv.messages, last_turn_only)
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
                                    "split", part=True)
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
    enc = encoder_for(tokenizer, template, reasoning=reasoning, inline_reasoning=inline_reasoning,
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
    token = KEEP_TRACE.set(trace)
    try:
        enc = encoder_for(tokenizer, template, reasoning=reasoning, inline_reasoning=inline_reasoning,
                       mask_source=mask_source)
        return _encode_one(enc, as_conversation(conversation), max_length, last_turn_only, turns, overflow)
    finally:
        KEEP_TRACE.reset(token)


def _encode_one(enc: Encoder, conv: Conversation, max_length, last_turn_only, turns="whole",
                overflow="drop", part: bool = False) -> list[EncodedExample]:
    """``conv``'s examples; ``part``: ``conv`` is a piece of a record whose content was accounted
    for as a whole (an expanded turn's context, an overflow split)."""
    if not part:
        conv = read_inline_reasoning(enc, conv)
    results, layouts = _render_chunk(enc, [conv])
    encodings = enc.backend.encode_batch([lay.text for lay in layouts.values()], add_special_tokens=False)
    _finish_chunk(enc, [conv], results, layouts, encodings, max_length, last_turn_only, turns, overflow, part)
    if isinstance(results[0], str):
        raise EncodingError(results[0], getattr(results[0], "code", "encode_failed"))
    return results[0] if isinstance(results[0], list) else [results[0]]


def encode_all(conversations: Iterable, tokenizer, template: ChatTemplate | str | None = None, *,
               max_length: int | None = None, last_turn_only: bool = False, num_proc: int = 1,
               batch_size: int = 1024, progress: bool = False, turns: str = "whole", overflow: str = "drop",
               reasoning: str = "keep", inline_reasoning: bool = True,
               mask_source: str = "contract", opening_tokens: int = 0, opening_weight: float = 1.0):
    """Encode many conversations: ``(examples, quarantined)``, examples in the input's order.

    ``quarantined`` holds one dict per record that could not be encoded, with ``file``, ``line``,
    ``id`` and ``reason``, so records in = examples + quarantined. Texts are tokenized in batches
    (the Rust tokenizer runs them on all cores), the first truncation candidates of a batch too;
    ``num_proc > 1`` also spreads rendering and weighting over processes. ``opening_tokens`` and
    ``opening_weight``: the first trained tokens of each trained turn weigh that many times more
    (``encoding.opening_weight``).
    """
    _options(turns, overflow)
    convs = [as_conversation(c) for c in conversations]
    opening = (opening_tokens, opening_weight)
    if num_proc > 1 and len(convs) > 4 * batch_size:
        return _encode_parallel(convs, tokenizer, template, max_length, last_turn_only, num_proc, batch_size,
                                turns, overflow, reasoning, inline_reasoning, mask_source, opening)
    enc = encoder_for(tokenizer, template, reasoning=reasoning, inline_reasoning=inline_reasoning,
                      mask_source=mask_source, opening=opening)
    examples: list[EncodedExample] = []
    quarantined: list[dict] = []
    bar = progress_bar(total=len(convs), desc="encode", unit="conv", enabled=progress)
    work = [_prepared(enc, c) for c in convs] if enc.markers is not None else convs
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
            bar.update(len(chunk))
    bar.close()
    return examples, quarantined


def _rendered_and_tokenized(enc: Encoder, convs: Sequence[Conversation], batch_size: int):
    """``(chunk, results, layouts, encodings)`` per batch of ``batch_size`` conversations.

    The tokenizer works on batch i+1 in a background thread (it releases the GIL) while the
    caller builds the examples of batch i, so rendering and weighting overlap tokenization.
    ``results[j]`` is already the quarantine reason where chunk[j] could not be rendered.
    """
    def tokenize(layouts: dict[int, Layout]):
        return enc.backend.encode_batch([lay.text for lay in layouts.values()], add_special_tokens=False)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sftlab-tokenize") as pool:
        ahead = None
        for b in range(0, len(convs), batch_size):
            chunk = convs[b:b + batch_size]
            results, layouts = _render_chunk(enc, chunk)
            submitted = (chunk, results, layouts, pool.submit(tokenize, layouts))
            if ahead is not None:
                encodings = ahead[3].result()
                yield *ahead[:3], encodings
                # The caller is done with them: freed on the tokenizer's thread between two batches
                # (a batch's encodings are millions of small allocations of the tokenizer's threads,
                # whose frees from this thread would wait on their allocator locks while it encodes).
                pool.submit(encodings.clear)
                del encodings
            ahead = submitted
        if ahead is not None:
            yield *ahead[:3], ahead[3].result()


def _render_chunk(enc: Encoder, chunk: Sequence[Conversation]) -> tuple[list, dict[int, Layout]]:
    results: list = [None] * len(chunk)
    layouts: dict[int, Layout] = {}
    for j, conv in enumerate(chunk):
        if isinstance(conv, str):  # refused before rendering (``_prepared``)
            results[j] = conv
            continue
        try:
            layouts[j] = continuation_layout(enc, conv) if conv.plain else render_layout(enc, conv.messages, conv.tools)
        except TemplateError as e:
            results[j] = _reason(e, inline_hint(enc, conv.messages))
    return results, layouts


def _finish_chunk(enc: Encoder, chunk: Sequence[Conversation], results: list, layouts: dict[int, Layout],
                  encodings, max_length: int | None, last_turn_only: bool, turns: str = "whole",
                  overflow: str = "drop", part: bool = False) -> None:
    """Fill ``results`` with each conversation's example (a list of them where ``turns`` or
    ``overflow`` made more than one), or the reason it is quarantined. Unless ``part``, every
    reasoning block of a conversation is in its rendering or in its turn's own example, or an
    option drops it (``reasoning: drop``; ``last_turn_only``: earlier turns are context as the
    template shows them at inference)."""
    long: dict[int, _Truncation] = {}
    full: dict[int, object] = {}  # the encodings of the truncated ones
    extra: dict[int, list[EncodedExample]] = {}
    for j, encoding in zip(layouts, encodings):
        conv = chunk[j]
        try:
            skip: frozenset = frozenset()
            if turns == "expand":
                skip, extra[j] = _expand(enc, conv, layouts[j], max_length, last_turn_only, overflow)
            # only a record with reasoning pays for the check; reasoning: drop and last_turn_only drop it
            if not (part or last_turn_only) and enc.reasoning != "drop" and any(m.reasoning for m in conv.messages):
                accounting.check_reasoning(layouts[j], conv.messages, enc.template.name,
                                           set(trained_messages(conv.messages, last_turn_only)) | skip)
            # every trained turn has an example of its own: no example of the whole conversation
            own = turns == "expand" and not set(trained_messages(conv.messages, last_turn_only)) - skip
            ex = None if own else build(enc, conv, conv.messages, last_turn_only, 0, layouts[j], encoding, skip)
            if layouts[j].rewritten and not part:  # the template rewrote some message: is all of its text there?
                _check_rewritten(enc, conv, layouts[j], last_turn_only, skip)
            if own:
                results[j] = extra[j]
                continue
            if max_length is not None and len(ex) > max_length:
                long[j] = _Truncation(conv, ex, layouts[j], encoding, max_length, skip)
                full[j] = encoding
            else:
                results[j] = _with_extra(check_trained(ex), extra.get(j))
        except (EncodingError, TemplateError) as e:
            results[j] = _reason(e, inline_hint(enc, conv.messages))
    # Truncated conversations: the first candidate of each, tokenized in one batch.
    firsts: dict[int, Layout] = {}
    for j, t in long.items():
        if len(t.groups) >= 2:
            try:
                firsts[j] = t.layout(enc, t.k)
            except TemplateError as e:
                results[j] = _reason(e)
    # A candidate that is the full text with whole exchanges cut out between two equal special
    # tokens is read from the full encoding (``splice``); the others are tokenized in one batch.
    encoded = {j: sp for j in firsts if (sp := splice(enc, layouts[j], full[j], firsts[j])) is not None}
    rest = [j for j in firsts if j not in encoded]
    encoded.update(zip(rest, enc.backend.encode_batch([firsts[j].text for j in rest], add_special_tokens=False)))
    for j, t in long.items():
        if results[j] is not None:
            continue
        try:
            first = t.cut(enc, t.k, last_turn_only, firsts[j], encoded[j]) if j in firsts else None
            best = check_trained(t.search(enc, last_turn_only, first))
            parts = t.overflow(enc, best, last_turn_only, overflow, turns)
            results[j] = _with_extra(parts[0], parts[1:] + extra.get(j, []))
        except (EncodingError, TemplateError) as e:
            results[j] = _reason(e)



def _check_rewritten(enc: Encoder, conv: Conversation, layout: Layout, last_turn_only: bool,
                     skip: frozenset) -> None:
    """All of the text of each message the template rewrote is there (``accounting.check_rewritten``)."""
    accounting.check_rewritten(layout, conv.messages, enc.template.name, enc.template.source,
                               set(trained_messages(conv.messages, last_turn_only)) | skip, last_turn_only)


def _with_extra(ex: EncodedExample, extra: list[EncodedExample] | None):
    return [ex, *extra] if extra else ex


def _expand(enc: Encoder, conv: Conversation, layout: Layout, max_length, last_turn_only, overflow):
    """``(turns trained elsewhere, their examples)``: each trained assistant turn that the layout
    shows re-rendered becomes an example of its own, the conversation up to and including it,
    rendered as the template renders it at inference for that turn, with only that turn trained."""
    trained = trained_messages(conv.messages, last_turn_only)
    rerendered = sorted(set(trained) & set(layout.rerendered))
    out: list[EncodedExample] = []
    for i in rerendered:
        msgs = tuple(dataclasses.replace(m, train=(k == i)) for k, m in enumerate(conv.messages[:i + 1]))
        sub = dataclasses.replace(conv, messages=msgs)
        for ex in _encode_one(enc, sub, max_length, False, "whole", overflow, part=True):
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
                 inline_reasoning=True, mask_source="contract", opening=(0, 1.0)):
    _WORKER.update(tokenizer=tokenizer, template=template, max_length=max_length,
                   last_turn_only=last_turn_only, batch_size=batch_size, turns=turns, overflow=overflow,
                   reasoning=reasoning, inline_reasoning=inline_reasoning, mask_source=mask_source, opening=opening)


def _worker_run(convs):
    w = _WORKER
    return encode_all(convs, w["tokenizer"], w["template"], max_length=w["max_length"],
                      last_turn_only=w["last_turn_only"], batch_size=w["batch_size"], turns=w["turns"],
                      overflow=w["overflow"], reasoning=w["reasoning"], inline_reasoning=w["inline_reasoning"],
                      mask_source=w["mask_source"], opening_tokens=w["opening"][0], opening_weight=w["opening"][1])


def _encode_parallel(convs, tokenizer, template, max_length, last_turn_only, num_proc, batch_size, turns, overflow,
                     reasoning="keep", inline_reasoning=True, mask_source="contract", opening=(0, 1.0)):
    if not isinstance(template, ChatTemplate):
        template = get_template(template, tokenizer)
    # Fail early, in this process, on a template/tokenizer mismatch.
    encoder_for(tokenizer, template, reasoning=reasoning, inline_reasoning=inline_reasoning, mask_source=mask_source,
                opening=opening)
    step = -(-len(convs) // (num_proc * 4))
    chunks = [convs[i:i + step] for i in range(0, len(convs), step)]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ctx = mp.get_context("fork")
    with ctx.Pool(num_proc, initializer=_worker_init,
                  initargs=(tokenizer, template, max_length, last_turn_only, batch_size, turns, overflow,
                            reasoning, inline_reasoning, mask_source, opening)) as pool:
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
    enc = encoder_for(tokenizer, template, allow_missing_control=True)
    msgs = [template_messages([m])[0] if isinstance(m, Message) else m for m in messages]
    layout = enc.template.layout(msgs, add_generation_prompt=add_generation_prompt, tools=tools)
    ids, _ = enc.tokenize(layout)
    return list(ids)
