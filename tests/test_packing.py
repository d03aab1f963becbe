"""Packing: rows by hand, best-fit-decreasing against a brute-force reference, masks, and a real model."""
from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch

from sftlab.tokens.packing import (PackedRow, collate, pack, packing_efficiency,
                            packing_stats, pad_rows)


@dataclass(frozen=True)
class Ex:
    input_ids: list
    loss_weights: list
    slice: str | None = None
    id: str | None = None


def filled(lengths):
    """Example i is ``[i] * n`` with weights 0, 1, 1, ...: rows show their example index."""
    return [Ex([i] * n, [0.0] + [1.0] * (n - 1), id=f"ex{i}") for i, n in enumerate(lengths)]


def reference_bfd(lengths, max_length):
    """Best-fit-decreasing written the obvious O(n^2) way."""
    rows, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fits = [(free[r], r) for r in range(len(rows)) if free[r] >= lengths[i]]
        if fits:
            _, r = min(fits)
        else:
            rows.append([]), free.append(max_length)
            r = len(rows) - 1
        rows[r].append(i)
        free[r] -= lengths[i]
    return [tuple(r) for r in rows]


def test_rows_by_hand():
    rows = pack(filled([3, 2, 4, 1, 5, 2]), max_length=6)
    # decreasing: 4(5) opens r0 free 1; 2(4) opens r1 free 2; 0(3) opens r2 free 3;
    # 1(2) -> r1 (free 2, tightest); 5(2) -> r2 (free 3); 3(1) -> r0 (free 1)
    assert [r.input_ids for r in rows] == [(4, 4, 4, 4, 4, 3), (2, 2, 2, 2, 1, 1), (0, 0, 0, 5, 5)]
    assert [r.example_indices for r in rows] == [(4, 3), (2, 1), (0, 5)]
    assert [r.lengths for r in rows] == [(5, 1), (4, 2), (3, 2)]
    assert rows[0].position_ids == (0, 1, 2, 3, 4, 0)
    assert rows[2].position_ids == (0, 1, 2, 0, 1)
    assert rows[2].loss_weights == (0.0, 1.0, 1.0, 0.0, 1.0)
    assert rows[1].cu_seqlens == (0, 4, 6)
    assert packing_efficiency(rows, 6) == pytest.approx(17 / 18)
    assert packing_stats(rows, 6) == {"mode": "packed", "strategy": "best_fit_decreasing",
                                      "max_length": 6, "rows": 3, "examples": 6, "tokens": 17,
                                      "efficiency": round(17 / 18, 6)}


@pytest.mark.parametrize("seed", range(5))
def test_matches_bruteforce_best_fit_decreasing(seed):
    rng = random.Random(seed)
    max_length = rng.choice([8, 17, 64])
    lengths = [rng.randint(1, max_length) for _ in range(rng.randint(1, 300))]
    rows = pack(filled(lengths), max_length)
    assert [r.example_indices for r in rows] == reference_bfd(lengths, max_length)
    # every example exactly once, whole, contiguous, with positions restarting at 0
    seen = sorted(i for r in rows for i in r.example_indices)
    assert seen == list(range(len(lengths)))
    for r in rows:
        assert len(r) <= max_length
        start = 0
        for i, n in zip(r.example_indices, r.lengths):
            assert n == lengths[i]
            assert r.input_ids[start:start + n] == (i,) * n
            assert r.position_ids[start:start + n] == tuple(range(n))
            start += n


def test_docstring_examples_hold():
    import doctest

    import sftlab.tokens.packing
    assert doctest.testmod(sftlab.tokens.packing).failed == 0


def test_deterministic_and_pure():
    exs = filled([5, 3, 5, 3, 2, 7, 1])
    before = [list(e.input_ids) for e in exs]
    assert pack(exs, 8) == pack(exs, 8)
    assert [list(e.input_ids) for e in exs] == before


def test_errors_name_the_example_and_the_fix():
    with pytest.raises(ValueError, match=r"example 1 \(id 'ex1'\): 9 tokens > max_length 8.*encode"):
        pack(filled([2, 9]), 8)
    with pytest.raises(ValueError, match="example 0.*3 input_ids but 2 loss_weights"):
        pack([Ex([1, 2, 3], [0, 1])], 8)
    with pytest.raises(ValueError, match="no tokens"):
        pad_rows([Ex([], [])], 8)
    with pytest.raises(ValueError, match="2 input_ids but 1 loss_weights"):
        PackedRow.from_tokens((1, 2), (0.0,))
    with pytest.raises(ValueError, match="lengths sum to 3"):
        PackedRow.from_tokens((1, 2), (0.0, 1.0), lengths=(1, 2))


