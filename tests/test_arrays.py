"""Compact token arrays: list semantics where users rely on them, buffers where batches are made."""
import doctest
import pickle

import pytest
import torch

import sftlab.tokens.arrays
from sftlab.tokens.arrays import TokenArray, as_tensor, loss_weights, token_ids


def test_doctests():
    assert doctest.testmod(sftlab.tokens.arrays).failed == 0


def test_equals_lists_and_tuples_and_slices_stay_compact():
    ids = token_ids([3, 1, 4, 1, 5])
    assert ids == [3, 1, 4, 1, 5] and ids == (3, 1, 4, 1, 5) and ids != [3, 1, 4]
    assert [ids] == [[3, 1, 4, 1, 5]]
    assert isinstance(ids[1:3], TokenArray) and ids[1:3] == [1, 4] and ids[-1] == 5
    assert ids.count(1) == 2 and ids.itemsize == 4
    with pytest.raises(TypeError):
        hash(ids)


def test_conversion_is_identity_for_compact_input_and_checks_range():
    ids = token_ids([1, 2])
    assert token_ids(ids) is ids
    w = loss_weights([0, 1])
    assert loss_weights(w) is w and w.tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="int32"):
        token_ids([2 ** 31])


def test_pickles_as_itself():
    ids = token_ids(range(1000))
    back = pickle.loads(pickle.dumps(ids))
    assert type(back) is TokenArray and back == list(range(1000))


def test_as_tensor_reads_the_buffer_without_aliasing():
    ids = token_ids([7, 8, 9])
    t = as_tensor(ids)
    assert t.dtype == torch.long and t.tolist() == [7, 8, 9]
    ids[0] = 0
    assert t[0].item() == 7  # a copy, not a view of the array
    w = as_tensor(loss_weights([0.5, 1.0]))
    assert w.dtype == torch.float32 and w.tolist() == [0.5, 1.0]
    assert as_tensor([1, 2]).tolist() == [1, 2]
    assert as_tensor(token_ids([]), dtype=torch.long).numel() == 0


def test_collector_pause_restores_its_state_even_on_error():
    import gc

    from sftlab.collector import paused as gc_paused

    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with gc_paused():
            assert not gc.isenabled()
            raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # was off before: stays off
    finally:
        gc.enable()
