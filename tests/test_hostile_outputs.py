"""Hostile outputs: no command writes over one of its inputs or into a directory it does not own,
and a refused resume changes nothing.

A command's inputs are remembered by device and inode while it runs, so an output path that is
an input under another name (a symbolic link to its directory, a hard link) is refused like the
path itself. Every case: exit 2, one line naming the path or key, no traceback, every file of
the case's directory byte-identical afterwards (nothing written anywhere else either). Also: an output
path that is a link, a FIFO, a device or a directory is refused, not replaced; files get the user's umask;
a full disk leaves the old file whole; a run directory that is not a run is refused; training writes
nothing outside its run directory.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sftlab.cli import main


def _inputs(tmp_path, assets):
    shutil.copy(assets / "train.jsonl", tmp_path / "data.jsonl")
    shutil.copy(assets / "policy.yaml", tmp_path / "policy.yaml")
    (tmp_path / "alias").symlink_to(tmp_path)  # the same directory under another name
    os.link(tmp_path / "data.jsonl", tmp_path / "hard.jsonl")  # the same file under another name


# (argv with {d} for the case directory and {m} for the model, the path the refusal names)
OVER_INPUTS = {
    "stats --out onto its input": (["stats", "{d}/data.jsonl", "--out", "{d}/data.jsonl"], "data.jsonl"),
    "stats --out through a symlinked directory": (["stats", "{d}/data.jsonl", "--out", "{d}/alias/data.jsonl"],
                                                  "alias/data.jsonl"),
    "stats --out onto a hard link of its input": (["stats", "{d}/data.jsonl", "--out", "{d}/hard.jsonl"],
                                                  "hard.jsonl"),
    "stats --out onto its policy": (["stats", "{d}/data.jsonl", "--policy", "{d}/policy.yaml", "--out",
                                     "{d}/policy.yaml"], "policy.yaml"),
    "validate --quarantine onto its policy": (["validate", "{d}/data.jsonl", "--policy", "{d}/policy.yaml",
                                               "--quarantine", "{d}/policy.yaml"], "policy.yaml"),
    "validate --quarantine onto its input": (["validate", "{d}/data.jsonl", "--quarantine", "{d}/alias/hard.jsonl"],
                                             "hard.jsonl"),
    "inspect --html onto its input": (["inspect", "{d}/data.jsonl", "--tokenizer", "{m}", "--template", "chatml",
                                       "--html", "{d}/data.jsonl"], "data.jsonl"),
}


@pytest.mark.parametrize("case", sorted(OVER_INPUTS))
def test_no_command_writes_over_its_input(hostile, hostile_assets, tmp_path, capsys, case):
    _inputs(tmp_path, hostile_assets)
    argv, named = OVER_INPUTS[case]
    before = hostile.snapshot(tmp_path)
    code = main([a.format(d=tmp_path, m=hostile_assets / "model") for a in argv])
    err = hostile.refusal(capsys, code, named, "inputs")
    assert "never writes over" in err
    assert hostile.snapshot(tmp_path) == before


@pytest.mark.parametrize("target", ["run.json", "metrics.jsonl", "data/stats.json", "data/mask_preview.json"])
def test_report_out_onto_a_file_of_its_run_is_refused(hostile, hostile_runs, tmp_path, capsys, target):
    run = tmp_path / "run"
    shutil.copytree(hostile_runs["full"], run)
    before = hostile.snapshot(run)
    hostile.refusal(capsys, main(["report", str(run), "--out", str(run / target)]), target)
    assert hostile.snapshot(run) == before
    assert main(["report", str(run), "--out", str(tmp_path / "page.html")]) == 0  # elsewhere: fine


def test_label_out_onto_its_input_through_a_link_is_refused(hostile, tmp_path, capsys):
    (tmp_path / "out.jsonl").write_text('{"id": 1, "response": "sure"}\n')
    (tmp_path / "alias").symlink_to(tmp_path)
    before = hostile.snapshot(tmp_path)
    hostile.refusal(capsys, main(["label", str(tmp_path / "out.jsonl"), "--out",
                                  str(tmp_path / "alias" / "out.jsonl")]), "out.jsonl")
    assert hostile.snapshot(tmp_path) == before


# -- train out= a directory that is not a sftlab run -----------------------------------------------

FOREIGN_DIRS = {
    "a user's data, config and model": {"data/mine.jsonl": "{}\n", "config.yaml": "lr: 1\n", "base/w.bin": "x"},
    "a user's suite": {"suite/cases.txt": "x"},
    "a user's base model": {"base/config.json": "{}"},
    "a user's data folder": {"data/stats.json": "{}", "data/train.jsonl": "{}\n"},
    "garbage run.json": {"run.json": "garbage\n", "thesis.tex": "mine"},
    "another tool's run.json": {"run.json": '{"kind": "other", "x": 1}\n'},
    "a run.json that is a JSON list": {"run.json": "[1, 2]\n"},
}


@pytest.mark.parametrize("case", sorted(FOREIGN_DIRS))
def test_train_into_a_directory_with_files_it_did_not_write_is_refused(hostile, hostile_assets, tmp_path,
                                                                       capsys, case):
    out = tmp_path / "out"
    for rel, text in FOREIGN_DIRS[case].items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    cfg = hostile.config(hostile_assets, out)
    before = hostile.snapshot(tmp_path)
    err = hostile.refusal(capsys, main(["train", str(cfg)]), f"out={out}")
    assert "not a sftlab run" in err
    assert hostile.snapshot(tmp_path) == before


# -- a refused resume changes nothing ---------------------------------------------------------------

REFUSED_RESUMES = {
    "micro-batch size": ("full", ["optim.micro_batch_size=4"], "rows per optimizer step"),
    "grad accumulation": ("full", ["optim.grad_accum=2"], "rows per optimizer step"),
    "LoRA switched on": ("full", ["lora.enabled=true"], "LoRA adapter"),
    "LoRA switched off": ("lora", ["lora.enabled=false"], "LoRA adapter"),
    "LoRA rank": ("lora", ["lora.enabled=true", "lora.r=8"], "lora.r"),
    "LoRA targets": ("lora", ["lora.enabled=true", "lora.r=4", "lora.target_modules=[q_proj]"], "lora.target_modules"),
    "another base model": ("lora", ["lora.enabled=true", "lora.r=4", "model.path={a}/model2"], "model.path"),
    "a tokenizer of another vocabulary": ("full", ["tokenizer={a}/model2"], "tokenizer="),
}


@pytest.mark.parametrize("case", sorted(REFUSED_RESUMES))
def test_a_refused_resume_with_allow_changes_leaves_the_run_as_it_was(hostile, hostile_assets, hostile_runs,
                                                                      tmp_path, capsys, case):
    kind, overrides, named = REFUSED_RESUMES[case]
    run = tmp_path / "run"
    shutil.copytree(hostile_runs[kind], run)
    cfg = hostile.config(hostile_assets, run)
    before = hostile.snapshot(run)
    code = main(["train", str(cfg), *[o.format(a=hostile_assets) for o in overrides], "--resume",
                 "--allow-changes"])
    err = hostile.refusal(capsys, code, named)
    assert "continuing" not in err
    assert hostile.snapshot(run) == before  # run.json, segments, metrics, checkpoints, final: as they were


def _make(kind: str, path: Path, tmp: Path) -> None:
    if kind == "symlink":
        (tmp / "target.txt").write_text("keep me\n")
        path.symlink_to(tmp / "target.txt")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "chardev":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of our own
    elif kind == "directory":
        path.mkdir()


def _kind(path: Path) -> str:
    st = os.lstat(path)
    for test, name in ((stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "chardev"),
                       (stat.S_ISDIR, "directory"), (stat.S_ISREG, "file")):
        if test(st.st_mode):
            return name
    return "other"


@pytest.mark.parametrize("kind", ["symlink", "fifo", "chardev", "directory"])
@pytest.mark.parametrize("command", ["validate", "stats", "report"])
def test_output_paths_that_are_not_regular_files_are_refused_not_replaced(hostile, tmp_path, capsys, kind, command):
    data = hostile.write_jsonl(tmp_path / "a.jsonl", [hostile.good])
    target = tmp_path / "out.x"
    _make(kind, target, tmp_path)
    if command == "validate":
        argv = ["validate", str(data), "--quarantine", str(target)]
    elif command == "stats":
        argv = ["stats", str(data), "--out", str(target)]
    else:
        run = tmp_path / "run"
        run.mkdir()
        (run / "run.json").write_text(json.dumps({"schema_version": 1, "kind": "train"}))
        argv = ["report", str(run), "--out", str(target)]
    err = hostile.refusal(capsys, main(argv))
    assert str(target) in err
    assert _kind(target) == kind
    if kind == "symlink":
        assert (tmp_path / "target.txt").read_text() == "keep me\n"


def test_files_are_written_with_the_users_umask_and_keep_an_existing_mode(hostile, tmp_path, capsys):
    data = hostile.write_jsonl(tmp_path / "a.jsonl", [hostile.good, {"id": "bad"}])
    old = os.umask(0o027)
    try:
        assert main(["validate", str(data), "--quarantine", str(tmp_path / "q.jsonl")]) == 1
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "q.jsonl").stat().st_mode) == 0o640
    os.chmod(tmp_path / "q.jsonl", 0o604)
    assert main(["validate", str(data), "--quarantine", str(tmp_path / "q.jsonl")]) == 1
    assert stat.S_IMODE((tmp_path / "q.jsonl").stat().st_mode) == 0o604
    capsys.readouterr()


def test_a_full_disk_leaves_the_old_file_whole_and_says_so_in_one_line(hostile, tmp_path):
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": "x" * 200}]} for i in range(200)]
    data = hostile.write_jsonl(tmp_path / "a.jsonl", rows)
    q = tmp_path / "q.jsonl"
    q.write_text("previous quarantine\n")

    def small_disk():  # writes past 8 KiB fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    proc = subprocess.run([sys.executable, "-m", "sftlab", "validate", str(data), "--quarantine", str(q)],
                          capture_output=True, text=True, timeout=hostile.limit_s, preexec_fn=small_disk,
                          env={**os.environ, "PYTHONPATH": str(hostile.root)})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "unchanged" in proc.stderr
    assert q.read_text() == "previous quarantine\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


@pytest.mark.parametrize("where", ["root", "file", "under_file", "foreign", "loop"])
def test_run_directories_that_are_not_a_run_are_refused(hostile, hostile_assets, tmp_path, capsys, where):
    (tmp_path / "afile").write_text("mine\n")
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine\n")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    out = {"root": Path("/"), "file": tmp_path / "afile", "under_file": tmp_path / "afile" / "run",
           "foreign": foreign, "loop": tmp_path / "loop" / "run"}[where]
    cfg = hostile.config(hostile_assets, tmp_path / "cfg")
    err = hostile.refusal(capsys, main(["train", str(cfg), f"out={out}"]))
    assert "out=" in err
    assert (tmp_path / "afile").read_text() == "mine\n" and sorted(os.listdir(foreign)) == ["thesis.tex"]


def test_eval_out_that_is_a_file_is_refused_before_generating(hostile, tmp_path, capsys):
    (tmp_path / "out").write_text("mine\n")
    err = hostile.refusal(capsys, main(["eval", "--model", str(tmp_path / "m"), "--prompts", "x.jsonl",
                                         "--out", str(tmp_path / "out")]))
    assert "--out" in err and (tmp_path / "out").read_text() == "mine\n"


def test_training_writes_nothing_outside_its_run_directory(hostile, hostile_assets, tmp_path, capsys, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cfg = hostile.config(hostile_assets, tmp_path / "run", optim={"max_steps": 1})
    before = sorted(p.name for p in tmp_path.iterdir())
    assets_before = sorted(str(p) for p in hostile_assets.rglob("*"))
    assert main(["train", str(cfg)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "run"])
    assert list(cwd.iterdir()) == [] and sorted(str(p) for p in hostile_assets.rglob("*")) == assets_before
    assert not (tmp_path / "run" / ".lock").exists()


def test_an_input_replaced_since_it_was_read_no_longer_guards_its_old_inode(tmp_path):
    """An input is remembered by (device, inode); a run's manifest read and then rewritten
    atomically frees its inode, which a file written later may get (an FSDP LoRA run's
    adapter_config.json once did, and was refused as 'one of this command's inputs'). The guard
    asks whether the input's path still names that inode; a hard link to a live input is still refused."""
    from sftlab import files
    from sftlab.errors import UsageError

    manifest, other = tmp_path / "run.json", tmp_path / "adapter_config.json"
    manifest.write_text("{}")
    with files.inputs_scope():
        files.open_input(manifest).close()
        with pytest.raises(UsageError, match="is one of this command's inputs"):
            files.check_output_file(manifest)
        os.link(manifest, tmp_path / "linked.json")
        with pytest.raises(UsageError, match="is one of this command's inputs"):
            files.check_output_file(tmp_path / "linked.json")
        (tmp_path / "linked.json").unlink()
        files.write_atomic(tmp_path / "new.json", "{}")
        os.replace(tmp_path / "new.json", manifest)  # the input rewritten: its old inode is free
        other.write_text("{}")
        st = other.stat()
        files._inputs[st.st_dev, st.st_ino] = str(manifest)  # as if the new file got the freed inode
        assert files.check_output_file(other) == other
