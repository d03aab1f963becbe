"""Hostile checkpoints and resumes: what a resume is told about its checkpoint and its base is checked.

A checkpoint vouches for its files through ``checksums.json``; the list itself is vouched for by
what a complete checkpoint holds and by the sha256 the run's manifest recorded for it, so a list
edited to leave a changed weight out, or rewritten to bless it, is damage. A LoRA adapter means
nothing on other base weights: a base changed in place at the same path is a change a resume
names (and continues over only with ``--allow-changes``). A full disk while a checkpoint is
written ends in one line and leaves the previous checkpoint whole. Every case runs under the
corpus' time limit, exits 2 with one line and no traceback where it refuses, and rewrites nothing.
The run lock (a live run holds its directory; two trainings on one directory: one is refused), a
resume that would change the result, and damaged checkpoints or run.json are here too.
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

pytestmark = pytest.mark.usefixtures("time_limit")  # conftest.py: every case under HOSTILE_LIMIT_S


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
def test_an_edited_checksum_list_does_not_let_a_flipped_weight_resume(hostile, hostile_assets, hostile_base_run,
                                                                      tmp_path, capsys, edit):
    run = hostile.copy_run(hostile_base_run, tmp_path)
    newest = run / "checkpoints" / "step-2"
    hostile.flip_byte(newest / "model.safetensors")
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
    cfg = hostile.config(hostile_assets, run, optim={"max_steps": 3})
    err = hostile.refusal(capsys, main(["train", str(cfg), "--resume", "--allow-changes"]))
    assert f"{newest} is damaged" in err and "checksums.json" in err and "--fallback-checkpoint" in err
    assert _files(run) == before


def test_a_checkpoint_written_outside_a_run_is_still_checked_for_completeness(hostile, hostile_assets,
                                                                              hostile_base_run, tmp_path):
    from sftlab.train.checkpoint import verify_checkpoint

    run = hostile.copy_run(hostile_base_run, tmp_path)
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


def test_a_lora_run_resumed_on_a_base_changed_in_place_names_it(hostile, hostile_assets, tmp_path, capsys):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(hostile_assets / "model", base)
    run = tmp_path / "run"
    lora = {"enabled": True, "r": 2}
    assert main(["train", str(hostile.config(hostile_assets, run, model={"path": str(base)}, lora=lora))]) == 0
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["model"]["base_sha256"] and "model.safetensors" in manifest["model"]["base_files"]
    capsys.readouterr()
    cfg = hostile.config(hostile_assets, run, model={"path": str(base)}, lora=lora, optim={"max_steps": 3})
    _perturb_weights(base)
    before = _files(run)
    err = hostile.refusal(capsys, main(["train", str(cfg), "--resume"]))
    assert "model.base_sha256" in err and "--allow-changes" in err
    assert _files(run) == before
    assert main(["train", str(cfg), "--resume", "--allow-changes"]) == 0
    err = capsys.readouterr().err
    assert "model.base_sha256" in err
    segs = json.loads((run / "run.json").read_text())["segments"]
    assert "model.base_sha256" in segs[-1]["changed"]


def test_an_unchanged_lora_base_resumes_without_reading_its_weights_again(hostile, hostile_assets, tmp_path,
                                                                          capsys, monkeypatch):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(hostile_assets / "model", base)
    run = tmp_path / "run"
    lora = {"enabled": True, "r": 2}
    assert main(["train", str(hostile.config(hostile_assets, run, model={"path": str(base)}, lora=lora))]) == 0
    import sftlab.fingerprints as fp

    opened = []
    real = hashlib.file_digest
    monkeypatch.setattr(fp.hashlib, "file_digest", lambda f, *a: opened.append(getattr(f, "name", "")) or real(f, *a))
    cfg = hostile.config(hostile_assets, run, model={"path": str(base)}, lora=lora, optim={"max_steps": 3})
    assert main(["train", str(cfg), "--resume", "--allow-changes"]) == 0
    assert not any(str(base) in str(name) for name in opened)  # the base's stamps matched
    capsys.readouterr()


# -- a full disk while a checkpoint is written -------------------------------------------------------

def test_a_checkpoint_over_the_file_size_limit_is_one_line_and_the_previous_one_stays(hostile, hostile_assets,
                                                                                      hostile_base_run, tmp_path):
    run = hostile.copy_run(hostile_base_run, tmp_path)
    cfg = hostile.config(hostile_assets, run, optim={"max_steps": 3})
    before = _files(run / "checkpoints")
    biggest = max(p.stat().st_size for p in before)

    def small_disk():  # any file written past the limit fails with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (biggest // 2, biggest // 2))

    proc = subprocess.run([sys.executable, "-m", "sftlab", "train", str(cfg), "--resume", "--allow-changes"],
                          capture_output=True, text=True, timeout=hostile.limit_s, preexec_fn=small_disk,
                          env={**os.environ, "PYTHONPATH": str(hostile.root)})
    assert proc.returncode == 2, proc.stderr
    errors = [x for x in proc.stderr.splitlines() if "error:" in x]  # beside the resume's own notes
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert f"{run / 'checkpoints' / 'step-3'}: cannot write it: over the file size limit; it needs about" in errors[0]
    assert f"{run / 'checkpoints' / 'step-2'} is whole" in errors[0]
    assert _files(run / "checkpoints") == before  # the previous checkpoints whole, nothing partial left
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_final_model_over_the_file_size_limit_is_one_line_and_leaves_nothing_partial(hostile, hostile_assets,
                                                                                       tmp_path):
    """A LoRA run whose merged final model is the first file too large: checkpoints hold the small
    adapter, ``final/`` the whole model."""
    run = tmp_path / "run"
    cfg = hostile.config(hostile_assets, run, lora={"enabled": True, "r": 2, "merge_on_save": True}, optim={"max_steps": 1})
    limit = (hostile_assets / "model" / "model.safetensors").stat().st_size - 1024

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "sftlab", "train", str(cfg)], capture_output=True, text=True,
                          timeout=hostile.limit_s, preexec_fn=small_disk, env={**os.environ, "PYTHONPATH": str(hostile.root)})
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


def test_training_into_a_filesystem_that_fills_mid_run_is_one_line(hostile, hostile_assets, hostile_base_run,
                                                                   mounted, capsys):
    """The run's filesystem holds the first checkpoint and fills after it (at the second checkpoint or
    at the final model): the path being written is named with the room it needs, nothing partial is
    left, and the newest checkpoint is whole."""
    used = lambda p: p.stat().st_blocks * 512 + 4096  # noqa: E731  (blocks, and the inode's page)
    first = sum(used(p) for p in (hostile_base_run / "checkpoints" / "step-1").rglob("*"))
    rest = sum(used(p) for p in hostile_base_run.rglob("*") if "checkpoints" not in p.parts and "final" not in p.parts)
    fs = mounted(rest + first + first // 2)
    run = fs / "run"
    code = main(["train", str(hostile.config(hostile_assets, run))])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert "cannot write it: no space left on the device; it needs about" in line and "free there" in line
    assert f"{run / 'checkpoints' / 'step-2'}: " in line or f"{run / 'final'}: " in line  # whichever filled it
    assert not [p for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if p.name.startswith(".tmp")]
    from sftlab.train.checkpoint import choose_checkpoint, verify_checkpoint

    newest = choose_checkpoint(run)  # whole, and verified: --resume continues from it
    assert newest is not None and verify_checkpoint(newest) == []


def test_a_live_run_holds_the_directory_and_the_message_says_how_to_continue(hostile, hostile_assets, tmp_path,
                                                                             capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket
        (run / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                               "started": "then", "config": "first.yaml"}))
        err = hostile.refusal(capsys, main(["train", str(hostile.config(hostile_assets, run))]))
        assert f"pid {holder.pid}" in err and "sftlab train first.yaml --resume" in err
        assert sorted(os.listdir(run)) == [".lock"]  # nothing of the live run was touched
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and the next run takes the directory
    assert main(["train", str(hostile.config(hostile_assets, run))]) == 0
    assert not (run / ".lock").exists()
    capsys.readouterr()


def test_two_trainings_on_one_directory_one_is_refused(hostile, hostile_assets, tmp_path, capsys):
    cfg = hostile.config(hostile_assets, tmp_path / "run", optim={"max_steps": 6})
    env = {**os.environ, "PYTHONPATH": str(hostile.root), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "sftlab", "train", str(cfg)]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import time
    while not (tmp_path / "run" / ".lock").exists():
        assert first.poll() is None, first.stderr.read()
        time.sleep(0.01)
    assert "in use by another sftlab train" in hostile.refusal(capsys, main(["train", str(cfg)]))
    assert first.wait(timeout=hostile.limit_s) == 0, first.stderr.read()
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [s["from_step"] for s in manifest["segments"]] == [0]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == list(range(1, 7))  # one run's metrics, not two interleaved


@pytest.mark.parametrize("change,key", [
    ({"optim": {"lr": 5e-3}}, "config.optim.lr"),
    ({"seed": 9}, "config.seed"),
    ({"lora": {"enabled": True}}, "config.lora.enabled"),
    ({"encoding": {"max_length": 48}}, "config.encoding.max_length"),
    ({"template": "zephyr"}, "template.fingerprint"),
    ({"data": {"train": ["OTHER"]}}, "data.splits.train.records_sha256"),
])
def test_resume_refuses_what_changes_the_result_and_names_the_keys(hostile, hostile_assets, hostile_base_run,
                                                                   tmp_path, capsys, change, key):
    run = hostile.copy_run(hostile_base_run, tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    if change.get("data"):
        change = {"data": {"train": [str(hostile_assets / "other.jsonl")]}}
    err = hostile.refusal(capsys, main(["train", str(hostile.config(hostile_assets, run, **change)), "--resume"]))
    assert key in err and "--allow-changes" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing rewritten


def test_resume_with_allow_changes_uses_the_new_settings_and_records_segments(hostile, hostile_assets,
                                                                              hostile_base_run, tmp_path, capsys):
    import torch

    from sftlab.train.config import load_config
    from sftlab.train.loop import lr_scheduler

    run = hostile.copy_run(hostile_base_run, tmp_path)
    cfg = hostile.config(hostile_assets, run, optim={"lr": 4e-3, "max_steps": 4})
    assert main(["train", str(cfg), "--resume"]) == 2
    assert main(["train", str(cfg), "--resume", "--allow-changes"]) == 0
    capsys.readouterr()
    manifest = json.loads((run / "run.json").read_text())
    segs = manifest["segments"]
    assert [(s["from_step"], s["to_step"]) for s in segs] == [(0, 2), (2, 4)]
    assert segs[0]["config_sha256"] != segs[1]["config_sha256"] == manifest["config_sha256"]
    assert set(segs[1]["changed"]) == {"config.optim.lr", "config.optim.max_steps"}
    assert manifest["config"]["optim"]["lr"] == 4e-3
    # the rate used after the resume is the new one on the new schedule, not the checkpoint's
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=4e-3)
    sched = lr_scheduler(opt, load_config(cfg), 4)
    want = []
    for _ in range(4):
        want.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
           if "lr" in r}
    assert lrs[3] == pytest.approx(want[2]) and lrs[4] == pytest.approx(want[3])


@pytest.mark.parametrize("damage", ["flip_optimizer", "edit_state", "truncate_model", "empty_rng",
                                    "delete_optimizer_json", "delete_state"])
def test_a_damaged_checkpoint_is_refused_and_the_intact_one_offered(hostile, hostile_assets, hostile_base_run,
                                                                    tmp_path, capsys, damage):
    run = hostile.copy_run(hostile_base_run, tmp_path)
    newest = run / "checkpoints" / "step-2"
    if damage == "flip_optimizer":
        hostile.flip_byte(newest / "optimizer.safetensors")
    elif damage == "edit_state":
        state = json.loads((newest / "state.json").read_text())
        (newest / "state.json").write_text(json.dumps({**state, "step_in_epoch": 0}, indent=2, sort_keys=True) + "\n")
    elif damage == "truncate_model":
        with open(newest / "model.safetensors", "r+b") as f:
            f.truncate(100)
    elif damage == "empty_rng":
        (newest / "rng-0.safetensors").write_bytes(b"")
    elif damage == "delete_optimizer_json":
        (newest / "optimizer.json").unlink()
    else:
        (newest / "state.json").unlink()
    if damage != "flip_optimizer":  # the check itself; the whole command is run for one kind
        from sftlab.errors import UsageError
        from sftlab.train.checkpoint import choose_checkpoint

        with pytest.raises(UsageError, match="step-2 is damaged.*step-1: pass --fallback-checkpoint"):
            choose_checkpoint(run)
        assert choose_checkpoint(run, fallback=True) == run / "checkpoints" / "step-1"
        return
    cfg = hostile.config(hostile_assets, run, optim={"max_steps": 3})
    err = hostile.refusal(capsys, main(["train", str(cfg), "--resume", "--allow-changes"]))
    assert "step-2 is damaged" in err and "step-1" in err and "--fallback-checkpoint" in err
    assert main(["train", str(cfg), "--resume", "--allow-changes", "--fallback-checkpoint"]) == 0
    err = capsys.readouterr().err
    assert "resuming from the newest intact checkpoint, step-1" in err
    manifest = json.loads((run / "run.json").read_text())
    assert [(s["from_step"], s["to_step"]) for s in manifest["segments"]] == [(0, 1), (1, 3)]


def test_an_unverifiable_checkpoint_fails_with_a_reason_not_a_traceback(hostile, hostile_assets,
                                                                        hostile_base_run, tmp_path):
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from sftlab.errors import UsageError
    from sftlab.train.checkpoint import load_checkpoint

    run = hostile.copy_run(hostile_base_run, tmp_path)
    ckpt = run / "checkpoints" / "step-2"
    (ckpt / "optimizer.safetensors").write_bytes(b"\x00" * 7)
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(UsageError, match="optimizer|safetensors|header"):
        load_checkpoint(ckpt, model=model, optimizer=opt, scheduler=get_cosine_schedule_with_warmup(opt, 1, 2))


def test_resume_with_a_damaged_run_json_is_a_reason(hostile, hostile_assets, hostile_base_run, tmp_path, capsys):
    run = hostile.copy_run(hostile_base_run, tmp_path)
    (run / "run.json").write_bytes(b"[" * 100000)
    for ckpt in (run / "checkpoints").iterdir():
        (ckpt / "run.json").unlink()  # also the copies: nothing left to compare the config with
    code = main(["train", str(hostile.config(hostile_assets, run, optim={"max_steps": 3})), "--resume"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1
