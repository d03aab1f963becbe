"""The run directory of ``sftlab train``: one writer at a time, and resumes that keep their word.

**Lock.** ``RUN/.lock`` holds the process id, host, start time and config of the run writing
into ``RUN``. It is created atomically (written beside, then hard-linked into place, so it is
never seen half-written); a second ``sftlab train`` on the same directory is refused with a
message naming the holder and how to continue it. A lock whose process is gone (same host, no
such process id) is stale and taken over.

**Resume.** A resumed run must give the same result as one that was never interrupted, so
anything that changes the result (the config outside ``out``, ``log`` and ``checkpointing``;
the data version of each split; the template and tokenizer fingerprints) must equal what made
the checkpoint. A difference is refused with the list of differing keys, unless the user passes
``--allow-changes``; then the run continues with the new settings and the manifest's
``segments`` keeps one entry per stretch of steps with the config and data versions it used.

    >>> resume_differences({"config": {"seed": 1, "log": {"every_n_steps": 1}}},
    ...                    {"config": {"seed": 2, "log": {"every_n_steps": 5}}})
    [{'path': 'config.seed', 'old': 1, 'new': 2}]
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sftlab.errors import UsageError
from sftlab.evaluation.cache import model_fingerprint
from sftlab.files import current_umask, read_input
from sftlab.manifest import diff_manifests, flatten

LOCK_NAME = ".lock"
# Keys that do not change the weights a run produces.
NEUTRAL = ("config.out", "config.log", "config.checkpointing", "config.eval.micro_batch_size")
# The manifest fields compared on resume besides the config.
COMPARED = ("config", "data", "template", "tokenizer", "policy")
# Paths whose content is compared instead (data version, tokenizer and policy hashes, model files):
# a moved or copied run resumes when the content is the same.
MOVABLE = ("config.data.train", "config.data.eval", "config.data.policy", "config.tokenizer", "config.model.path")


class RunLock:
    """``with RunLock(run, config=...)``: hold ``RUN/.lock`` for the duration of a run."""

    def __init__(self, run: str | os.PathLike, *, config: str | None = None):
        self.path = Path(run) / LOCK_NAME
        self.info = {"pid": os.getpid(), "host": socket.gethostname(),
                     "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "config": config}
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(self.path) and not (self.path.is_file() and not self.path.is_symlink()):
            raise UsageError(f"{self.path}: is not the lock file sftlab writes (a directory, link, "
                             "device or FIFO); remove it if no sftlab train is running there")
        for _ in range(3):
            if self._try_create():
                self.held = True
                return
            holder = read_lock(self.path)
            if holder is not None and not _is_stale(holder):
                raise UsageError(lock_message(self.path.parent, holder))
            # stale (its process is gone) or unreadable: take it over
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        raise UsageError(f"{self.path}: could not take the run directory's lock; remove the file "
                         "if no sftlab train is running there")

    def _try_create(self) -> bool:
        fd, tmp = tempfile.mkstemp(prefix=".lock.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o666 & ~current_umask())
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.info, f)
            os.link(tmp, self.path)  # atomic, and fails when the lock exists
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def release(self) -> None:
        if self.held and (read_lock(self.path) or {}).get("pid") == self.info["pid"]:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def read_lock(path: Path) -> dict | None:
    try:
        info = json.loads(read_input(path, max_bytes=1 << 20, note=False).decode("utf-8"))
    except (UsageError, ValueError, RecursionError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


def _is_stale(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return False  # another machine: its process cannot be checked from here
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def lock_message(run: Path, holder: dict) -> str:
    config = holder.get("config") or "CONFIG.yaml"
    return (f"{run} is in use by another sftlab train (pid {holder.get('pid')} on "
            f"{holder.get('host')}, since {holder.get('started')}, config {config}); wait for it "
            f"or stop it, then continue that run with `sftlab train {config} --resume`, or give "
            f"this run another out (if no such process runs, remove {run / LOCK_NAME})")


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    return flatten(value, prefix) if value is not None else {}


def resume_differences(old: dict, new: dict) -> list[dict]:
    """Result-changing fields that differ between the manifest of the checkpoint (``old``) and
    this run's (``new``), as ``[{"path", "old", "new"}]``."""
    keep = {k: old.get(k) for k in COMPARED if k in new}
    fresh = {k: new.get(k) for k in COMPARED if k in new}
    ignore = [*NEUTRAL, *MOVABLE, "data.failed_checks"]
    out = []
    for d in diff_manifests(keep, fresh, ignore=ignore):
        path = d["path"]
        if path.startswith("data.") and not (path.startswith("data.splits.") and path.endswith(".records_sha256")):
            continue  # counts, file lists and the stores follow from each split's data version
        if path.startswith(("template.", "tokenizer.", "policy.")) and not path.endswith(("fingerprint", "sha256")):
            continue
        out.append({k: d[k] for k in ("path", "old", "new")})
    old_cfg, new_cfg = old.get("config") or {}, new.get("config") or {}
    old_model = (old_cfg.get("model") or {}).get("path")
    new_model = (new_cfg.get("model") or {}).get("path")
    if old_model != new_model and not _same_model_files(old_model, new_model):
        out.append({"path": "config.model.path", "old": old_model, "new": new_model})
    old_base = (old.get("model") or {}).get("base_sha256")
    new_base = (new.get("model") or {}).get("base_sha256")
    if old_base and new_base and old_base != new_base:  # LoRA: the base weights changed in place
        out.append({"path": "model.base_sha256", "old": old_base, "new": new_base})
    if bool(old_cfg.get("data", {}).get("policy")) != bool(new_cfg.get("data", {}).get("policy")):
        out.append({"path": "config.data.policy", "old": old_cfg.get("data", {}).get("policy"),
                    "new": new_cfg.get("data", {}).get("policy")})
    return sorted(out, key=lambda d: d["path"])


