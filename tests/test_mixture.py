"""Mixture: realised shares match the request, up/down-sampling, loss weights, determinism."""
from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest

from sftlab.tokens.encoding import EncodedExample
from sftlab.train.mixture import (UNSLICED, MixtureSpec, apply_loss_weights, epoch_indices, explicit_shares,
                            realised_mixture, slice_sizes, target_counts, temperature_shares)

SLICES = ["a"] * 50 + ["b"] * 30 + ["c"] * 20


def assert_within(realised, requested, size):
    for s, p in requested.items():
        assert abs(realised[s] - p) <= 1 / size, (s, realised[s], p)


def test_docstring_examples_hold():
    import doctest

    import sftlab.train.mixture
    assert doctest.testmod(sftlab.train.mixture).failed == 0


def test_explicit_weights_are_realised_with_up_and_down_sampling():
    idx = epoch_indices(SLICES, {"a": 1, "b": 2, "c": 1}, epoch=0, seed=0)
    assert len(idx) == 100
    assert realised_mixture(idx, SLICES) == {"a": 0.25, "b": 0.5, "c": 0.25}
    counts = Counter(idx)
    a_seen = [i for i in range(50) if counts[i]]
    assert len(a_seen) == 25 and all(counts[i] == 1 for i in a_seen)          # down-sampled, distinct
    assert all(counts[i] in (1, 2) for i in range(50, 80))                    # up-sampled: whole + 20 again
    assert sum(counts[i] == 2 for i in range(50, 80)) == 20
    assert all(counts[i] in (1, 2) for i in range(80, 100))                   # 25 places for 20: all + 5
    assert sum(counts[i] == 2 for i in range(80, 100)) == 5


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0, math.inf])
@pytest.mark.parametrize("size", [None, 37, 1000])
def test_temperature_mixture_is_realised_within_one_over_size(temperature, size):
    idx = epoch_indices(SLICES, None, epoch=3, seed=7, size=size, temperature=temperature)
    n = size or len(SLICES)
    assert len(idx) == n
    requested = {s: v ** (1 / temperature) if not math.isinf(temperature) else 1.0
                 for s, v in {"a": 50, "b": 30, "c": 20}.items()}
    total = sum(requested.values())
    requested = {s: v / total for s, v in requested.items()}
    assert_within(realised_mixture(idx, SLICES), requested, n)


def test_natural_mixture_is_the_data_shuffled():
    idx = epoch_indices(SLICES, None, epoch=0, seed=1)
    assert sorted(idx) == list(range(100)) and idx != list(range(100))
    assert temperature_shares({"a": 50, "b": 30, "c": 20}, math.inf) == pytest.approx(
        {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})


def test_random_mixtures_realised_within_one_over_size():
    rng = random.Random(0)
    for trial in range(50):
        slices = [f"s{rng.randint(0, 5)}" for _ in range(rng.randint(1, 300))]
        sizes = slice_sizes(slices)
        weights = {s: rng.choice([0.0, 0.5, 1.0, 3.0]) for s in sizes}
        if not any(weights.values()):
            weights[next(iter(sizes))] = 1.0
        size = rng.randint(1, 700)
        idx = epoch_indices(slices, weights, epoch=trial, seed=trial, size=size)
        assert len(idx) == size
        assert_within(realised_mixture(idx, slices), explicit_shares(sizes, weights), size)
        assert all(slices[i] in sizes and weights[slices[i]] > 0 for i in idx)


def test_deterministic_in_seed_and_epoch():
    w = {"a": 1, "b": 1, "c": 1}
    first = epoch_indices(SLICES, w, epoch=0, seed=0)
    assert first == epoch_indices(SLICES, w, epoch=0, seed=0)
    assert first != epoch_indices(SLICES, w, epoch=1, seed=0)
    assert first != epoch_indices(SLICES, w, epoch=0, seed=1)
    spec = MixtureSpec(sampling_weights=w, seed=0)
    assert spec.epoch_indices(SLICES, 0) == first


def test_target_counts_sum_and_stay_within_one():
    assert target_counts({"a": 0.5, "b": 0.25, "c": 0.25}, 7) == {"a": 3, "b": 2, "c": 2}
    counts = target_counts({"x": 1 / 3, "y": 1 / 3, "z": 1 / 3}, 100)
    assert sum(counts.values()) == 100 and sorted(counts.values()) == [33, 33, 34]


def test_loss_weights_scale_as_stated_and_are_pure():
    exs = [EncodedExample([1, 2, 3], [0.0, 1.0, 1.0], slice="a", trained_tokens=2, trained_weight=2.0),
           EncodedExample([4, 5], [0.0, 0.5], slice="b", trained_tokens=1, trained_weight=0.5),
           EncodedExample([6, 7], [0.0, 1.0], slice=None, trained_tokens=1, trained_weight=1.0)]
    out = apply_loss_weights(exs, {"a": 3.0, UNSLICED: 0.0})
    assert [e.loss_weights for e in out] == [[0.0, 3.0, 3.0], [0.0, 0.5], [0.0, 0.0]]
    assert [e.trained_weight for e in out] == [6.0, 0.5, 0.0]
    assert out[1] is exs[1]
    assert exs[0].loss_weights == [0.0, 1.0, 1.0] and exs[0].trained_weight == 2.0
    with pytest.raises(ValueError, match="finite and >= 0"):
        apply_loss_weights(exs, {"a": -1.0})
    # the objective's denominator sees the scaled weights
    from sftlab.model.objective import step_normaliser
    from sftlab.tokens.packing import collate, pack
    assert step_normaliser([collate(pack(out, 8), pad_id=0)]).item() == 6.5


