"""MinHash signatures in bulk, LSH candidate search, and the near-duplicate and leakage search.

datasketch's ``MinHash`` updates one record at a time in Python; for 100k conversations that is
most of a minute. ``MinHasher`` computes the same signatures (a test checks they are identical
to datasketch's) for blocks of texts at once with numpy, and uses datasketch's ``MinHashLSH``
band parameters, so candidates are what datasketch would find. ``near_duplicates`` and
``near_leaks`` confirm every candidate with the exact Jaccard similarity of the two shingle sets
(the best three by MinHash estimate are tried), over any table of texts that has the
``Texts`` methods: the statistics engine's summaries (``sftlab.data.chunk_stats.Summaries``),
in memory or memory-mapped from a prepared store, so both reports find the same pairs.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

DEFAULT_NUM_PERM = 64
MINHASH_SEED = 1
LSH_WEIGHTS = (0.1, 0.9)  # false positive, false negative
_UNSPACED_SCRIPT = r"([\p{Han}\p{Hiragana}\p{Katakana}])"  # RE2: scripts written without spaces
_INVISIBLE = r"\p{Cf}"  # RE2: format characters (U+200B, U+200D, U+00AD, U+FEFF, U+202E, ...)
_SHINGLE_CHUNK = 1 << 14  # shingles per numpy block of the signature computation (x num_perm: 4 MiB)
_TEXT_CHUNK = 1 << 14  # texts per block of word splitting and hashing


class MinHasher:
    """Normalised words, exact-match keys and MinHash signatures of word 3-shingle sets, in bulk.

    Texts are NFKC-normalised with invisible format characters dropped (so "café" spelt
    composed or decomposed, or a word broken by a zero-width space, is one word), lowercased
    and split on whitespace by pyarrow's compute kernels (each Chinese or
    Japanese character a word of its own, since those scripts use no spaces); each distinct word
    is hashed once, in bulk over its UTF-8 bytes (``_string_hashes``: 64 bits, stable across
    runs); a shingle's 32-bit hash mixes its three word hashes. The signature of a text is, per permutation k, ``min over its shingles h of
    a_k * fmix32(h) + b_k mod 2^32`` with datasketch's own ``(a_k, b_k)`` for ``seed``: the values
    datasketch's ``MinHash(num_perm, seed, hashfunc=identity, scheme="affine32")`` holds after
    ``update_batch(shingle_hashes)``, so they go straight into ``LeanMinHash`` and ``MinHashLSH``.
    """

    def __init__(self, num_perm: int = DEFAULT_NUM_PERM, seed: int = MINHASH_SEED):
        from datasketch import MinHash  # lazy: datasketch (scipy) costs 0.8 s to import

        self.num_perm, self.seed = num_perm, seed
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self._a, self._b = a.astype(np.uint32)[:, None], b.astype(np.uint32)[:, None]

    def words(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(word hashes uint64, offsets)``: text i's normalised words are
        ``hashes[offsets[i]:offsets[i + 1]]``."""
        import pyarrow as pa  # lazy: pyarrow costs 0.3 s to import
        import pyarrow.compute as pc

        if not len(texts):
            return np.zeros(0, np.uint64), np.zeros(1, np.int64)
        texts = pa.array(texts, type=pa.large_string())
        ascii = pc.all(pc.string_is_ascii(texts)).as_py()
        if ascii:  # lowercased as ASCII, no unspaced script
            lowered = pc.ascii_lower(texts)
        else:
            # One spelling per text: NFKC (composed and decomposed accents, full-width letters
            # and ligatures compare equal), invisible format characters (zero-width spaces and
            # joiners, soft hyphens, bidi marks, a BOM) dropped, so a copy cannot hide behind them.
            texts = pc.replace_substring_regex(pc.utf8_normalize(texts, form="NFKC"), _INVISIBLE, "")
            lowered = pc.utf8_lower(texts)
            # Chinese and Japanese are written without spaces: each of their characters counts as a
            # word, so shingles over them are character shingles and near-copies are found there too.
            lowered = pc.replace_substring_regex(lowered, _UNSPACED_SCRIPT, r" \1 ")
        # The split yields "" words where a text starts with whitespace (or is empty).
        words = split_words(lowered, ascii)
        offsets = words.offsets.to_numpy().astype(np.int64)
        encoded = words.flatten().dictionary_encode()
        ids = encoded.indices.to_numpy()
        table = _string_hashes(encoded.dictionary)
        empty = np.flatnonzero(np.diff(_string_offsets(encoded.dictionary)) == 0)
        if len(empty):
            empty = ids == empty[0]
            n = np.diff(offsets)
            text_of_word = np.repeat(np.arange(len(n)), n)
            n = n - np.bincount(text_of_word[empty], minlength=len(n))
            ids, offsets = ids[~empty], np.concatenate(([0], np.cumsum(n)))
        return table[ids], offsets - offsets[0]

    @staticmethod
    def keys(hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """``[texts, 16]`` uint8: one 128-bit key per text of its normalised word sequence (two
        64-bit lanes of ``_sequence_keys``): equal keys, equal texts."""
        return np.stack(_sequence_keys(hashes, offsets), axis=1).astype("<u8").view(np.uint8).reshape(len(offsets) - 1, 16)

    @staticmethod
    def shingles(hashes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(shingle hashes uint32, starts)``, text i's at ``[starts[i]:starts[i + 1]]``; a text
        shorter than 3 words is padded (hash 0) to one shingle."""
        n = np.diff(offsets)
        if (n < 3).any():
            padded_n = np.maximum(n, 3)
            padded_offsets = np.concatenate(([0], np.cumsum(padded_n)))
            padded = np.zeros(int(padded_offsets[-1]), dtype=np.uint64)
            padded[np.repeat(padded_offsets[:-1] - offsets[:-1], n) + np.arange(len(hashes))] = hashes
            hashes, n, offsets = padded, padded_n, padded_offsets
        shingle = _mix64(hashes[:-2] * np.uint64(0x9E3779B97F4A7C15)
                         + hashes[1:-1] * np.uint64(0xC2B2AE3D27D4EB4F) + hashes[2:])
        # A shingle starting at either of a text's last two words would run into the next text.
        keep = np.ones(len(hashes), dtype=bool)
        keep[offsets[1:] - 1] = keep[offsets[1:] - 2] = False
        starts = np.concatenate(([0], np.cumsum(n - 2)))
        return (shingle[keep[:len(shingle)]] >> np.uint64(32)).astype(np.uint32), starts

    def signatures(self, hashes: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """``[len(starts) - 1, num_perm]`` uint32 signatures, one row per text."""
        n = len(starts) - 1
        out = np.empty((n, self.num_perm), dtype=np.uint32)
        mixed = _fmix32(hashes)
        # One buffer reused by every block (4 MiB, near the cache), computed in place.
        buf = np.empty((self.num_perm, _SHINGLE_CHUNK), dtype=np.uint32)
        i = 0
        while i < n:  # blocks of whole texts, about _SHINGLE_CHUNK shingles each
            j = max(int(np.searchsorted(starts, starts[i] + _SHINGLE_CHUNK, side="right")) - 1, i + 1)
            m = int(starts[j] - starts[i])
            block = buf[:, :m] if m <= _SHINGLE_CHUNK else np.empty((self.num_perm, m), dtype=np.uint32)
            np.multiply(self._a, mixed[None, starts[i]:starts[j]], out=block)  # [num_perm, shingles]
            np.add(block, self._b, out=block)
            out[i:j] = np.minimum.reduceat(block, starts[i:j] - starts[i], axis=1).T
            i = j
        return out

    def lean(self, signature: np.ndarray):
        from datasketch import LeanMinHash  # lazy: see __init__

        return LeanMinHash(seed=self.seed, hashvalues=signature, scheme="affine32")


def split_words(strings, ascii: bool = False):
    """The whitespace-separated words of each string of a pyarrow string array (a list array),
    trailing whitespace dropped first, so the words never depend on the bytes after a string.
    ``ascii``: every string is ASCII, split by the ASCII kernels (a third faster) where they give
    the same words: unless a string holds U+001C..U+001F, which Unicode (and ``str.split``)
    count as whitespace and the ASCII kernels do not.

    pyarrow's ``utf8_split_whitespace`` (to 26 at least) decodes one code point past the end of a
    string that ends in whitespace before it checks the end, and keeps the whitespace in the last
    word when that code point is not valid UTF-8. Inside an array it is the next string's first;
    after the last string it is the buffer's zero padding, or, when the strings fill the buffer to
    its 64-byte boundary, whatever earlier work left in the memory beyond: that text's last word,
    and so its exact-match key and MinHash signature, changed with what had run before in the
    process (or in the one a worker was forked from). Trimmed first (``utf8_rtrim_whitespace``,
    the same whitespace; the split only made "" words of it), no string ends in whitespace and the
    split never reads past one.

    One string "x " whose buffer holds a byte that is not UTF-8 after it (the split alone gives
    ``[['x ']]``):

        >>> import pyarrow as pa
        >>> offsets = pa.py_buffer(np.array([0, 2], np.int64).tobytes())
        >>> x = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(b"x \\x80")])
        >>> split_words(x).to_pylist()
        [['x']]
    """
    import pyarrow.compute as pc  # lazy: see MinHasher.words

    if ascii and strings.buffers()[2] is not None:
        data = np.frombuffer(strings.buffers()[2], dtype=np.uint8)
        if not ((data >= 0x1C) & (data <= 0x1F)).any():  # the buffer's unused bytes can only say no
            return pc.ascii_split_whitespace(pc.ascii_rtrim_whitespace(strings))
    return pc.utf8_split_whitespace(pc.utf8_rtrim_whitespace(strings))


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (a bijection on uint64), element-wise; wraps modulo 2^64. Computed
    in place in ``z`` (returned) when it is a uint64 array of its own, which every caller here
    passes (a fresh temporary), so millions of words cost one buffer, not ten."""
    if not (isinstance(z, np.ndarray) and z.dtype == np.uint64 and z.flags.writeable and z.base is None):
        z = np.array(z, dtype=np.uint64)
    t = np.right_shift(z, np.uint64(30))
    z ^= t
    z *= np.uint64(0xBF58476D1CE4E5B9)
    np.right_shift(z, np.uint64(27), out=t)
    z ^= t
    z *= np.uint64(0x94D049BB133111EB)
    np.right_shift(z, np.uint64(31), out=t)
    z ^= t
    return z


