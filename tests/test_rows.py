"""The rows training reads: a packed row made in memory and a row of a prepared store are both a
``sftlab.tokens.rows.Row``, and ``collate`` makes the same batch of either."""
from __future__ import annotations

import typing

import numpy as np
import pytest

from sftlab.tokens.packing import PackedRow, collate, pack
from sftlab.tokens.rows import EpochRows, ExampleTable, Row, StoreRow


def _examples():
    from types import SimpleNamespace as Ex

    # token ids equal to the example index, so each row can be read by hand
    return [Ex(input_ids=np.full(n, i, np.int32), loss_weights=np.ones(n, np.float32),
               slice=s) for i, (n, s) in enumerate([(3, "a"), (2, None), (4, "a"), (1, "b")])]


def test_a_packed_row_and_a_store_row_are_rows_and_collate_alike():
    examples = _examples()
    packed = pack(examples, max_length=5)
    table = ExampleTable(examples)
    stored = table.rows([r.example_indices for r in packed])
    assert all(isinstance(r, Row) for r in packed) and all(isinstance(r, Row) for r in stored)
    assert isinstance(packed[0], PackedRow) and isinstance(stored[0], StoreRow)
    assert [r.input_ids.tolist() for r in stored] == [[2, 2, 2, 2, 3], [0, 0, 0, 1, 1]]
    a, b = collate(packed, pad_id=9, max_length=6), collate(stored, pad_id=9, max_length=6)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k].tolist() if hasattr(a[k], "tolist") else a[k]) == (b[k].tolist() if hasattr(b[k], "tolist") else b[k]), k


def test_the_protocol_names_only_what_both_rows_have():
    wanted = set(typing.get_type_hints(Row)) | {n for n in vars(Row) if not n.startswith("_")} | {"__len__"}
    for row in (pack(_examples(), 5)[0], ExampleTable(_examples()).rows([[0, 1]])[0]):
        assert all(hasattr(row, n) for n in wanted), [n for n in wanted if not hasattr(row, n)]
    assert wanted == {"example_indices", "lengths", "input_ids", "loss_weights", "position_ids", "__len__"}
    assert not isinstance(object(), Row)


def test_epoch_rows_give_store_rows_in_the_order_asked_with_slice_loss_scales():
    table = ExampleTable(_examples())
    members, starts = np.asarray([2, 3, 0, 1]), np.asarray([0, 2, 4])
    scales = np.asarray([1.0, 0.5, 2.0])  # per slice code: None, "a", "b"
    rows = EpochRows(table, members, starts, order=[1, 0], scales=scales)
    assert len(rows) == 2 and [r.example_indices for r in rows] == [(0, 1), (2, 3)]
    assert rows[1].loss_weights.tolist() == [0.5, 0.5, 0.5, 0.5, 2.0]
    assert rows.stats(5, "packed")["efficiency"] == 1.0
    with pytest.raises(IndexError):
        rows[2]
