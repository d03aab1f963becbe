"""The benchmark scripts start: --help exits 0 and names what the script measures.

Only a smoke test: the benchmarks themselves are run by hand (BENCHMARKS.md); timings are never
asserted. The scripts live outside the package, so they are run as a user runs them.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = {"compare_trl.py": "TRL", "scaling.py": "scale", "gpu_bench.py": "MFU",
           "encode_throughput.py": "throughput", "epoch_plan.py": "plan"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_exits_0_and_says_what_it_measures(name):
    proc = subprocess.run([sys.executable, str(BENCH / name), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ")
    assert "What it measures" in proc.stdout
    assert SCRIPTS[name] in proc.stdout


def test_no_sftlab_module_imports_trl():
    """TRL is a bench-only dependency: the package never imports it."""
    package = BENCH.parent / "sftlab"
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "trl" or n.startswith("trl.") for n in names), f"{path} imports trl"


def test_compare_trl_refuses_a_single_run():
    """Medians need at least two runs of each configuration."""
    proc = subprocess.run([sys.executable, str(BENCH / "compare_trl.py"), "--repeat", "1"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "--repeat must be at least 2" in proc.stderr