def _same_model_files(a: Any, b: Any) -> bool:
    """Two model directories with the same weights, config and tokenizer files (a copied run)."""
    if not (isinstance(a, str) and isinstance(b, str) and Path(a).is_dir() and Path(b).is_dir()):
        return False

    return model_fingerprint(a) == model_fingerprint(b)


def refuse_message(ckpt: Path, diffs: list[dict]) -> str:
    shown = "; ".join(f"{d['path']}: {_short(d['old'])} -> {_short(d['new'])}" for d in diffs[:8])
    more = f" and {len(diffs) - 8} more" if len(diffs) > 8 else ""
    return (f"--resume: this run differs from the one that wrote {ckpt} in what changes the result "
            f"({shown}{more}); resume with the same settings and data, or pass --allow-changes to "
            "continue with the new ones (run.json then records each segment of steps with its "
            "config and data), or train into another out")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:16] + "..." + text[-8:]


def segments(old: dict | None, start: int, manifest: dict, changed: list[dict]) -> list[dict]:
    """The manifest's ``segments`` for a run (re)starting at step ``start``: the earlier ones up
    to ``start`` and a new one (its ``to_step`` is filled in when the run ends)."""
    earlier = []
    for seg in (old or {}).get("segments") or []:
        if isinstance(seg, dict) and isinstance(seg.get("from_step"), int) and seg["from_step"] < start:
            to = seg.get("to_step")
            earlier.append({**seg, "to_step": start if to is None else min(to, start)})
    splits = ((manifest.get("data") or {}).get("splits") or {})
    seg = {"from_step": start, "to_step": None, "config_sha256": manifest.get("config_sha256"),
           "records_sha256": {k: (v or {}).get("records_sha256") for k, v in splits.items()},
           "template_fingerprint": (manifest.get("template") or {}).get("fingerprint"),
           "tokenizer_sha256": (manifest.get("tokenizer") or {}).get("sha256")}
    if changed:
        seg["changed"] = [d["path"] for d in changed]
    return [*earlier, seg]
