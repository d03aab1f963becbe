"""Where a run may be written: a new or empty directory, or an earlier sftlab run whose entries
are of the kinds sftlab writes there (``check_run_dir``). Training and ``sftlab eval --out`` check
their output directory here before they write anything, so a typo in ``out=`` never writes into a
home directory, over another tool's files, or through a link to somewhere else.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> check_run_dir(d / "new") == d / "new"
    True
    >>> (d / "thesis.tex").write_text("mine")
    4
    >>> check_run_dir(d)
    Traceback (most recent call last):
    ...
    sftlab.errors.UsageError: out=...: holds files that are not a sftlab run (thesis.tex); sftlab writes only into a new or empty directory or an earlier run: give another path
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from sftlab.errors import UsageError
from sftlab.files import FILE_KINDS, check_ancestors, os_reason
from sftlab.manifest import ManifestError, read_manifest

# What a run directory may hold before it holds run.json (a first run stopped early).
RUN_ENTRIES = frozenset({"run.json", "data", "metrics.jsonl", "checkpoints", "final", "eval",
                         "report.html", "curves.png", "tensorboard", "mask_preview.json",
                         "config.yaml", "eval.json", "outputs.jsonl", "demo.json", "demo_config.yaml", "suite", "base", ".lock", ".tmp-final", ".old-final"})


def check_run_dir(path: str | os.PathLike, *, what: str = "out") -> Path:
    """``path`` if it may be a run directory: new, empty, or already a sftlab run.

    Refuses ``/``, a file, a path under a file, a symbolic link loop, and a directory holding
    files that are not part of a sftlab run (``RUN_ENTRIES``), naming a few of them.
    """
    p = Path(path)
    label = f"{what}={p}"
    try:
        resolved = p.resolve(strict=False)
    except (OSError, RuntimeError) as e:
        reason = os_reason(e) if isinstance(e, OSError) else "a symbolic link loop"
        raise UsageError(f"{label}: cannot be used as a run directory: {reason}") from None
    if resolved == Path(resolved.anchor):
        raise UsageError(f"{label}: is the filesystem root; give a new directory for the run")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        check_ancestors(p, label)
        return p
    except OSError as e:
        raise UsageError(f"{label}: cannot be used as a run directory: {os_reason(e)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{label}: is a file, not a directory; give a directory for the run")
    try:
        names = sorted(os.listdir(p))
    except OSError as e:
        raise UsageError(f"{label}: cannot be read: {os_reason(e)}") from None
    _check_run_entries(p, names, label)
    if "run.json" in names:
        _check_manifest(p / "run.json", label)
        return p
    foreign = [n for n in names if n not in RUN_ENTRIES and not n.startswith((".run.json.", ".metrics"))]
    if not {"demo_config.yaml", "demo.json"} & set(names):  # what only the demo puts there
        foreign += [n for n in names if n in ("config.yaml", "base", "suite")]
    if "data" in names and not _holds_only(p / "data", RUN_DATA_FILES):
        foreign.append("data/")
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UsageError(f"{label}: holds files that are not a sftlab run ({shown}); sftlab writes "
                         "only into a new or empty directory or an earlier run: give another path")
    return p


# Entries of a run directory that sftlab writes as regular files, and as directories.
RUN_FILES = frozenset({"run.json", "metrics.jsonl", ".lock", "eval.json", "outputs.jsonl", "report.html",
                       "mask_preview.json", "demo.json", "demo_config.yaml", "curves.png"})
RUN_DIRS = frozenset({"data", "checkpoints", "final", "eval", "tensorboard", "suite", "base"})


def _check_run_entries(p: Path, names: list[str], label: str) -> None:
    """Each entry sftlab would read or write must be what sftlab writes there: a regular file
    (not a link, device or FIFO: reading one could hang or read another file) or a directory
    (or a link to one)."""
    for name in names:
        want = stat.S_ISREG if name in RUN_FILES else stat.S_ISDIR if name in RUN_DIRS else None
        if want is None:
            continue
        try:  # a directory may be a link to one elsewhere (checkpoints on another disk)
            st = os.lstat(p / name) if want is stat.S_ISREG else os.stat(p / name)
        except OSError as e:
            raise UsageError(f"{label}: {p / name} cannot be used: {os_reason(e)}") from None
        if not want(st.st_mode):
            kind = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
                    else next((k for test, k in FILE_KINDS if test(st.st_mode)), "a file"))
            raise UsageError(f"{label}: {p / name} is {kind}, not the {'file' if want is stat.S_ISREG else 'directory'} "
                             "sftlab writes there; move it away or give another path")


# What sftlab writes into RUN/data (a first run stopped before run.json may leave them).
RUN_DATA_FILES = frozenset({"stats.json", "quarantine.jsonl", "mask_preview.json"})


def _holds_only(d: Path, names: frozenset) -> bool:
    try:
        return os.path.isdir(d) and all(n in names or n.startswith(".") for n in os.listdir(d))
    except OSError:
        return False


def _check_manifest(path: Path, label: str) -> None:
    """A run.json in an output directory must be a sftlab run manifest: anything else (another
    tool's file, garbage) means the directory is not a sftlab run."""
    try:
        read_manifest(path)
    except (ManifestError, OSError, ValueError, RecursionError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"{label}: holds a run.json that is not a sftlab run manifest ({reason[:200]}); "
                         "sftlab writes only into a new or empty directory or an earlier run: give "
                         "another path") from None
