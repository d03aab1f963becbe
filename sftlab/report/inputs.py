"""Reading a run directory for the report: every file optional, every problem noted, not fatal.

The report shows what a run recorded; a missing or unreadable file becomes a
"not recorded" note in its section (and a line in ``RunFiles.problems``), never a crash.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.errors import UsageError
from sftlab.files import open_input, read_input
from sftlab.manifest import ManifestError, read_run_json, validate_manifest

FILES = ("run.json", "metrics.jsonl", "data/stats.json", "data/mask_preview.json",
         "eval/eval.json", "eval/outputs.jsonl")


@dataclass
class RunFiles:
    run_dir: Path
    manifest: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] | None = None
    mask_preview: list[dict[str, Any]] | None = None
    eval: dict[str, Any] | None = None
    xstest: dict[str, Any] | None = None
    """``eval_xstest/eval.json``: the same models on XSTest (``sftlab demo`` writes it)."""
    ood: dict[str, Any] | None = None
    """``eval_ood/eval.json``: the same models on public sets the suite was not built from."""
    outputs: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    """run.json or eval/eval.json present but unreadable: the report says so and exits 1."""
    """One line per file that was present but could not be used, naming file and line."""

    @property
    def train_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.metrics if "loss" in r]

    @property
    def eval_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.metrics if isinstance(r.get("eval_loss"), dict)]

    @property
    def gen_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.metrics if isinstance(r.get("gen_eval"), dict)]

    @property
    def quarantined(self) -> int | None:
        """Records quarantined in all (training and held-out, loading and encoding): the one count
        every part of the report shows. ``data/stats.json`` holds it as training measured it; the
        manifest's splits are the fallback."""
        if self.stats is not None and isinstance(self.stats.get("quarantined"), int):
            return self.stats["quarantined"]
        splits = ((self.manifest or {}).get("data") or {}).get("splits") or {}
        counts = [s.get("quarantined") for s in splits.values() if isinstance(s, dict)]
        return sum(counts) if counts and all(isinstance(c, int) for c in counts) else None

    def section(self, name: str) -> Any:
        return (self.manifest or {}).get(name)


MAX_JSON_BYTES = 256 << 20


def _read_json(path: Path, problems: list[str], kind: type) -> Any:
    if not os.path.lexists(path):
        return None
    try:
        value = json.loads(read_input(path, max_bytes=MAX_JSON_BYTES).decode("utf-8"))
    except UsageError as e:
        problems.append(str(e))
        return None
    except UnicodeDecodeError as e:
        problems.append(f"{path}: unreadable ({e})")
        return None
    except json.JSONDecodeError as e:
        problems.append(f"{path}: line {e.lineno}: not valid JSON ({e.msg})")
        return None
    except (ValueError, RecursionError):
        problems.append(f"{path}: not readable JSON (nested too deep or a number too large)")
        return None
    if not isinstance(value, kind):
        problems.append(f"{path}: expected a JSON {kind.__name__}, got {type(value).__name__}")
        return None
    return value


def _read_jsonl(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    if not os.path.lexists(path):
        return []
    rows, bad = [], []
    try:
        with open_input(path) as f:
            lines = f.read().decode("utf-8", errors="replace").split("\n")
    except UsageError as e:
        problems.append(str(e))
        return []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(n)
    if bad:  # a run killed mid-write leaves a torn last line: skip it, say so
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        problems.append(f"{path}: {len(bad)} line(s) skipped, not a JSON object (line {shown})")
    return rows


def _read_manifest(run: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        return read_run_json(run, missing_ok=True)
    except (ManifestError, UsageError) as e:
        problems.append(str(e))
        return None


def read_run(run_dir: str | Path) -> RunFiles:
    """Everything the report reads from ``run_dir`` (see DESIGN.md, "Run directory")."""
    run = Path(run_dir)
    files = RunFiles(run_dir=run)
    p = files.problems
    files.manifest = _read_manifest(run, p)
    invalid = []
    if files.manifest is not None:
        try:
            validate_manifest(files.manifest, str(run / "run.json"))
        except ManifestError as e:  # still shown: a newer schema may add fields we don't know
            p.append(str(e))
            invalid = ["run.json"]
    files.metrics = _read_jsonl(run / "metrics.jsonl", p)
    files.stats = _read_json(run / "data" / "stats.json", p, dict)
    preview = _read_json(run / "data" / "mask_preview.json", p, list)
    files.mask_preview = [e for e in preview if isinstance(e, dict)] if preview is not None else None
    where = eval_dir(run, files.manifest)
    files.eval = _read_json(where / "eval.json", p, dict)
    files.outputs = _read_jsonl(where / "outputs.jsonl", p)
    files.xstest = _read_json(run / "eval_xstest" / "eval.json", p, dict)
    files.ood = _read_json(run / "eval_ood" / "eval.json", p, dict) if (run / "eval_ood").is_dir() else None
    files.unreadable = invalid + [name for name, value in (("run.json", files.manifest),
                                                           (f"{where.name}/eval.json", files.eval))
                                  if value is None and os.path.lexists(run / name)]
    return files


def eval_dir(run: Path, manifest: dict[str, Any] | None) -> Path:
    """``RUN/eval``, or, where it holds no eval.json, the folder inside RUN that run.json's
    ``artifacts.eval`` names (``sftlab eval --model RUN/final --out RUN/eval-v2`` records it there)."""
    default = run / "eval"
    recorded = ((manifest or {}).get("artifacts") or {}).get("eval")
    if os.path.lexists(default / "eval.json") or not isinstance(recorded, str):
        return default
    rel = Path(recorded)
    if rel.is_absolute() or ".." in rel.parts or rel.name != "eval.json" or len(rel.parts) != 2:
        return default  # only a folder of the run itself, wherever the run was moved
    return run / rel.parent


def found_any(run_dir: str | Path) -> bool:
    run = Path(run_dir)
    return any((run / f).is_file() for f in FILES)
