"""Packing: whole encoded examples into rows of at most ``max_length`` tokens, and rows into tensors.

``pack`` places examples by best-fit-decreasing: the longest example first, each into the open
row whose free space fits it most tightly, a new row when none fits. An example is never split,
``position_ids`` restart at 0 for every example, and each row keeps the per-example lengths, from
which the attention boundaries (a block-diagonal causal mask, or ``cu_seqlens`` for varlen
kernels) are built by ``collate``. Labels are *not* shifted here; ``sftlab.model.objective`` does that,
in one place.

Example (token ids equal to the example index, so a person can check the rows by hand)::

    >>> from types import SimpleNamespace as Ex
    >>> examples = [Ex(input_ids=[0, 0, 0], loss_weights=[0, 1, 1]),
    ...             Ex(input_ids=[1, 1], loss_weights=[0, 1]),
    ...             Ex(input_ids=[2, 2, 2, 2], loss_weights=[0, 0, 1, 1]),
    ...             Ex(input_ids=[3], loss_weights=[1])]
    >>> rows = pack(examples, max_length=5)
    >>> [r.input_ids.tolist() for r in rows]
    [[2, 2, 2, 2, 3], [0, 0, 0, 1, 1]]
    >>> [r.position_ids for r in rows]
    [(0, 1, 2, 3, 0), (0, 1, 2, 0, 1)]
    >>> [(r.lengths, r.example_indices, r.cu_seqlens) for r in rows]
    [((4, 1), (2, 3), (0, 4, 5)), ((3, 2), (0, 1), (0, 3, 5))]
    >>> packing_efficiency(rows, 5)
    1.0

The longest example (2) opens row 0 with 1 token free, example 0 opens row 1 with 2 free,
example 1 fills row 1 exactly, and example 3 fills the last token of row 0.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
import bisect
from itertools import chain
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sftlab import collector
from sftlab.tokens.arrays import TokenArray, as_tensor, token_ids
from sftlab.tokens.arrays import loss_weights as weight_array

if TYPE_CHECKING:
    from sftlab.tokens.rows import Row

__all__ = ["PackedRow", "pack", "pack_lengths", "check_lengths", "pad_rows", "packing_efficiency", "packing_stats",
           "collate", "additive_mask"]


@dataclass(frozen=True)
class _Tokens:
    """A bare example: what ``PackedRow.from_tokens`` lays into a row."""
    input_ids: Any
    loss_weights: Any


@dataclass(frozen=True)
class PackedRow:
    """Whole examples laid end to end; at most ``max_length`` tokens, no padding (``collate`` pads).
    A ``sftlab.tokens.rows.Row``, as a prepared store's ``StoreRow`` is.

    A row refers to its examples instead of copying their tokens, so the rows of an epoch cost a
    few bytes each however long the data is; ``input_ids``, ``loss_weights`` and ``position_ids``
    are put together when asked for (``collate`` asks once per row and step).
    """
    examples: tuple[Any, ...]
    """The examples (anything with ``input_ids`` and ``loss_weights``), in row order, shared with the caller."""
    example_indices: tuple[int, ...]
    """Index of each example in the list given to ``pack`` / ``pad_rows``."""

    def __post_init__(self):  # examples are checked where rows are made (pack, pad_rows, from_tokens)
        if len(self.examples) != len(self.example_indices):
            raise ValueError("PackedRow: one example index per example expected")

    @classmethod
    def from_tokens(cls, input_ids: Sequence[int], loss_weights: Sequence[float],
                    lengths: Sequence[int] | None = None, example_indices: Sequence[int] | None = None) -> PackedRow:
        """A row from flat sequences, cut into examples of ``lengths`` (default: one example)."""
        if len(input_ids) != len(loss_weights):
            raise ValueError(f"PackedRow: {len(input_ids)} input_ids but {len(loss_weights)} loss_weights")
        lengths = tuple(lengths) if lengths is not None else (len(input_ids),)
        if sum(lengths) != len(input_ids):
            raise ValueError(f"PackedRow: lengths sum to {sum(lengths)}, not to the {len(input_ids)} input_ids")
        parts, start = [], 0
        for n in lengths:
            parts.append(_Tokens(token_ids(input_ids[start:start + n]), weight_array(loss_weights[start:start + n])))
            start += n
        indices = tuple(example_indices) if example_indices is not None else tuple(range(len(parts)))
        return cls(tuple(parts), indices)

    def __len__(self) -> int:
        return sum(len(ex.input_ids) for ex in self.examples)

    @property
    def input_ids(self) -> TokenArray:
        return _concat((ex.input_ids for ex in self.examples), token_ids)

    @property
    def loss_weights(self) -> TokenArray:
        """Per-token weight of predicting this token (unshifted, as the examples gave them)."""
        return _concat((ex.loss_weights for ex in self.examples), weight_array)

    @property
    def position_ids(self) -> tuple[int, ...]:
        """0, 1, ... restarting at 0 at the first token of every example."""
        return tuple(chain.from_iterable(map(range, self.lengths)))

    @property
    def lengths(self) -> tuple[int, ...]:
        """Number of tokens of each example, in row order."""
        return tuple(len(ex.input_ids) for ex in self.examples)

    @property
    def cu_seqlens(self) -> tuple[int, ...]:
        """Cumulative example lengths starting at 0, as varlen attention kernels take them."""
        out, total = [0], 0
        for n in self.lengths:
            total += n
            out.append(total)
        return tuple(out)

    @property
    def trained_weight(self) -> float:
        """Sum of the loss weights (before the objective drops each example's first position)."""
        return float(sum(sum(ex.loss_weights) for ex in self.examples))


def _concat(parts: Iterable, make) -> TokenArray:
    out = make(())
    for p in parts:
        out.extend(make(p))  # make returns a TokenArray of its kind as it is: a buffer copy
    return out


def _check_example(i: int, ex: Any, max_length: int) -> int:
    n = len(ex.input_ids)
    where = f"example {i}" + (f" (id {ex.id!r})" if getattr(ex, "id", None) is not None else "")
    if len(ex.loss_weights) != n:
        raise ValueError(f"{where}: {n} input_ids but {len(ex.loss_weights)} loss_weights; "
                         "encode must give one weight per token")
    if n == 0:
        raise ValueError(f"{where}: no tokens; drop empty examples before packing")
    if n > max_length:
        raise ValueError(f"{where}: {n} tokens > max_length {max_length}; packing never splits an "
                         "example, so encode with the same max_length (it truncates or quarantines)")
    return n


def _make_row(examples: Sequence[Any], indices: Sequence[int]) -> PackedRow:
    return PackedRow(tuple(examples[i] for i in indices), tuple(indices))


def _best_fit_decreasing(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Groups of positions into ``lengths``; each group sums to <= max_length."""
    members, starts = _bfd_arrays(np.asarray(lengths, dtype=np.int64).reshape(-1), max_length)
    return [g.tolist() for g in np.split(members, starts[1:-1])] if len(members) else []


def _bfd_arrays(lengths: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-fit-decreasing as flat arrays: ``(members, starts)``, row r holding the positions
    ``members[starts[r]:starts[r + 1]]`` in the order they were placed, rows in the order opened.

    The same packing as placing the examples one at a time (longest first, ties by position),
    each into the row with the least free space that fits it (ties: the row opened first), but
    a run of equal lengths L at once: the tightest row, with free space f >= L, keeps taking
    examples of length L until fewer than L tokens are free (no other row can fit tighter, as
    its free space only shrank below f), so it takes ``f // L`` of them, and the rows of one
    free-space value f are filled in the order they were opened. A million examples pack in a
    fraction of a second instead of seconds of one-at-a-time Python.
    """
    n = len(lengths)
    if not n:
        return np.zeros(0, np.int64), np.zeros(1, np.int64)
    # longest first, ties by position; as free space below 2**16, NumPy's stable sort is a radix sort
    key = (max_length - lengths).astype(np.uint16) if max_length < 2 ** 16 else -lengths
    order = np.argsort(key, kind="stable")
    sorted_lengths = lengths[order]
    row_of = np.empty(n, np.int64)                        # the row of each example, in placement order
    buckets: dict[int, list[np.ndarray]] = {}            # free space -> row numbers (sorted parts)
    frees: list[int] = []                                 # free-space values with rows, ascending
    rows = 0

    def put(free: int, new: np.ndarray) -> None:
        if free <= 0 or not len(new):
            return
        if free not in buckets:
            buckets[free] = []
            bisect.insort(frees, free)
        buckets[free].append(new)

    def take(free: int) -> np.ndarray:
        parts = buckets.pop(free)
        frees.remove(free)
        return parts[0] if len(parts) == 1 else np.sort(np.concatenate(parts))

    run_starts = np.flatnonzero(np.diff(sorted_lengths, prepend=-1))
    run_ends = np.append(run_starts[1:], n)
    for a, b in zip(run_starts.tolist(), run_ends.tolist()):
        L, pos, left = int(sorted_lengths[a]), a, b - a
        while left:
            k = bisect.bisect_left(frees, L)
            if k == len(frees):                           # no row fits: open new ones
                q = max_length // L
                full, r = divmod(left, q)
                new = np.arange(rows, rows + full + (r > 0), dtype=np.int64)
                row_of[pos:pos + left] = rows + np.arange(left, dtype=np.int64) // q
                rows += len(new)
                put(max_length - q * L, new[:full])
                if r:
                    put(max_length - r * L, new[full:])
                break
            f = frees[k]
            q = f // L
            bucket = take(f)
            full, r = divmod(left, q)
            used = min(full, len(bucket))
            count = used * q
            row_of[pos:pos + count] = np.repeat(bucket[:used], q)
            pos, left = pos + count, left - count
            put(f - q * L, bucket[:used])
            if used < len(bucket):                        # the run ends inside this bucket
                if r:
                    row_of[pos:pos + r] = bucket[used]
                    put(f - r * L, bucket[used:used + 1])
                    used += 1
                pos, left = pos + r, 0
                put(f, bucket[used:])
    by_row = np.argsort(row_of, kind="stable")
    members = order[by_row]
    starts = np.concatenate(([0], np.cumsum(np.bincount(row_of, minlength=rows)))).astype(np.int64)
    return members, starts


def pack(examples: Sequence[Any], max_length: int) -> list[PackedRow]:
    """Best-fit-decreasing packing of whole examples into rows of at most ``max_length`` tokens.

    ``examples`` are anything with ``input_ids`` and ``loss_weights`` (``EncodedExample``).
    The whole dataset is packed at once (the tightest packing). Rows come in the order they were
    opened, i.e. roughly by
    decreasing length of their first example: shuffle them for training. Ties are broken by
    example index and row number, so the result depends only on the input.
    See the module docstring for a worked example.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    lengths = [_check_example(i, ex, max_length) for i, ex in enumerate(examples)]
    with collector.paused():
        return [_make_row(examples, group) for group in _best_fit_decreasing(lengths, max_length)]


def pack_lengths(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """``pack`` from the lengths alone: groups of example positions, one per row, in row order.

    What a prepared store packs from (``sftlab.prepare``): the rows refer to examples by
    index, and no token is read until a row is collated.

        >>> pack_lengths([3, 2, 4, 1], max_length=5)
        [[2, 3], [0, 1]]
    """
    check_lengths(lengths, max_length)
    with collector.paused():
        return _best_fit_decreasing(lengths, max_length)


def pack_lengths_flat(lengths: Sequence[int] | np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """``pack_lengths`` as two flat arrays, ``(members, starts)``: row r is
    ``members[starts[r]:starts[r + 1]]`` (what training keeps for an epoch of millions of examples).

        >>> members, starts = pack_lengths_flat([3, 2, 4, 1], max_length=5)
        >>> members.tolist(), starts.tolist()
        ([2, 3, 0, 1], [0, 2, 4])
    """
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    check_lengths(lengths, max_length)
    return _bfd_arrays(lengths, max_length)


def check_lengths(lengths: Sequence[int] | np.ndarray, max_length: int) -> None:
    """What ``pack`` checks of each example, from its length: at least one token, at most ``max_length``."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    arr = np.asarray(lengths, dtype=np.int64).reshape(-1)
    wrong = np.flatnonzero((arr <= 0) | (arr > max_length))
    if len(wrong):
        i, n = int(wrong[0]), int(arr[wrong[0]])
        if n == 0:
            raise ValueError(f"example {i}: no tokens; drop empty examples before packing")
        raise ValueError(f"example {i}: {n} tokens > max_length {max_length}; packing never splits an "
                         "example, so encode with the same max_length (it truncates or quarantines)")


def pad_rows(examples: Sequence[Any], max_length: int) -> list[PackedRow]:
    """Padded mode: one example per row, in the given order (``collate`` adds the padding).

        >>> from types import SimpleNamespace as Ex
        >>> [r.input_ids.tolist() for r in pad_rows([Ex(input_ids=[5, 6], loss_weights=[0, 1])], 4)]
        [[5, 6]]
    """
    for i, ex in enumerate(examples):
        _check_example(i, ex, max_length)
    return [_make_row(examples, [i]) for i in range(len(examples))]


def packing_efficiency(rows: Sequence[PackedRow], max_length: int) -> float:
    """Example tokens / (rows x max_length): the share of a fixed-shape batch that is not padding."""
    if not rows:
        return 0.0
    return sum(len(r) for r in rows) / (len(rows) * max_length)


def packing_stats(rows: Sequence[PackedRow], max_length: int, *, mode: str = "packed") -> dict:
    """The ``packing`` section of the run manifest."""
    return {"mode": mode, "strategy": "best_fit_decreasing" if mode == "packed" else "one_per_row",
            "max_length": max_length, "rows": len(rows),
            "examples": sum(len(r.lengths) for r in rows),
            "tokens": sum(len(r) for r in rows),
            "efficiency": round(packing_efficiency(rows, max_length), 6)}


def collate(rows: Sequence[Row], pad_id: int, *, max_length: int | None = None,
            for_flash: bool = False, mask_dtype=None) -> dict:
    """Rows (``PackedRow``, a store's ``StoreRow``: any ``sftlab.tokens.rows.Row``) -> tensors for
    one forward pass (labels are not shifted here).

    Padded layout (default): ``input_ids`` [B,T] (``pad_id`` after each row), ``loss_weights``
    [B,T] float32 (0 on padding), ``position_ids`` [B,T] (0 on padding), ``attention_mask``
    [B,1,T,T] block-diagonal causal, ``seq_lengths`` [n] and ``cu_seqlens`` [n+1] int32 over the
    examples of the batch in row order (padding excluded), ``max_seqlen``, and ``row_lengths`` (the
    example lengths of each row, a tuple per row: attention that works example by example reads its
    boundaries from here instead of recovering them from the mask). T is ``max_length`` when given
    (fixed shapes), else the longest row.

    The mask is what masks padding, never the token id (pad and eos may be the same token). It is
    boolean (True = may attend), which transformers' SDPA path uses as it is; pass
    ``mask_dtype=torch.float32`` (or the model's dtype) for an additive mask (0 / finfo.min), as
    eager attention needs. A padding query attends to itself only, so no softmax row is empty
    (an all-masked row gives NaN, which would poison the gradients even at weight 0).

    ``for_flash=True`` gives the padding-free layout: every row concatenated into batch size 1,
    no ``attention_mask``, ``position_ids`` restarting per example. transformers then finds the
    boundaries from ``position_ids`` (flash_attention_2 with varlen kernels; SDPA builds the
    same block-diagonal mask from them), but only with ``use_cache=False``: with a cache it
    treats the row as one sequence.

        >>> from types import SimpleNamespace as Ex
        >>> rows = pack([Ex(input_ids=[7, 8], loss_weights=[0, 1]), Ex(input_ids=[9], loss_weights=[1])], 4)
        >>> b = collate(rows, pad_id=0)
        >>> b["input_ids"].tolist(), b["position_ids"].tolist(), b["cu_seqlens"].tolist()
        ([[7, 8, 9]], [[0, 1, 0]], [0, 2, 3])
        >>> b["attention_mask"][0, 0].int().tolist()
        [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    """
    import torch  # lazy: `import sftlab` and packing from lengths stay free of torch's start-up

    if not rows:
        raise ValueError("collate: no rows")
    lengths = [n for r in rows for n in r.lengths]
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    common = {"seq_lengths": torch.tensor(lengths, dtype=torch.int32), "cu_seqlens": cu,
              "max_seqlen": max(lengths)}
    if for_flash:
        return {"input_ids": torch.cat([as_tensor(r.input_ids) for r in rows])[None],
                "loss_weights": torch.cat([as_tensor(r.loss_weights) for r in rows])[None],
                "position_ids": _positions(lengths)[None], **common}
    T = max(len(r) for r in rows) if max_length is None else max_length
    if any(len(r) > T for r in rows):
        raise ValueError(f"collate: a row has {max(len(r) for r in rows)} tokens > max_length {T}")
    B = len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    weights = torch.zeros((B, T), dtype=torch.float32)
    positions = torch.zeros((B, T), dtype=torch.long)
    segment = torch.full((B, T), -1, dtype=torch.long)   # example number within the row, -1 = pad
    for b, r in enumerate(rows):
        row_lengths = r.lengths
        n = sum(row_lengths)
        input_ids[b, :n] = as_tensor(r.input_ids)
        weights[b, :n] = as_tensor(r.loss_weights)
        positions[b, :n] = _positions(row_lengths)
        segment[b, :n] = torch.repeat_interleave(torch.arange(len(row_lengths)), torch.tensor(row_lengths))
    return {"input_ids": input_ids, "loss_weights": weights, "position_ids": positions,
            "attention_mask": _block_causal_mask(segment, mask_dtype),
            "row_lengths": tuple(tuple(r.lengths) for r in rows), **common}


def _positions(lengths: Sequence[int]):
    """0, 1, ..., n-1 for every length, concatenated (int64)."""
    import torch  # lazy, as in collate

    ends = torch.tensor(lengths, dtype=torch.long).cumsum(0)
    starts = torch.repeat_interleave(ends - torch.tensor(lengths, dtype=torch.long), torch.tensor(lengths))
    return torch.arange(int(ends[-1])) - starts


def _block_causal_mask(segment, mask_dtype):
    """[B,1,T,T]: query q sees key k iff same example and k <= q; padding sees only itself."""
    import torch  # lazy, as in collate

    T = segment.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    same = (segment[:, :, None] == segment[:, None, :]) & (segment[:, :, None] >= 0)
    allowed = (same & causal) | torch.eye(T, dtype=torch.bool)
    allowed = allowed[:, None]
    if mask_dtype is None or mask_dtype == torch.bool:
        return allowed
    return additive_mask(allowed, mask_dtype)


def additive_mask(allowed, dtype):
    """A boolean attention mask (True = may attend) as the additive mask eager attention adds to
    its scores: 0 where allowed, the dtype's most negative finite value elsewhere.

        >>> import torch
        >>> additive_mask(torch.tensor([True, False]), torch.float32).tolist()
        [0.0, -3.4028234663852886e+38]
    """
    import torch  # lazy, as in collate

    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)