_BYTE_SALT, _KEY_SALTS = np.uint64(0x5DEECE66D), (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xD1B54A32D192ED03))


def _string_offsets(strings) -> np.ndarray:
    """The int64 offsets of a pyarrow (large) string array, from 0."""
    width = np.int64 if strings.type == "large_string" else np.int32
    offsets = np.frombuffer(strings.buffers()[1], dtype=width)[strings.offset:strings.offset + len(strings) + 1]
    return offsets.astype(np.int64)


def _string_hashes(strings) -> np.ndarray:
    """A 64-bit hash per string of a pyarrow string array, in NumPy over the UTF-8 bytes: the
    wrapped sum of ``_mix64(byte << 32 | position)`` over the string's bytes, mixed with its
    length. Equal strings, equal hashes, in any process; no Python per string.

        >>> import pyarrow as pa
        >>> h = _string_hashes(pa.array(["ab", "ba", "ab", ""], type=pa.large_string()))
        >>> bool(h[0] == h[2]), bool(h[0] != h[1]), int(h[3]) == int(_mix64(np.zeros(1, np.uint64))[0])
        (True, True, True)
    """
    offsets = _string_offsets(strings)
    data = strings.buffers()[2]
    data = (np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8))[offsets[0]:offsets[-1]]
    offsets = offsets - offsets[0]
    n = np.diff(offsets)
    position = np.arange(len(data), dtype=np.uint64) - np.repeat(offsets[:-1], n).astype(np.uint64)
    terms = _mix64(((data.astype(np.uint64) << np.uint64(32)) + position) ^ _BYTE_SALT)  # a bijection of (byte, position)
    return _mix64(_segment_sums(terms, offsets) ^ n.astype(np.uint64) * _KEY_SALTS[0])


