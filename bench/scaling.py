#!/usr/bin/env python3
"""How sftlab's data preparation and training scale: a small table for each.

What it measures:

- preparation (load + chat template + response-only masks + best-fit-decreasing packing at
  1,024 tokens, one process) wall time, conversations/s and the peak RSS of the process, for
  10k ... 200k conversations from ../shared/bench/make_data.py (``-n``, seed 0; the 20k set is
  the one compare_trl.py uses);
- training real tokens/s of ``sftlab.train.loop.train`` (fp32, CPU) for rows of 512 ... 4,096
  tokens, at the same 4,096 tokens per optimizer step (one row per micro-batch, accumulation
  4096 / row length), on the 20k set.

Every point runs in its own process (compare_trl.py's workers), so peak RSS is that point's
alone. Timings are printed, never asserted. Inputs are generated into --work when missing.

    .venv/bin/python bench/scaling.py --out scaling.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_trl import ensure_inputs, environment, load_average, run_worker  # noqa: E402


def worker_args(data: Path, model: Path, **over) -> SimpleNamespace:
    base = dict(data=data, model=model, max_length=1024, repeat=1, num_proc=1, warmup=2, steps=5,
                grad_accum=4, lengths=[1024])
    return SimpleNamespace(**{**base, **over})


def preparation(work: Path, sizes: list[int]) -> list[dict]:
    out = []
    for n in sizes:
        data, model = ensure_inputs(work, n)
        r = run_worker("prep-sftlab", worker_args(data, model))
        seconds = r["prep_s"][0]
        out.append({"conversations": n, "load_s": r["load_s"], "prep_s": seconds, "conv_per_s": n / seconds,
                    "tokens": r["tokens"], "rows": r["rows"], "efficiency": r["efficiency"]["1024"],
                    "peak_rss_mib": r["peak_rss_mib"]})
    return out


def training(work: Path, lengths: list[int], tokens_per_step: int, warmup: int, steps: int) -> list[dict]:
    data, model = ensure_inputs(work)
    out = []
    for length in lengths:
        accum = max(1, tokens_per_step // length)
        r = run_worker("train-sftlab", worker_args(data, model, max_length=length, grad_accum=accum,
                                                   lengths=[length], warmup=warmup, steps=steps))
        out.append({"max_length": length, "grad_accum": accum, "tokens_per_s": r["tokens_per_s"],
                    "tokens": r["tokens"], "seconds": r["seconds"], "peak_rss_mib": r["peak_rss_mib"]})
    return out


def table(res: dict) -> str:
    lines = [f"sftlab preparation (load + template + masks + packing at 1024, 1 process), "
             f"load average {res['load_average_before']} -> {res['load_average_after']}",
             f"{'conversations':>14}{'load s':>9}{'prep s':>9}{'conv/s':>9}{'tokens':>13}{'packed':>9}"
             f"{'peak RSS MiB':>14}{'MiB/1k conv':>13}"]
    for r in res["preparation"]:
        lines.append(f"{r['conversations']:>14,}{r['load_s']:>9.1f}{r['prep_s']:>9.1f}{r['conv_per_s']:>9,.0f}"
                     f"{r['tokens']:>13,}{100 * r['efficiency']:>8.2f}%{r['peak_rss_mib']:>14,.0f}"
                     f"{1000 * r['peak_rss_mib'] / r['conversations']:>13.1f}")
    lines += ["", f"sftlab training (fp32, CPU, {res['tokens_per_step']:,} tokens per optimizer step, "
                  f"{res['warmup']} + {res['steps']} steps)",
              f"{'row length':>11}{'accumulation':>14}{'tokens/s':>10}{'peak RSS MiB':>14}"]
    for r in res["training"]:
        lines.append(f"{r['max_length']:>11,}{r['grad_accum']:>14}{r['tokens_per_s']:>10,.0f}"
                     f"{r['peak_rss_mib']:>14,.0f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sftlab-bench",
                   help="where inputs are generated (default: %(default)s)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 50_000, 100_000, 200_000],
                   help="conversations per preparation point (default: %(default)s)")
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096],
                   help="row lengths of the training points (default: %(default)s)")
    p.add_argument("--tokens-per-step", type=int, default=4096, help="(default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps (default: %(default)s)")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps (default: %(default)s)")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    a = p.parse_args(argv)
    res = {"environment": environment(), "load_average_before": load_average(),
           "tokens_per_step": a.tokens_per_step, "warmup": a.warmup, "steps": a.steps}
    res["preparation"] = preparation(a.work, a.sizes)
    res["training"] = training(a.work, a.lengths, a.tokens_per_step, a.warmup, a.steps)
    res["load_average_after"] = load_average()
    print(table(res))
    if a.out:
        a.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
