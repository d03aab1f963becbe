"""Compact token sequences: ids and loss weights at 4 bytes a token instead of a Python list's 36.

A training set of millions of tokens held as ``list[int]`` costs a pointer plus an int object per
token; ``array.array`` (the standard library's typed buffer) stores the machine values only, and
the tensors of a batch are made from its buffer without a per-token loop. ``TokenArray`` is an
``array.array`` that also compares equal to a list or tuple with the same values, so code written
for lists (``ex.input_ids == tokenizer(text).input_ids``) keeps working, and its slices stay
``TokenArray``.

    >>> ids = token_ids([5, 6, 7])
    >>> ids == [5, 6, 7], ids[1:] == (6, 7), len(ids), ids.itemsize
    (True, True, 3, 4)
    >>> weights = loss_weights([0, 1, 0.5])
    >>> weights.tolist()
    [0.0, 1.0, 0.5]

Ids are C ``int`` (32-bit: any vocabulary up to 2**31 tokens); weights are ``float32``, the
precision the objective computes in.
"""
from __future__ import annotations

import array
from collections.abc import Iterable

import numpy as np

__all__ = ["TokenArray", "token_ids", "loss_weights", "as_tensor"]

IDS, WEIGHTS = "i", "f"


class TokenArray(array.array):
    """``array.array`` that equals a list or tuple holding the same values (see the module docstring)."""

    __hash__ = None  # mutable, like a list

    def __eq__(self, other):
        if isinstance(other, (list, tuple)):
            return len(self) == len(other) and self.tolist() == list(other)
        return super().__eq__(other)

    def __ne__(self, other):
        return not self == other

    def __getitem__(self, key):
        item = super().__getitem__(key)
        return TokenArray(self.typecode, item) if isinstance(key, slice) else item


def token_ids(values: Iterable[int]) -> TokenArray:
    """``values`` as int32 ids (returned as they are when they already are)."""
    if isinstance(values, TokenArray) and values.typecode == IDS:
        return values
    try:
        return TokenArray(IDS, values)
    except OverflowError:
        raise ValueError("token id out of the int32 range") from None


def loss_weights(values: Iterable[float]) -> TokenArray:
    """``values`` as float32 weights (returned as they are when they already are)."""
    if isinstance(values, TokenArray) and values.typecode == WEIGHTS:
        return values
    return TokenArray(WEIGHTS, values)


def as_tensor(values, dtype=None):
    """A tensor of ``values`` (a ``TokenArray`` is read from its buffer, with no per-token loop).

    Ids come back as int64 (what embedding layers index with), weights as float32. NumPy arrays
    (the memory-mapped columns of ``sftlab.prepare``) are copied from their buffer too.
    """
    import torch  # lazy: torch takes seconds to import and most token work never needs a tensor

    if type(values).__module__ == "numpy" and hasattr(values, "dtype"):  # a store's (memory-mapped) array
        t = torch.from_numpy(np.array(values))  # a copy: the tensor must not alias the map
        if t.dtype == torch.int32:
            t = t.long()
        return t if dtype is None else t.to(dtype)
    kind = {IDS: torch.int32, WEIGHTS: torch.float32}.get(getattr(values, "typecode", None))
    if kind is None or not len(values):
        return torch.tensor(list(values), dtype=dtype)
    t = torch.frombuffer(values, dtype=kind).clone()  # clone: the tensor must not alias the array
    if kind is torch.int32:
        t = t.long()
    return t if dtype is None else t.to(dtype)
