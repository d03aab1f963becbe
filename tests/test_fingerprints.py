"""``data_bytes``: a record's canonical bytes made by orjson where it writes what ``json`` writes,
by ``json`` elsewhere; always ``canonical_bytes(value, default=str)``."""
from __future__ import annotations

import datetime
import decimal
import random
import struct

import pytest

from sftlab.fingerprints import canonical_bytes, data_bytes


def test_every_code_point_is_written_as_json_writes_it():
    chars = [chr(c) for c in range(0x110000)]
    for k in range(0, len(chars), 4096):
        block = chars[k:k + 4096]
        assert data_bytes(block) == canonical_bytes(block, default=str), hex(k)
        assert data_bytes({c: 1 for c in block}) == canonical_bytes({c: 1 for c in block}, default=str), hex(k)


def test_random_floats_and_integers_are_written_as_json_writes_them():
    rng = random.Random(0)
    floats = [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(20000)]
    floats += [0.0, -0.0, 1e-4, 9.999999999999999e-05, 5e-324, 1e16, 1e21, 1e22, 0.5, float("nan"), float("inf")]
    ints = [0, -1, 2**63 - 1, -2**63, 2**64 - 1, 2**64, -2**63 - 1, 10**30, True, False]
    for v in [*floats, *ints]:
        assert data_bytes([v]) == canonical_bytes([v], default=str), v


def _nested(depth: int) -> list:
    value: list = ["deep"]
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("value", [
    {"b": [1, {"z": None, "a": "é\u2028\x7f\x00"}], "a": (1, 2)},
    ["\ud800", "lone surrogate"],
    {1: "a key that is no string"},
    {"at": datetime.date(2026, 12, 7), "t": datetime.datetime(2026, 12, 7, 1, 2), "d": decimal.Decimal("1.10"),
     "b": b"raw", "span": datetime.timedelta(days=1)},
    _nested(300),  # deeper than orjson writes
])
def test_record_data_of_every_kind_is_written_as_json_writes_it(value):
    assert data_bytes(value) == canonical_bytes(value, default=str)
