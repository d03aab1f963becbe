"""Class imbalance, as two separate knobs per slice: how often a slice is *seen* and how much its tokens *count*.

Sampling weights decide each slice's share of an epoch. They are either explicit
(``{"refusal": 1, "chat": 3}``, relative; a slice left out keeps weight 1) or a temperature over
slice sizes, ``p_s ~ n_s ** (1 / T)``: T = 1 keeps the natural mixture, T -> inf makes slices
uniform, values in between up-weight the small ones. An epoch of ``size`` examples (default: the
number of examples) then holds ``round(p_s * size)`` examples of slice s (largest remainder, so
the counts add up): a slice asked for more than it has is repeated whole (up-sampling) and
topped up by a random subset; one asked for less is a random subset (down-sampling).

Worked example, 6 ``a`` examples and 2 ``b`` examples, an epoch of 8::

    >>> slices = ["a"] * 6 + ["b"] * 2
    >>> counts = target_counts(temperature_shares(slice_sizes(slices), float("inf")), 8)
    >>> counts
    {'a': 4, 'b': 4}
    >>> idx = epoch_indices(slices, {"a": 1, "b": 1}, epoch=0, seed=0)
    >>> sorted(i for i in idx if i >= 6)         # b is up-sampled: each of its examples twice
    [6, 6, 7, 7]
    >>> realised_mixture(idx, slices)
    {'a': 0.5, 'b': 0.5}

Loss weights multiply every token weight of a slice's examples (a pure function, new examples)::

    >>> from sftlab.tokens.encoding import EncodedExample
    >>> ex = EncodedExample([1, 2, 3], [0.0, 1.0, 1.0], slice="b", trained_tokens=2, trained_weight=2.0)
    >>> [(e.loss_weights.tolist(), e.trained_weight) for e in apply_loss_weights([ex], {"b": 2.0})]
    [([0.0, 2.0, 2.0], 4.0)]
"""
from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["UNSLICED", "PLAN_VERSION", "MixtureSpec", "SliceColumn", "slice_of", "slice_sizes", "temperature_shares",
           "explicit_shares", "target_counts", "epoch_indices", "realised_mixture", "check_loss_weights",
           "apply_loss_weights"]

from sftlab.data.conversation import UNSLICED, slice_of  # one slice naming for training and eval
from sftlab.fingerprints import sha256_hex


class SliceColumn(Sequence):
    """The slice of every example as a code into a few names, as a prepared store keeps them
    (``slice_codes`` into ``slice_names``): a sequence of slice names that the functions here
    count and sample with NumPy, so an epoch of millions of examples is planned in well under
    a second. The results are those of the same names in a list.

        >>> col = SliceColumn(["math", None], np.array([1, 0, 0, 1]))
        >>> list(col), slice_sizes(col)
        (['unsliced', 'math', 'math', 'unsliced'], {'math': 2, 'unsliced': 2})
    """

    def __init__(self, names: Sequence[Any], codes: np.ndarray):
        canon = [slice_of(n) for n in names]
        self.names = sorted(set(canon))
        remap = np.asarray([self.names.index(c) for c in canon] or [0], dtype=np.int64)
        codes = np.asarray(codes, dtype=np.int64)
        self.codes = remap[codes] if len(codes) else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.names[c] for c in self.codes[i].tolist()]
        return self.names[int(self.codes[i])]

    def counts(self, indices: Sequence[int] | np.ndarray | None = None) -> dict[str, int]:
        """Examples per slice (of ``indices`` when given), every slice listed."""
        codes = self.codes if indices is None else self.codes[np.asarray(indices, dtype=np.int64)]
        return dict(zip(self.names, np.bincount(codes, minlength=len(self.names)).tolist()))


def slice_sizes(slices: Sequence[Any]) -> dict[str, int]:
    """Examples per slice, sorted by slice name. ``slices``: slice names or examples."""
    if isinstance(slices, SliceColumn):
        return {s: n for s, n in slices.counts().items() if n}
    return dict(sorted(Counter(slice_of(s) for s in slices).items()))


