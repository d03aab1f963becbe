#!/usr/bin/env python3
"""Encoding throughput: chat template + response-only masks (+ packing) on the shared benchmark set.

What it measures: conversations/s and tokens/s of ``sftlab.tokens.encoding.encode_all`` with the built-in
ChatML template and the shared 8k byte-level BPE tokenizer, on one process and on ``--num-proc``
processes, then best-fit-decreasing packing at 1024 tokens. Inputs come from ../shared/bench
(``make_data.py``, ``make_model.py``); they are generated into --work when missing. Timings are
printed, never asserted. Each configuration runs ``--repeat`` times; min and median are shown.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_trl import ensure_inputs as _shared_inputs  # noqa: E402  (one generator of the shared inputs)


def ensure_inputs(work: Path) -> tuple[Path, Path]:
    """``(train.jsonl, model dir)`` from ../shared/bench, generated into ``work`` when missing."""
    data, model = _shared_inputs(work)
    return data / "train.jsonl", model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/sftlab-bench", help="where inputs are generated (default: %(default)s)")
    p.add_argument("--num-proc", type=int, default=2)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()

    from transformers import AutoTokenizer

    from sftlab.tokens.encoding import encode_all
    from sftlab.data.loading import load_files

    data, model = ensure_inputs(Path(args.work))
    tok = AutoTokenizer.from_pretrained(model)
    convs = load_files([data]).conversations
    results = {}
    for label, num_proc in (("1 process", 1), (f"{args.num_proc} processes", args.num_proc)):
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            examples, quarantined = encode_all(convs, tok, "chatml", max_length=args.max_length, num_proc=num_proc)
            times.append(time.perf_counter() - t0)
        tokens = sum(len(e) for e in examples)
        med = statistics.median(times)
        results[label] = {"seconds_min": min(times), "seconds_median": med, "conversations": len(convs),
                          "quarantined": len(quarantined), "tokens": tokens,
                          "conversations_per_s": len(convs) / med, "tokens_per_s": tokens / med}
    try:
        from sftlab.tokens.packing import pack, packing_efficiency

        t0 = time.perf_counter()
        rows = pack(examples, args.max_length)
        results["pack"] = {"seconds": time.perf_counter() - t0, "rows": len(rows),
                           "efficiency": packing_efficiency(rows, args.max_length)}
    except ImportError:
        pass
    print(json.dumps(results, indent=2))
    print(f"\n{'configuration':<16}{'conv/s':>10}{'tokens/s':>14}")
    for label, r in results.items():
        if "conversations_per_s" in r:
            print(f"{label:<16}{r['conversations_per_s']:>10,.0f}{r['tokens_per_s']:>14,.0f}")


if __name__ == "__main__":
    main()
