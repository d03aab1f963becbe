"""A truncation candidate's encoding read from the full conversation's encoding instead of
tokenizing it again: where the candidate is the full text with whole exchanges cut out between two
equal special tokens, the tokenizer splits at those tokens, so the kept pieces tokenize exactly as
in the full text (``splice``; ``Spliced`` gives ``ids``, ``offsets`` and ``char_to_token`` as the
tokenizer's own encoding of the candidate would).

Example::

    >>> class Full:   # the encoding of "ab|cd|ef" with one token per character
    ...     ids = list(range(8)); offsets = [(k, k + 1) for k in range(8)]
    ...     def char_to_token(self, pos, sequence_index=0): return pos
    >>> cut = Spliced(Full(), Full.ids, 2, 3, 2, 5)   # "cd|" (3 characters, tokens 2..4) cut out at 2
    >>> cut.ids, cut.offsets[2], cut.char_to_token(3)
    ([0, 1, 5, 6, 7], (2, 3), 3)
"""
from __future__ import annotations

from sftlab.tokens.encoder import Encoder
from sftlab.tokens.layout import Layout

__all__ = ["Spliced", "splice"]


class Spliced:
    """The encoding of ``text[:s] + text[s + d:]`` read from the encoding ``full`` of ``text``,
    where token ``ia`` of ``full`` starts at ``s`` and token ``ib`` at ``s + d`` (see ``splice``):
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


def _splice_ids(enc: Encoder) -> frozenset:
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


def splice(enc: Encoder, layout: Layout, full, candidate: Layout) -> Spliced | None:
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
    return Spliced(full, ids, s, d, ia, ib)