def temperature_shares(sizes: Mapping[str, int], temperature: float) -> dict[str, float]:
    """``p_s = n_s**(1/T) / sum_r n_r**(1/T)``; ``T = inf`` is uniform over the non-empty slices.

        >>> {s: round(p, 6) for s, p in temperature_shares({"a": 900, "b": 100}, 2.0).items()}
        {'a': 0.75, 'b': 0.25}
        >>> temperature_shares({"a": 900, "b": 100, "c": 900}, 5e-324)  # the limit T -> 0
        {'a': 0.5, 'b': 0.0, 'c': 0.5}
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (1: natural mixture, inf: uniform), got {temperature}")
    sizes = {s: n for s, n in sizes.items() if n > 0}
    if not sizes:
        raise ValueError("no examples: every slice is empty")
    if math.isinf(temperature):
        return {s: 1 / len(sizes) for s in sizes}
    # in log space relative to the largest slice (each exponent <= 0), so large sizes with
    # small temperatures (down to 5e-324) neither overflow nor give inf - inf
    top = math.log(max(sizes.values()))
    raw = {s: math.exp((math.log(n) - top) / temperature) for s, n in sizes.items()}
    total = sum(raw.values())
    return {s: v / total for s, v in raw.items()}


def explicit_shares(sizes: Mapping[str, int], weights: Mapping[str, float]) -> dict[str, float]:
    """Relative weights -> shares over the slices in ``sizes``; a slice without a weight keeps 1.

        >>> explicit_shares({"a": 10, "b": 10, "c": 5}, {"a": 2, "c": 0})
        {'a': 0.6666666666666666, 'b': 0.3333333333333333, 'c': 0.0}
    """
    unknown = sorted(set(weights) - set(sizes))
    if unknown:
        raise ValueError(f"sampling weights name slices with no examples: {unknown}; "
                         f"the data has slices {sorted(sizes)}")
    bad = {s: w for s, w in weights.items() if not (w >= 0 and math.isfinite(w))}
    if bad:
        raise ValueError(f"sampling weights must be finite and >= 0, got {bad}")
    raw = {s: float(weights.get(s, 1.0)) for s in sizes}
    total = sum(raw.values())
    if total <= 0:
        raise ValueError("every sampling weight is 0: nothing would be trained")
    return {s: w / total for s, w in raw.items()}


def target_counts(shares: Mapping[str, float], size: int) -> dict[str, int]:
    """Integer examples per slice summing to ``size``, each within 1 of ``share * size``.

    Largest remainder: floor every ``share * size``, then hand the missing examples to the
    largest fractional parts (ties by slice name).

        >>> target_counts({"a": 0.5, "b": 0.25, "c": 0.25}, 7)     # 3.5, 1.75, 1.75
        {'a': 3, 'b': 2, 'c': 2}
    """
    exact = {s: p * size for s, p in shares.items()}
    counts = {s: math.floor(v) for s, v in exact.items()}
    missing = size - sum(counts.values())
    for s in sorted(exact, key=lambda s: (-(exact[s] - counts[s]), s))[:max(missing, 0)]:
        counts[s] += 1
    return counts


PLAN_VERSION = 2
"""How an epoch's draws are made; a run records it (run.json ``mixture.plan``) and a resumed run
keeps the plan it started with, so its data order never changes under it. 1: Python's
``random`` (sftlab before 2026-12; 15 s of shuffling at 10M examples); 2: NumPy's PCG64, the same
counts per slice, drawn and shuffled as arrays (well under a second at 10M)."""


def _rng(seed: int, epoch: int) -> random.Random:
    return random.Random(f"sftlab-mixture:{seed}:{epoch}")   # str seeds are stable across runs


def plan_generator(what: str, seed: int, epoch: int) -> np.random.Generator:
    """Plan 2's generator for one purpose (``"mixture"``, ``"rows"``) of one epoch: PCG64 seeded
    from a hash of the three, so any integer seed works and the streams are independent."""
    digest = bytes.fromhex(sha256_hex(f"sftlab-{what}:{seed}:{epoch}"))
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def epoch_indices(slices: Sequence[Any], weights: Mapping[str, float] | None, epoch: int, seed: int,
                  size: int | None = None, *, temperature: float | None = None,
                  plan: int = PLAN_VERSION) -> list[int]:
    """Shuffled example indices of one epoch with the requested share of each slice.

    ``slices``: the slice name (or the example) of every example. ``weights``: explicit relative
    sampling weights, or ``None`` with ``temperature`` (``None`` and ``None``: natural mixture,
    the data as it is, shuffled). A slice of n examples that gets c places contributes every
    example ``c // n`` times plus ``c % n`` distinct examples drawn at random. The result is a
    function of (slices, weights, epoch, seed, size, plan) only (``PLAN_VERSION``: how it is drawn).
    """
    return epoch_index_array(slices, weights, epoch, seed, size, temperature=temperature, plan=plan).tolist()


def epoch_index_array(slices: Sequence[Any], weights: Mapping[str, float] | None, epoch: int, seed: int,
                      size: int | None = None, *, temperature: float | None = None,
                      plan: int = PLAN_VERSION) -> np.ndarray:
    """``epoch_indices`` as an int64 array (what training keeps for an epoch of millions)."""
    if plan not in (1, 2):
        raise ValueError(f"unknown epoch plan {plan!r}: this sftlab draws plans 1 and 2")
    sizes = slice_sizes(slices)
    if weights is not None and temperature is not None:
        raise ValueError("give sampling weights or a temperature, not both")
    if weights is not None:
        shares = explicit_shares(sizes, weights)
    else:
        shares = temperature_shares(sizes, 1.0 if temperature is None else temperature)
    size = len(slices) if size is None else size
    if size < 0:
        raise ValueError(f"epoch size must be >= 0, got {size}")
    counts = target_counts(shares, size)
    if plan == 2:
        if isinstance(slices, SliceColumn):
            column = slices
        else:
            code = {s: i for i, s in enumerate(sizes)}
            column = SliceColumn(list(sizes), np.asarray([code[slice_of(s)] for s in slices], np.int64))
        gen = plan_generator("mixture", seed, epoch)
        parts = [np.zeros(0, np.int64)]
        for s, c in counts.items():
            pool = np.flatnonzero(column.codes == column.names.index(s))
            repeats, rest = divmod(c, len(pool))
            chosen = np.zeros(len(pool), bool)                 # a subset, kept in index order
            chosen[gen.choice(len(pool), rest, replace=False)] = True
            parts += [np.tile(pool, repeats), pool[chosen]]
        out = np.concatenate(parts)
        gen.shuffle(out)
        return out
    rng = _rng(seed, epoch)
    if isinstance(slices, SliceColumn):  # the same draws, on arrays of positions
        parts = []
        for s, c in counts.items():
            pool = np.flatnonzero(slices.codes == slices.names.index(s))
            repeats, rest = divmod(c, len(pool))
            parts += [np.tile(pool, repeats), np.sort(pool[np.asarray(rng.sample(range(len(pool)), rest), np.int64)])]
        out = np.concatenate(parts).tolist() if parts else []
        rng.shuffle(out)
        return np.asarray(out, dtype=np.int64)
    members: dict[str, list[int]] = {s: [] for s in sizes}
    for i, s in enumerate(slices):
        members[slice_of(s)].append(i)
    out = []
    for s, c in counts.items():
        pool = members[s]
        repeats, rest = divmod(c, len(pool))
        out.extend(pool * repeats)
        out.extend(sorted(rng.sample(pool, rest)))
    rng.shuffle(out)
    return np.asarray(out, dtype=np.int64)


def realised_mixture(indices: Sequence[int], slices: Sequence[Any]) -> dict[str, float]:
    """Share of each slice among ``indices`` (every slice of the data listed, 0.0 when unseen)."""
    counts = slices.counts(indices) if isinstance(slices, SliceColumn) else Counter(slice_of(slices[i]) for i in indices)
    total = len(indices) or 1
    return {s: counts.get(s, 0) / total for s in slice_sizes(slices)}


def check_loss_weights(weights: Mapping[str, float], slices: Sequence[Any] | None = None) -> None:
    """``ValueError`` unless every loss weight is finite and >= 0 and, given the ``slices`` of the
    data, every weight names a slice the data has and some slice keeps a weight above 0 (a
    weight for a slice that is not there, or all of them at 0, trains nothing as asked).

        >>> check_loss_weights({"math": 2.0}, ["chat", "math"])
        >>> check_loss_weights({"maths": 2.0}, ["chat", "math"])
        Traceback (most recent call last):
        ValueError: mixture.loss_weights names slices the data does not have: ['maths']; the data has slices ['chat', 'math']
    """
    bad = {s: w for s, w in weights.items() if not (w >= 0 and math.isfinite(w))}
    if bad:
        raise ValueError(f"loss weights must be finite and >= 0, got {bad}")
    if slices is None:
        return
    have = sorted({slice_of(s) for s in slices})
    unknown = sorted(set(weights) - set(have))
    if unknown:
        raise ValueError(f"mixture.loss_weights names slices the data does not have: {unknown}; "
                         f"the data has slices {have}")
    if have and all(float(weights.get(s, 1.0)) == 0 for s in have):
        raise ValueError(f"mixture.loss_weights: every slice of the data ({', '.join(have)}) has loss "
                         "weight 0, so nothing would be trained; give some slice a weight above 0")


def apply_loss_weights(examples: Sequence[Any], weights: Mapping[str, float]) -> list[Any]:
    """New examples whose ``loss_weights`` (and ``trained_weight``) are multiplied by their slice's
    weight; slices not named keep 1. Examples must be dataclasses (``EncodedExample``)."""
    check_loss_weights(weights)
    out = []
    for ex in examples:
        w = float(weights.get(slice_of(ex), 1.0))
        if w == 1.0:
            out.append(ex)
            continue
        if not dataclasses.is_dataclass(ex):
            raise TypeError(f"apply_loss_weights needs dataclass examples (EncodedExample), got {type(ex).__name__}")
        changes: dict[str, Any] = {"loss_weights": [x * w for x in ex.loss_weights]}
        if any(f.name == "trained_weight" for f in dataclasses.fields(ex)):
            changes["trained_weight"] = ex.trained_weight * w
        out.append(dataclasses.replace(ex, **changes))
    return out


@dataclass(frozen=True)
class MixtureSpec:
    """Both knobs, as the config gives them, recorded in the manifest via ``describe``."""
    sampling_weights: Mapping[str, float] | None = None
    """Explicit relative sampling weight per slice; a slice left out keeps 1."""
    temperature: float | None = None
    """``p_s ~ n_s**(1/T)`` when no explicit weights; ``None`` = natural mixture (T = 1)."""
    loss_weights: Mapping[str, float] = field(default_factory=dict)
    """Multiplier on every token weight of a slice; a slice left out keeps 1."""
    seed: int = 0
    plan: int = PLAN_VERSION
    """How the epoch's draws are made (``PLAN_VERSION``); a resumed run keeps its own."""

    def __post_init__(self):
        if self.sampling_weights is not None and self.temperature is not None:
            raise ValueError("give sampling_weights or temperature, not both")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @property
    def mode(self) -> str:
        if self.sampling_weights is not None:
            return "explicit"
        return "natural" if self.temperature in (None, 1, 1.0) else "temperature"

    def shares(self, slices: Sequence[Any]) -> dict[str, float]:
        """The requested share of each slice for these examples."""
        sizes = slice_sizes(slices)
        if self.sampling_weights is not None:
            return explicit_shares(sizes, self.sampling_weights)
        return temperature_shares(sizes, self.temperature or 1.0)

    def epoch_indices(self, slices: Sequence[Any], epoch: int) -> list[int]:
        return self.epoch_index_array(slices, epoch).tolist()

    def epoch_index_array(self, slices: Sequence[Any], epoch: int) -> np.ndarray:
        return epoch_index_array(slices, self.sampling_weights, epoch, self.seed,
                                 temperature=self.temperature, plan=self.plan)

    def describe(self, slices: Sequence[Any] | None = None) -> dict:
        """The manifest's ``mixture`` section; with ``slices`` also sizes and requested shares."""
        out: dict[str, Any] = {
            "mode": self.mode,
            "sampling_weights": dict(self.sampling_weights) if self.sampling_weights is not None else None,
            "temperature": (None if self.temperature is None else
                            "inf" if math.isinf(self.temperature) else self.temperature),
            "loss_weights": dict(self.loss_weights), "seed": self.seed, "plan": self.plan}
        if slices is not None:
            out["slice_sizes"] = slice_sizes(slices)
            out["requested_shares"] = {s: round(p, 6) for s, p in self.shares(slices).items()}
        return out
