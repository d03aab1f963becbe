"""Hostile checkpoints and resumes: what a resume is told about its checkpoint and its base is checked.

A checkpoint vouches for its files through ``checksums.json``; the list itself is vouched for by
what a complete checkpoint holds and by the sha256 the run's manifest recorded for it, so a list
edited to leave a changed weight out, or rewritten to bless it, is damage. A LoRA adapter means
nothing on other base weights: a base changed in place at the same path is a change a resume
names (and continues over only with ``--allow-changes``). A full disk while a checkpoint is
written ends in one line and leaves the previous checkpoint whole. Every case runs under the
corpus' time limit, exits 2 with one line and no traceback where it refuses, and rewrites nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sftlab.cli import main
from test_hostile import ROOT, LIMIT_S, _config, _copy, _flip_byte, assets, base_run, one_line_refusal  # noqa: F401
from test_hostile import time_limit  # noqa: F401  (autouse: every case under LIMIT_S)


def _files(run: Path) -> dict:
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


def _rewrite_checksums(ckpt: Path, keep=None) -> None:
    """checksums.json as an editor would leave it: recomputed for the files now there (``keep``: only those)."""
    listing = {}
    for p in sorted(ckpt.rglob("*")):
        rel = p.relative_to(ckpt).as_posix()
        if p.is_file() and rel != "checksums.json" and (keep is None or rel in keep):
            listing[rel] = {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
    (ckpt / "checksums.json").write_text(json.dumps(listing, indent=2, sort_keys=True) + "\n")


@pytest.mark.parametrize("edit", ["lists_only_state", "recomputed", "emptied", "drops_the_weights"])
def test_an_edited_checksum_list_does_not_let_a_flipped_weight_resume(assets, base_run, tmp_path, capsys, edit):
    run = _copy(base_run, tmp_path)
    newest = run / "checkpoints" / "step-2"
    _flip_byte(newest / "model.safetensors")
    if edit == "lists_only_state":
        _rewrite_checksums(newest, keep={"state.json"})
    elif edit == "recomputed":
        _rewrite_checksums(newest)  # consistent with the flipped weight: only run.json's record tells
    elif edit == "emptied":
        (newest / "checksums.json").write_text("{}\n")
    else:
        _rewrite_checksums(newest, keep={p.name for p in newest.iterdir()} - {"model.safetensors"})
        (newest / "model.safetensors").unlink()
    before = _files(run)
    cfg = _config(assets, run, optim={"max_steps": 3})
    err = one_line_refusal(capsys, main(["train", str(cfg), "--resume", "--allow-changes"]))
    assert f"{newest} is damaged" in err and "checksums.json" in err and "--fallback-checkpoint" in err
    assert _files(run) == before


def test_a_checkpoint_written_outside_a_run_is_still_checked_for_completeness(assets, base_run, tmp_path):
    from sftlab.train.checkpoint import verify_checkpoint

    run = _copy(base_run, tmp_path)
    newest = run / "checkpoints" / "step-2"
    assert verify_checkpoint(newest) == []
    _rewrite_checksums(newest, keep={"state.json", "model.safetensors"})
    problems = verify_checkpoint(newest)
    assert "optimizer.safetensors is not in checksums.json (the list is incomplete)" in problems
    assert "checksums.json lists no rng-*.safetensors" in problems


def _perturb_weights(model_dir: Path) -> None:
    """Rewrite the base's weights in place (same path, same names, other values)."""
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.5
    st = path.stat()
    save_file(tensors, path, metadata={"format": "pt"})
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # its time set back, as a copy tool may


def test_a_lora_run_resumed_on_a_base_changed_in_place_names_it(assets, tmp_path, capsys):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(assets / "model", base)
    run = tmp_path / "run"
    lora = {"enabled": True, "r": 2}
    assert main(["train", str(_config(assets, run, model={"path": str(base)}, lora=lora))]) == 0
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["model"]["base_sha256"] and "model.safetensors" in manifest["model"]["base_files"]
    capsys.readouterr()
    cfg = _config(assets, run, model={"path": str(base)}, lora=lora, optim={"max_steps": 3})
    _perturb_weights(base)
    before = _files(run)
    err = one_line_refusal(capsys, main(["train", str(cfg), "--resume"]))
    assert "model.base_sha256" in err and "--allow-changes" in err
    assert _files(run) == before
    assert main(["train", str(cfg), "--resume", "--allow-changes"]) == 0
    err = capsys.readouterr().err
    assert "model.base_sha256" in err
    segs = json.loads((run / "run.json").read_text())["segments"]
    assert "model.base_sha256" in segs[-1]["changed"]


