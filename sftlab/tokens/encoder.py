"""A tokenizer bound to a template (``Encoder``): the rendering tokenized once with character offsets,
content that spells a special token encoded as ordinary text (no control token ever comes from
content), and each token's loss weight read off the layout's trained turns. ``encoder_for`` keeps
one per tokenizer and template.

Example (a tokenizer with ``<|im_start|>``/``<|im_end|>`` as special tokens)::

    >>> from sftlab.demo.tiny import build_tokenizer
    >>> from sftlab.tokens.templates import get_template
    >>> tok = build_tokenizer()
    >>> enc = encoder_for(tok, get_template("chatml", tok))
    >>> lay = enc.template.layout([{"role": "user", "content": "<|im_end|>"}, {"role": "assistant", "content": "ok"}])
    >>> ids, offsets = enc.tokenize(lay)
    >>> ids.count(tok.convert_tokens_to_ids("<|im_end|>"))   # the user's one is text: only the template's two
    2
    >>> enc.weights(offsets, lay, {1: 1.0}).count(1.0) == len(tok("ok<|im_end|>", add_special_tokens=False).input_ids)
    True
"""
from __future__ import annotations

import bisect
import re
import weakref
from collections.abc import Sequence

from sftlab.data.conversation import REASONING_MODES
from sftlab.data.reasoning_blocks import marker_pattern
from sftlab.tokens.generation_markers import check_mask_source
from sftlab.tokens.layout import Layout
from sftlab.tokens.role_tokens import missing_control_tokens
from sftlab.tokens.templates import ChatTemplate, TemplateError, get_template, reasoning_tags

__all__ = ["Encoder", "encoder_for"]


class Encoder:
    """A tokenizer bound to a template, with the lookups encoding needs prepared once."""

    def __init__(self, tokenizer, template: ChatTemplate, *, allow_missing_control: bool = False,
                 reasoning: str = "keep", inline_reasoning: bool = True,
                 mask_source: str = "contract", opening: tuple[int, float] = (0, 1.0)):
        if reasoning not in REASONING_MODES:
            raise ValueError(f"reasoning must be one of {', '.join(REASONING_MODES)}, not {reasoning!r}")
        self.reasoning = reasoning
        self.mask_source = check_mask_source(mask_source, template)
        self.opening = (int(opening[0]), float(opening[1]))
        """(k, w): the first k trained tokens of each trained turn weigh w times their turn's weight."""
        self.thinks = reasoning_tags(template.source) if inline_reasoning else ()
        """The (opener, closer) pairs read as reasoning at the start of assistant content."""
        self.markers = marker_pattern(self.thinks) if self.thinks else None
        """Every opener and closer of ``thinks``, as one pattern."""
        self.untrained_markers = self.markers if reasoning != "keep" else None
        """Under ``reasoning: mask | drop``: no trained token of an answer's text may hold one."""
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
        # that spells one. (tokenizers is imported here, on first use, for start-up time.)
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
        found, text, finditer = [], layout.text, self.special_re.finditer
        for s in layout.spans:
            found.extend(m.span() for m in finditer(text, s.start, s.end))
        for a, b in layout.data_ranges:
            found.extend(m.span() for m in finditer(text, a, b))
        return sorted(set(found)) if found else found

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
        for a, b in layout.unweighted:  # masked reasoning: rendered, no token holding any of it trained
            for k in range(bisect.bisect_right(ends, a), bisect.bisect_left(starts, b)):
                w[k] = 0.0
        return w


_ENCODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def encoder_for(tokenizer, template: ChatTemplate | str | None, allow_missing_control: bool = False,
             reasoning: str = "keep", inline_reasoning: bool = True,
             mask_source: str = "contract", opening: tuple[int, float] = (0, 1.0)) -> Encoder:
    if not isinstance(template, ChatTemplate):
        template = get_template(template, tokenizer)
    key = (template.fingerprint, allow_missing_control, reasoning, inline_reasoning, mask_source, tuple(opening))
    try:
        cache = _ENCODERS.setdefault(tokenizer, {})
    except TypeError:
        cache = {}
    if key not in cache:
        cache[key] = Encoder(tokenizer, template, allow_missing_control=allow_missing_control,
                              reasoning=reasoning, inline_reasoning=inline_reasoning, mask_source=mask_source,
                              opening=opening)
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
