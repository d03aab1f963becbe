"""The benchmark scripts run: each one's smallest setting, so a change to the code they drive
cannot leave them broken until the next time someone measures (their timings are never asserted)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_epoch_plan_bench_runs_both_plans():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "epoch_plan.py"), "--examples", "5000"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("5,000 examples")
    assert [ln.split()[0] for ln in lines[1:]] == ["natural", "sampling"]
    # the natural mixture draws every example once under either plan: the same rows
    assert lines[1].split("(")[1].split()[0] == lines[1].split("(")[2].split()[0]
