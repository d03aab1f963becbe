"""The epoch plan at scale: plan 1 (Python's ``random``) against plan 2 (NumPy's PCG64), side by side.

What it measures: the seconds of one epoch plan at scale, under each plan. An epoch plan is what
training computes before its first step and again at every epoch: the
mixture sample, best-fit-decreasing packing from the lengths, and the row shuffle
(``sftlab.train.data.TrainData``). This times both plans on the same synthetic lengths and slices
(a prepared store's columns, without its tokens) and prints the seconds and their ratio::

    python bench/epoch_plan.py --examples 10000000

Give the machine's load with the numbers: the plan is single-threaded NumPy and Python.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from sftlab.train.config import load_config
from sftlab.train.data import TrainData


class Columns:
    """A prepared store's columns without its tokens: what an epoch plan reads."""

    def __init__(self, lengths: np.ndarray, slice_names: list, slice_codes: np.ndarray):
        self.lengths, self.slice_names, self.slice_codes = lengths, slice_names, slice_codes

    def __len__(self) -> int:
        return len(self.lengths)


def plan_seconds(table, plan: int, weights: bool) -> tuple[float, int]:
    overrides = ["model.path=m", "data.train=[t]", "out=o", "packing.mode=packed", "packing.max_length=2048"]
    if weights:
        overrides.append("mixture.sampling_weights={a: 2, b: 1}")
    data = TrainData(load_config(None, overrides), table, {}, pad_id=0, plan=plan)
    start = time.perf_counter()
    rows = data.epoch_rows(0)
    return time.perf_counter() - start, len(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=10_000_000, help="examples in the epoch (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    table = Columns(lengths=rng.integers(20, 900, args.examples).astype(np.int64),
                            slice_names=["a", "b", "c", None], slice_codes=rng.integers(0, 4, args.examples))
    print(f"{args.examples:,} examples, lengths 20-899, 4 slices, rows of 2048; load {os.getloadavg()[0]:.2f}")
    for label, weights in (("natural mixture", False), ("sampling weights a:2 b:1", True)):
        (t1, r1), (t2, r2) = plan_seconds(table, 1, weights), plan_seconds(table, 2, weights)
        print(f"{label:26s} plan 1 {t1:6.2f} s ({r1:,} rows)   plan 2 {t2:6.2f} s ({r2:,} rows)   "
              f"ratio {t1 / t2:.1f}x")


if __name__ == "__main__":
    main()