def test_errors_are_explicit():
    with pytest.raises(ValueError, match=r"no examples: \['d'\]; the data has slices \['a', 'b', 'c'\]"):
        epoch_indices(SLICES, {"d": 1}, epoch=0, seed=0)
    with pytest.raises(ValueError, match="every sampling weight is 0"):
        epoch_indices(SLICES, {"a": 0, "b": 0, "c": 0}, epoch=0, seed=0)
    with pytest.raises(ValueError, match="not both"):
        MixtureSpec(sampling_weights={"a": 1}, temperature=2.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        temperature_shares({"a": 1}, 0.0)


def test_describe_is_the_manifest_section():
    spec = MixtureSpec(temperature=math.inf, loss_weights={"b": 2.0}, seed=3)
    d = spec.describe(SLICES)
    json.dumps(d)
    assert d == {"mode": "temperature", "sampling_weights": None, "temperature": "inf",
                 "loss_weights": {"b": 2.0}, "seed": 3, "plan": 2,
                 "slice_sizes": {"a": 50, "b": 30, "c": 20},
                 "requested_shares": {"a": 0.333333, "b": 0.333333, "c": 0.333333}}
    assert MixtureSpec().describe()["mode"] == "natural"
    assert MixtureSpec(sampling_weights={"a": 2}).describe(SLICES)["requested_shares"] == {
        "a": 0.5, "b": 0.25, "c": 0.25}


def test_a_slice_column_samples_and_counts_as_the_list_of_its_names():
    """Training plans epochs from a store's slice codes (``SliceColumn``); every draw must be the
    one the same names in a list give (weights, temperature, natural; up- and down-sampling)."""
    import numpy as np

    from sftlab.train.mixture import SliceColumn

    rng = random.Random(1)
    for trial in range(40):
        names = rng.sample(["a", "b", None, "unsliced", "c"], rng.randint(1, 4))
        codes = np.asarray([rng.randrange(len(names)) for _ in range(rng.randint(1, 250))])
        col = SliceColumn(names, codes)
        plain = [names[c] for c in codes.tolist()]
        assert list(col) == [UNSLICED if s is None else s for s in plain]
        assert slice_sizes(col) == slice_sizes(plain)
        sizes = slice_sizes(plain)
        kw = rng.choice([{"weights": None}, {"weights": None, "temperature": rng.choice([0.5, 2.0, math.inf])},
                         {"weights": {s: rng.choice([0.5, 1.0, 3.0]) for s in sizes}}])
        size = rng.choice([None, rng.randint(1, 600)])
        idx = epoch_indices(col, epoch=trial, seed=trial, size=size, **kw)
        assert idx == epoch_indices(plain, epoch=trial, seed=trial, size=size, **kw)
        assert realised_mixture(idx, col) == realised_mixture(idx, plain)
        spec = MixtureSpec(sampling_weights=kw["weights"], temperature=kw.get("temperature"), seed=trial)
        assert spec.describe(col) == spec.describe(plain)


def test_plan_1_draws_as_before_and_plan_2_is_its_own_stream():
    """A run resumed across the change of plan keeps its data order: plan 1 is kept as it was
    (values pinned from sftlab before plan 2), plan 2 draws the same counts with NumPy."""
    slices = ["a"] * 6 + ["b"] * 3 + ["c"] * 2
    assert epoch_indices(slices, {"a": 1, "b": 2}, epoch=1, seed=3, plan=1) == [8, 6, 7, 8, 9, 1, 9, 0, 4, 6, 10]
    assert epoch_indices(slices, None, epoch=0, seed=0, temperature=2.0, size=7, plan=1) == [6, 9, 10, 1, 0, 2, 8]
    two = epoch_indices(slices, {"a": 1, "b": 2}, epoch=1, seed=3)
    assert two == epoch_indices(slices, {"a": 1, "b": 2}, epoch=1, seed=3, plan=2)
    assert Counter(slices[i] for i in two) == Counter(slices[i] for i in
                                                     epoch_indices(slices, {"a": 1, "b": 2}, 1, 3, plan=1))
    assert two != epoch_indices(slices, {"a": 1, "b": 2}, epoch=1, seed=3, plan=1)
    assert epoch_indices(slices, None, epoch=0, seed=10 ** 4000)  # any integer seed
    with pytest.raises(ValueError, match="unknown epoch plan 3"):
        epoch_indices(slices, None, epoch=0, seed=0, plan=3)


def test_plan_2_down_samples_distinct_examples_in_index_order_before_the_shuffle():
    import numpy as np

    from sftlab.train.mixture import SliceColumn, epoch_index_array

    col = SliceColumn(["a", "b"], np.asarray([0] * 1000 + [1] * 10))
    idx = epoch_index_array(col, {"a": 1, "b": 1}, epoch=0, seed=0, size=100)
    a = idx[idx < 1000]
    assert len(a) == 50 and len(set(a.tolist())) == 50          # a subset, no repeats
    assert sorted((idx[idx >= 1000]).tolist()) == sorted(list(range(1000, 1010)) * 5)