def test_an_unchanged_lora_base_resumes_without_reading_its_weights_again(assets, tmp_path, capsys, monkeypatch):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(assets / "model", base)
    run = tmp_path / "run"
    lora = {"enabled": True, "r": 2}
    assert main(["train", str(_config(assets, run, model={"path": str(base)}, lora=lora))]) == 0
    import sftlab.fingerprints as fp

    opened = []
    real = hashlib.file_digest
    monkeypatch.setattr(fp.hashlib, "file_digest", lambda f, *a: opened.append(getattr(f, "name", "")) or real(f, *a))
    cfg = _config(assets, run, model={"path": str(base)}, lora=lora, optim={"max_steps": 3})
    assert main(["train", str(cfg), "--resume", "--allow-changes"]) == 0
    assert not any(str(base) in str(name) for name in opened)  # the base's stamps matched
    capsys.readouterr()


# -- a full disk while a checkpoint is written -------------------------------------------------------

def test_a_checkpoint_over_the_file_size_limit_is_one_line_and_the_previous_one_stays(assets, base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    cfg = _config(assets, run, optim={"max_steps": 3})
    before = _files(run / "checkpoints")
    biggest = max(p.stat().st_size for p in before)

    def small_disk():  # any file written past the limit fails with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (biggest // 2, biggest // 2))

    proc = subprocess.run([sys.executable, "-m", "sftlab", "train", str(cfg), "--resume", "--allow-changes"],
                          capture_output=True, text=True, timeout=LIMIT_S, preexec_fn=small_disk,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    errors = [x for x in proc.stderr.splitlines() if "error:" in x]  # beside the resume's own notes
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert f"{run / 'checkpoints' / 'step-3'}: cannot write it: over the file size limit; it needs about" in errors[0]
    assert f"{run / 'checkpoints' / 'step-2'} is whole" in errors[0]
    assert _files(run / "checkpoints") == before  # the previous checkpoints whole, nothing partial left
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_final_model_over_the_file_size_limit_is_one_line_and_leaves_nothing_partial(assets, tmp_path):
    """A LoRA run whose merged final model is the first file too large: checkpoints hold the small
    adapter, ``final/`` the whole model."""
    run = tmp_path / "run"
    cfg = _config(assets, run, lora={"enabled": True, "r": 2, "merge_on_save": True}, optim={"max_steps": 1})
    limit = (assets / "model" / "model.safetensors").stat().st_size - 1024

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "sftlab", "train", str(cfg)], capture_output=True, text=True,
                          timeout=LIMIT_S, preexec_fn=small_disk, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert f"{run / 'final'}: cannot write it:" in lines[0] and "it needs about" in lines[0]
    assert not (run / "final").exists() and not [p for p in run.iterdir() if p.name.startswith(".tmp")]
    from sftlab.train.checkpoint import choose_checkpoint

    assert choose_checkpoint(run) == run / "checkpoints" / "step-1"  # the checkpoint whole: --resume works


@pytest.fixture
def mounted(tmp_path):
    """``mounted(size_bytes) -> path`` of a tmpfs of that size (skipped where none can be mounted)."""
    made = []

    def mount(size: int) -> Path:
        where = tmp_path / f"fs{len(made)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode(errors='replace').strip()}")
        made.append(where)
        return where

    yield mount
    for where in made:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_training_into_a_filesystem_that_fills_mid_run_is_one_line(assets, base_run, mounted, capsys):
    """The run's filesystem holds the first checkpoint and fills after it (at the second checkpoint or
    at the final model): the path being written is named with the room it needs, nothing partial is
    left, and the newest checkpoint is whole."""
    used = lambda p: p.stat().st_blocks * 512 + 4096  # noqa: E731  (blocks, and the inode's page)
    first = sum(used(p) for p in (base_run / "checkpoints" / "step-1").rglob("*"))
    rest = sum(used(p) for p in base_run.rglob("*") if "checkpoints" not in p.parts and "final" not in p.parts)
    fs = mounted(rest + first + first // 2)
    run = fs / "run"
    code = main(["train", str(_config(assets, run))])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert "cannot write it: no space left on the device; it needs about" in line and "free there" in line
    assert f"{run / 'checkpoints' / 'step-2'}: " in line or f"{run / 'final'}: " in line  # whichever filled it
    assert not [p for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if p.name.startswith(".tmp")]
    from sftlab.train.checkpoint import choose_checkpoint, verify_checkpoint

    newest = choose_checkpoint(run)  # whole, and verified: --resume continues from it
    assert newest is not None and verify_checkpoint(newest) == []