def _sequence_keys(hashes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit hashes per sequence ``hashes[offsets[i]:offsets[i + 1]]`` (order and length
    count): wrapped sums of ``_mix64(hash + position * K)``, plain and times ``2 * position + 1``."""
    n = np.diff(offsets)
    position = np.arange(len(hashes), dtype=np.uint64)
    position -= np.repeat(offsets[:-1].astype(np.uint64), n)
    terms = np.multiply(position, _KEY_SALTS[0])
    terms += hashes
    terms = _mix64(terms)
    weighted = position  # 2 * position + 1, then times the terms, in place
    weighted *= np.uint64(2)
    weighted += np.uint64(1)
    weighted *= terms
    length = n.astype(np.uint64)
    return (_mix64(_segment_sums(terms, offsets) ^ length * _KEY_SALTS[0]),
            _mix64(_segment_sums(weighted, offsets) ^ length * _KEY_SALTS[1]))


def _segment_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sums modulo 2^64 of ``values[offsets[i]:offsets[i + 1]]`` (empty segments: 0)."""
    total = np.empty(len(values) + 1, dtype=np.uint64)
    total[0] = 0
    np.cumsum(values, dtype=np.uint64, out=total[1:])
    return total[offsets[1:]] - total[offsets[:-1]]


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, the pre-mix of datasketch's affine32 scheme."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def lsh_index(signer: MinHasher, threshold: float):
    from datasketch import MinHashLSH  # lazy: see MinHasher.__init__

    # Every candidate is confirmed with the exact Jaccard, so the bands favour recall: with 64
    # permutations at threshold 0.8 a pair at 0.8 becomes a candidate with p = 0.88, at 0.9 0.997.
    return MinHashLSH(threshold=threshold, num_perm=signer.num_perm, weights=LSH_WEIGHTS)


# A text can only be an LSH candidate of another when some band of their signatures is equal.
# These masks find, in bulk, the texts that share a band with any other; the rest can neither
# find nor be found, so leaving them out of the datasketch index changes no result and saves
# its per-item cost (tens of microseconds per insert or query) on almost every record.

def band_keys(sigs: np.ndarray, hashranges: Sequence[tuple[int, int]]) -> np.ndarray:
    """``[texts, bands]`` uint64: one hash per LSH band; equal bands give equal keys."""
    keys = np.empty((len(sigs), len(hashranges)), dtype=np.uint64)
    for k, (start, end) in enumerate(hashranges):
        h = np.zeros(len(sigs), dtype=np.uint64)
        for col in range(start, end):
            h = _mix64(h ^ sigs[:, col].astype(np.uint64))
        keys[:, k] = h
    return keys


def colliding(keys: np.ndarray) -> np.ndarray:
    """Texts whose key in some band is also another text's key in that band."""
    mask = np.zeros(len(keys), dtype=bool)
    for k in range(keys.shape[1]):
        _, inverse, counts = np.unique(keys[:, k], return_inverse=True, return_counts=True)
        mask |= counts[inverse] > 1
    return mask


def shared_keys(keys: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Texts of ``keys`` whose key in some band is also a key of ``other`` in that band."""
    mask = np.zeros(len(keys), dtype=bool)
    for k in range(keys.shape[1]):
        mask |= np.isin(keys[:, k], other[:, k])
    return mask


# ---------------------------------------------------------------- the search, confirmed exactly

class Texts(Protocol):
    """A table of texts by row (``sftlab.data.chunk_stats.Summaries``): for ``kind`` "conv" or
    "prompt", the MinHash signatures of some rows, their LSH band keys, and a row's shingle set."""

    def rows(self, name: str, rows: np.ndarray) -> np.ndarray: ...

    def column(self, name: str) -> np.ndarray: ...

    def shingle_set(self, kind: str, row: int) -> np.ndarray: ...


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted sets of unique shingle hashes.

    >>> jaccard(np.array([1, 2, 3, 4]), np.array([2, 3, 4, 5]))
    0.6
    """
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def _confirm(texts: Texts, kind: str, row: int, other: Texts, candidates: np.ndarray, sigs: np.ndarray,
             sig: np.ndarray, threshold: float) -> tuple[int, float] | None:
    """The candidate of ``other`` most similar to ``texts``' row with exact Jaccard >= threshold,
    trying the best three by MinHash estimate (``sigs``: the candidates' signatures)."""
    estimate = (sigs == sig).mean(axis=1)
    mine = texts.shingle_set(kind, row)
    for k in np.argsort(-estimate, kind="stable")[:3]:
        if (jac := jaccard(mine, other.shingle_set(kind, int(candidates[k])))) >= threshold:
            return int(candidates[k]), jac
    return None


def near_duplicates(texts: Texts, rows: np.ndarray, signer: MinHasher,
                    threshold: float) -> list[tuple[int, int, float]]:
    """``[(row, earlier row, Jaccard)]``: each of ``rows`` (in order; exact copies left out by the
    caller) whose conversation text has Jaccard >= ``threshold`` with an earlier novel one. Only
    novel texts stay in the index, so a chain of small edits is measured against its first text."""
    rows = rows[colliding(texts.column("conv_bands")[rows])] if len(rows) else rows
    lsh, inserted, found = lsh_index(signer, threshold), {}, []
    for r, sig in zip(rows.tolist(), texts.rows("conv_sigs", rows)):
        m = signer.lean(sig)
        candidates = np.fromiter(lsh.query(m), np.int64)
        match = (_confirm(texts, "conv", r, texts, candidates, np.stack([inserted[c] for c in candidates.tolist()]),
                          sig, threshold) if len(candidates) else None)
        if match is None:
            lsh.insert(r, m, check_duplication=False)
            inserted[r] = sig
        else:
            found.append((r, *match))
    return found


def near_leaks(held: Texts, held_rows: np.ndarray, train: Texts, train_rows: np.ndarray, signer: MinHasher,
               threshold: float) -> dict[int, tuple[int, float]]:
    """``{held row: (train row, Jaccard)}`` for the held-out prompts with a near duplicate among
    the training prompts ``train_rows``.

    The smaller side goes into the LSH index and the larger one queries it, since an insert costs
    datasketch about twice a query (held-out sets are usually far smaller than training).
    """
    if not len(held_rows) or not len(train_rows):
        return {}
    index_held = len(held_rows) < len(train_rows)
    (indexed, i_rows), (probing, p_rows) = (((held, held_rows), (train, train_rows)) if index_held
                                            else ((train, train_rows), (held, held_rows)))
    i_keys, p_keys = indexed.column("prompt_bands")[i_rows], probing.column("prompt_bands")[p_rows]
    lsh = lsh_index(signer, threshold)
    i_rows = i_rows[shared_keys(i_keys, p_keys)]
    inserted = dict(zip(i_rows.tolist(), indexed.rows("prompt_sigs", i_rows)))
    for k, sig in inserted.items():
        lsh.insert(k, signer.lean(sig), check_duplication=False)
    p_rows = p_rows[shared_keys(p_keys, i_keys)]
    found: dict[int, tuple[int, float]] = {}
    for p, sig in zip(p_rows.tolist(), probing.rows("prompt_sigs", p_rows)):
        candidates = np.fromiter(lsh.query(signer.lean(sig)), np.int64)
        if index_held:  # p is a training prompt: confirm each held-out prompt it may be a near copy of
            mine = train.shingle_set("prompt", p)
            for k in candidates.tolist():
                if k not in found and (jac := jaccard(held.shingle_set("prompt", k), mine)) >= threshold:
                    found[k] = (p, jac)
        elif len(candidates) and (match := _confirm(held, "prompt", p, train, candidates, np.stack(
                [inserted[c] for c in candidates.tolist()]), sig, threshold)):
            found[p] = match
    return found


def first_rows(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first row of each row's key, whether the row is the first)``, keys as [n, 16] bytes.

    >>> k = np.array([[1] * 16, [2] * 16, [1] * 16], dtype=np.uint8)
    >>> [a.tolist() for a in first_rows(k)]
    [[0, 1, 0], [True, True, False]]
    """
    if not len(keys):
        return np.zeros(0, np.int64), np.zeros(0, bool)
    flat = np.ascontiguousarray(keys).view(np.dtype((np.void, 16))).ravel()
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    firsts = first[inverse.ravel()]
    return firsts, firsts == np.arange(len(keys))