def test_packs_20k_long_tailed_examples_tight():
    rng = random.Random(0)
    for max_length in (1024, 4096):
        lengths = [min(max_length, max(8, int(rng.lognormvariate(5.3, 0.9)))) for _ in range(20_000)]
        exs = [Ex([1] * n, [1.0] * n) for n in lengths]
        rows = pack(exs, max_length)   # its speed is measured in bench/, never asserted here
        assert packing_efficiency(rows, max_length) > 0.99
        assert len(rows) <= -(-sum(lengths) // max_length) + 2   # within 2 rows of the bound


def test_pad_rows_one_example_per_row():
    exs = filled([3, 9, 4, 8, 1, 2, 7, 5])
    rows = pad_rows(exs, 10)
    assert [r.example_indices for r in rows] == [(i,) for i in range(8)]
    assert packing_efficiency(rows, 10) == pytest.approx(39 / 80)


def test_collate_padding_is_masked_by_the_mask_not_the_id():
    eos = 7
    exs = [Ex([5, 6, eos], [0, 1, 1]), Ex([4, eos], [0, 1]), Ex([3, 3, 3, eos], [0, 0, 1, 1])]
    rows = pack(exs, 6)          # rows: [ex2, ex1] (6 tokens), [ex0] (3 tokens)
    b = collate(rows, pad_id=eos, max_length=6)
    assert b["input_ids"].tolist() == [[3, 3, 3, eos, 4, eos], [5, 6, eos, eos, eos, eos]]
    assert b["loss_weights"].dtype == torch.float32
    assert b["loss_weights"].tolist() == [[0, 0, 1, 1, 0, 1], [0, 1, 1, 0, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 0, 0]]
    assert b["seq_lengths"].tolist() == [4, 2, 3] and b["cu_seqlens"].tolist() == [0, 4, 6, 9]
    assert b["max_seqlen"] == 4
    m = b["attention_mask"]
    assert m.shape == (2, 1, 6, 6) and m.dtype == torch.bool
    assert m[0, 0].int().tolist() == [[1, 0, 0, 0, 0, 0],
                                      [1, 1, 0, 0, 0, 0],
                                      [1, 1, 1, 0, 0, 0],
                                      [1, 1, 1, 1, 0, 0],
                                      [0, 0, 0, 0, 1, 0],
                                      [0, 0, 0, 0, 1, 1]]
    assert m[1, 0].int().tolist() == [[1, 0, 0, 0, 0, 0],
                                      [1, 1, 0, 0, 0, 0],
                                      [1, 1, 1, 0, 0, 0],
                                      [0, 0, 0, 1, 0, 0],     # padding sees only itself
                                      [0, 0, 0, 0, 1, 0],
                                      [0, 0, 0, 0, 0, 1]]
    additive = collate(rows, pad_id=eos, mask_dtype=torch.float32)["attention_mask"]
    assert additive.shape == (2, 1, 6, 6)
    assert torch.equal(additive == 0, m)
    assert (additive[~m] == torch.finfo(torch.float32).min).all()
    flat = collate(rows, pad_id=eos, for_flash=True)
    assert "attention_mask" not in flat
    assert flat["input_ids"].tolist() == [[3, 3, 3, eos, 4, eos, 5, 6, eos]]
    assert flat["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 0, 1, 2]]
    assert flat["cu_seqlens"].tolist() == [0, 4, 6, 9]
    with pytest.raises(ValueError, match="max_length 5"):
        collate(rows, pad_id=0, max_length=5)


@pytest.fixture(scope="module")
def tiny_model():
    from sftlab.demo.tiny import build_model
    torch.manual_seed(0)
    return build_model(vocab_size=97, hidden=64, layers=2)


def _logits(model, batch, **extra):
    keys = ("input_ids", "position_ids", "attention_mask")
    with torch.no_grad():   # use_cache=False as in training: transformers ignores packed position_ids with a cache
        return model(**{k: batch[k] for k in keys if k in batch}, use_cache=False, **extra).logits


@pytest.mark.parametrize("layout", ["bool_mask", "additive_mask_eager", "for_flash_position_ids"])
def test_packed_logits_equal_logits_alone(tiny_model, layout):
    g = torch.Generator().manual_seed(1)
    lengths = [7, 12, 5, 9]
    exs = [Ex(torch.randint(0, 97, (n,), generator=g).tolist(), [1.0] * n) for n in lengths]
    rows = pack(exs, 24)
    assert any(len(r.lengths) > 1 for r in rows)
    model = tiny_model
    if layout == "bool_mask":
        batch = collate(rows, pad_id=0, max_length=24)
    elif layout == "additive_mask_eager":
        model.set_attn_implementation("eager")
        batch = collate(rows, pad_id=0, max_length=24, mask_dtype=torch.float32)
    else:
        batch = collate(rows, pad_id=0, for_flash=True)
    try:
        packed = _logits(model, batch)
    finally:
        model.set_attn_implementation("sdpa")
    if layout == "for_flash_position_ids":
        order = [i for r in rows for i in r.example_indices]
        places = [(0, s, i) for i, s in zip(order, batch["cu_seqlens"].tolist())]
    else:
        places = [(b, s, i) for b, r in enumerate(rows) for i, s in zip(r.example_indices, r.cu_seqlens)]
    assert sorted(i for _, _, i in places) == [0, 1, 2, 3]
    for b, start, i in places:
        alone = _logits(tiny_model, {"input_ids": torch.tensor([exs[i].input_ids])})[0]
        got = packed[b, start:start + lengths[i]]
        assert torch.allclose(got, alone, rtol=1e-5, atol=1e-5), (layout, i)
    assert torch.isfinite(packed).all()


def test_changing_one_example_leaves_its_row_neighbour_unchanged(tiny_model):
    a, b = Ex([5, 6, 7, 8], [1.0] * 4), Ex([9, 10, 11], [1.0] * 3)
    a2 = Ex([50, 60, 70, 80], [1.0] * 4)
    first = _logits(tiny_model, collate(pack([a, b], 8), pad_id=0))
    second = _logits(tiny_model, collate(pack([a2, b], 8), pad_id=0))
    assert torch.equal(first[0, 4:], second[0, 4:])
    assert not torch.allclose(first[0, :4], second[0, :4])


@pytest.mark.parametrize("seed", range(8))
def test_flat_packing_of_runs_of_equal_lengths_matches_the_reference(seed):
    """``pack_lengths_flat`` places a run of equal lengths at once; with few distinct lengths
    (long runs, rows filled several times over, ties between rows of equal free space) it must
    still be the one-at-a-time best fit decreasing."""
    from sftlab.tokens.packing import pack_lengths, pack_lengths_flat

    rng = random.Random(seed)
    max_length = rng.choice([1, 5, 12, 64, 100])
    values = [rng.randint(1, max_length) for _ in range(rng.randint(1, 4))]
    lengths = [rng.choice(values) for _ in range(rng.randint(0, 600))]
    expected = reference_bfd(lengths, max_length)
    members, starts = pack_lengths_flat(lengths, max_length)
    assert [tuple(members[a:b].tolist()) for a, b in zip(starts[:-1], starts[1:])] == expected
    assert [tuple(g) for g in pack_lengths(lengths, max_length)] == expected


def test_flat_packing_refuses_what_pack_refuses():
    from sftlab.tokens.packing import pack_lengths_flat

    with pytest.raises(ValueError, match="example 2: 9 tokens > max_length 8"):
        pack_lengths_flat([3, 8, 9], 8)
    with pytest.raises(ValueError, match="example 0: no tokens"):
        pack_lengths_flat([0, 1], 8)


# TRL's own expectations for its best-fit-decreasing packer (huggingface/trl, tests/test_data_utils.py,
# class TestPackDatasetBfd, commit f2cd57710ae345ea6428ae95363267fcf38a3dc8, Apache-2.0). Each case:
# the example lengths TRL packs (after its own handling of overlong and empty sequences, which
# sftlab does not do: it encodes with the row length and drops nothing silently), the row length,
# and TRL's expected rows as positions into those lengths.
TRL_BFD_CASES = {
    "test_with_dataset": ([3, 4, 1], 4, [[1], [0, 2]]),
    "test_with_overlong_0 (5 split into 4 + 1)": ([4, 1, 2, 4, 1], 4, [[0], [3], [2, 1, 4]]),
    "test_with_overlong_two_coluns (6 split into 4 + 2)": ([4, 2, 3, 3, 4], 4, [[0], [4], [2], [3], [1]]),
    "test_with_non_power_of_2": ([5, 1, 4, 3], 5, [[0], [2, 1], [3]]),
    "test_default_no_split (5 truncated to 4)": ([4, 2, 4, 1], 4, [[0], [2], [1, 3]]),
    "test_with_empty_sequences (empties dropped)": ([2, 3, 1], 4, [[1, 2], [0]]),
}


@pytest.mark.parametrize("case", sorted(TRL_BFD_CASES))
def test_packing_matches_trls_own_best_fit_decreasing_expectations(case):
    """Another project's expected rows, order included: the same rows from ``pack_lengths``,
    ``pack_lengths_flat`` and ``pack``."""
    from sftlab.tokens.packing import pack_lengths, pack_lengths_flat

    lengths, row_length, expected = TRL_BFD_CASES[case]
    assert pack_lengths(lengths, row_length) == expected
    members, starts = pack_lengths_flat(lengths, row_length)
    assert [members[a:b].tolist() for a, b in zip(starts[:-1], starts[1:])] == expected
    assert [list(r.example_indices) for r in pack(filled(lengths), row_length)] == expected
