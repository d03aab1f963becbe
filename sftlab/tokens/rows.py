"""The rows training reads: one protocol (``Row``) for a packed row made in memory
(``sftlab.tokens.packing.PackedRow``) and a row of a prepared store (``StoreRow``), and the
tables of examples rows refer to.

A table (a prepared store, ``sftlab.prepare.read.PreparedStore``, or ``ExampleTable`` for
examples made in code) holds per-example arrays (``lengths``, ``slice_codes``, ``trained``) and
gives each example's tokens (``ids(i)``, ``weights(i)``). A ``StoreRow`` names its examples by
index and reads their tokens only when ``collate`` asks, so an epoch's rows (``EpochRows``) cost
8 bytes an example however long the data is::

    >>> from types import SimpleNamespace as Ex
    >>> table = ExampleTable([Ex(input_ids=[5, 6], loss_weights=[0.0, 1.0], slice="a"),
    ...                       Ex(input_ids=[7], loss_weights=[1.0], slice=None)])
    >>> row = table.rows([[1, 0]])[0]
    >>> row.input_ids.tolist(), row.lengths, row.position_ids, len(row), isinstance(row, Row)
    ([7, 5, 6], (1, 2), (0, 0, 1), 3, True)
    >>> table.slice_names, table.slices
    ([None, 'a'], ['a', None])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from sftlab.tokens.encoding import encoding_summary

__all__ = ["Row", "StoreRow", "ExampleTable", "EpochRows", "slice_order"]


@runtime_checkable
class Row(Protocol):
    """What ``collate`` and training read of a row: whole examples end to end, no padding."""
    example_indices: tuple[int, ...]
    """Index of each example in its table (or in the list given to ``pack``), in row order."""

    @property
    def lengths(self) -> tuple[int, ...]:
        """Tokens of each example, in row order."""

    @property
    def input_ids(self) -> Any:
        """The token ids of the row (an int32 array or ``TokenArray``)."""

    @property
    def loss_weights(self) -> Any:
        """The loss weight of each token (unshifted)."""

    @property
    def position_ids(self) -> tuple[int, ...]:
        """0, 1, ... restarting at every example."""

    def __len__(self) -> int:
        """Tokens of the row."""


def slice_order(names) -> list:
    """Slice names sorted, ``None`` (no slice) first.

        >>> slice_order(["b", None, "a", "b"])
        [None, 'a', 'b']
    """
    return sorted(set(names), key=lambda s: (s is not None, s or ""))


@dataclass(frozen=True)
class StoreRow:
    """A row of a table's examples by index; tokens are read from the table (a memory map for a
    store) when asked for. A ``Row``."""
    store: Any
    example_indices: tuple[int, ...]
    loss_scale: tuple[float, ...] | None = None
    """Per-example multiplier of the loss weights (the mixture's slice loss weights)."""

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(int(self.store.lengths[i]) for i in self.example_indices)

    def __len__(self) -> int:
        return sum(self.lengths)

    @property
    def input_ids(self) -> np.ndarray:
        return np.concatenate([self.store.ids(i) for i in self.example_indices])

    @property
    def loss_weights(self) -> np.ndarray:
        scale = self.loss_scale or (1.0,) * len(self.example_indices)
        parts = [self.store.weights(i) * np.float32(s) if s != 1.0 else self.store.weights(i)
                 for i, s in zip(self.example_indices, scale)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    @property
    def position_ids(self) -> tuple[int, ...]:
        return tuple(j for n in self.lengths for j in range(n))


def table_rows(table, groups, scales: np.ndarray | None) -> list[StoreRow]:
    """``StoreRow``s of ``table`` for groups of example indices; ``scales[code]`` multiplies the
    loss weights of slice ``table.slice_names[code]``."""
    out = []
    for g in groups:
        g = tuple(int(i) for i in g)
        scale = tuple(scales[table.slice_codes[list(g)]].tolist()) if scales is not None else None
        out.append(StoreRow(table, g, scale))
    return out


class Table:
    """What every table gives from its arrays: slice names per example and rows."""
    slice_names: list
    slice_codes: np.ndarray

    @property
    def slices(self) -> list[str]:
        """The slice name of every example (one shared string object per slice)."""
        names = self.slice_names
        return [names[c] for c in self.slice_codes.tolist()]

    def rows(self, groups, scales: np.ndarray | None = None) -> list[StoreRow]:
        """``StoreRow``s for groups of example indices; ``scales[code]`` multiplies the loss
        weights of slice ``slice_names[code]`` (the mixture's loss weights)."""
        return table_rows(self, groups, scales)


class ExampleTable(Table):
    """Encoded examples held in memory, with the interface of a prepared store that training
    reads (``lengths``, ``slice_codes``, ``slice_names``, ``trained``, ``ids(i)``,
    ``weights(i)``, ``rows``): for examples made in code rather than read from a store."""

    def __init__(self, examples: Sequence):
        self.examples = list(examples)
        self.slice_names = slice_order(e.slice for e in self.examples)
        code = {s: i for i, s in enumerate(self.slice_names)}
        self.lengths = np.asarray([len(e.input_ids) for e in self.examples], dtype=np.int32)
        self.slice_codes = np.asarray([code[e.slice] for e in self.examples], dtype=np.int32)
        self.trained = np.asarray([getattr(e, "trained_tokens", 0) for e in self.examples], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.examples)

    def ids(self, i: int) -> np.ndarray:
        return np.asarray(self.examples[i].input_ids, dtype=np.int32)

    def weights(self, i: int) -> np.ndarray:
        return np.asarray(self.examples[i].loss_weights, dtype=np.float32)

    def encoding_summary(self) -> dict:
        """``sftlab.tokens.encoding.encoding_summary`` of the examples (extra examples, lost tokens)."""
        return encoding_summary(self.examples)


class EpochRows:
    """The rows of an epoch as two flat arrays (example indices, row starts), in training order;
    indexing makes ``StoreRow``s on demand, so an epoch of millions of examples costs 8 bytes
    an example."""

    def __init__(self, table, members: np.ndarray, starts: np.ndarray, order: list[int] | np.ndarray,
                 scales: np.ndarray | None):
        """Row ``order[k]`` of the rows ``members[starts[r]:starts[r + 1]]`` becomes row k."""
        order = np.asarray(order, dtype=np.int64)
        sizes = (starts[1:] - starts[:-1])[order]
        self.starts = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        at = np.repeat(starts[:-1][order] - self.starts[:-1], sizes) + np.arange(int(self.starts[-1]), dtype=np.int64)
        self.members = np.asarray(members, dtype=np.int64)[at]
        self.table, self.scales = table, scales

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        return table_rows(self.table, [self.members[self.starts[k]:self.starts[k + 1]]], self.scales)[0]

    def __iter__(self):
        return (self[k] for k in range(len(self)))

    def stats(self, max_length: int, mode: str) -> dict:
        """``sftlab.tokens.packing.packing_stats`` of these rows, from the arrays."""
        tokens = int(self.table.lengths[self.members].sum()) if len(self.members) else 0
        rows = len(self)
        return {"mode": mode, "strategy": "best_fit_decreasing" if mode == "packed" else "one_per_row",
                "max_length": max_length, "rows": rows, "examples": int(len(self.members)), "tokens": tokens,
                "efficiency": round(tokens / (rows * max_length), 6) if rows else 0.0}
