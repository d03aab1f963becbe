"""Hostile and broken input: nothing destroyed, nothing lost, nothing hangs, the manifest never lies.

One case per attack class (output paths, run directories, concurrency, resume, checkpoints,
readers, records, configs, answers). Every case runs under a time limit (``LIMIT_S``), every
refusal is exit 2 with one line and no traceback, and nothing outside the case's directory is
touched.
"""
from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sftlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 60
GOOD = {"id": "g", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.fixture(autouse=True)
def time_limit(alarm_after):
    """Each case must finish within LIMIT_S: a hang fails the case instead of the whole suite."""
    with alarm_after(LIMIT_S, "hostile case"):
        yield


def one_line_refusal(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# -- output paths ---------------------------------------------------------------------------------

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
def test_output_paths_that_are_not_regular_files_are_refused_not_replaced(tmp_path, capsys, kind, command):
    data = write_jsonl(tmp_path / "a.jsonl", [GOOD])
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
    err = one_line_refusal(capsys, main(argv))
    assert str(target) in err
    assert _kind(target) == kind
    if kind == "symlink":
        assert (tmp_path / "target.txt").read_text() == "keep me\n"


def test_files_are_written_with_the_users_umask_and_keep_an_existing_mode(tmp_path, capsys):
    data = write_jsonl(tmp_path / "a.jsonl", [GOOD, {"id": "bad"}])
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


def test_a_full_disk_leaves_the_old_file_whole_and_says_so_in_one_line(tmp_path):
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": "x" * 200}]} for i in range(200)]
    data = write_jsonl(tmp_path / "a.jsonl", rows)
    q = tmp_path / "q.jsonl"
    q.write_text("previous quarantine\n")

    def small_disk():  # writes past 8 KiB fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    proc = subprocess.run([sys.executable, "-m", "sftlab", "validate", str(data), "--quarantine", str(q)],
                          capture_output=True, text=True, timeout=LIMIT_S, preexec_fn=small_disk,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "unchanged" in proc.stderr
    assert q.read_text() == "previous quarantine\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


# -- run directories ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from sftlab.demo.tiny import build_tiny

    d = tmp_path_factory.mktemp("hostile_assets")
    rng = random.Random(0)
    rows = []
    for i in range(24):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({"id": f"c{i}", "messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                                                 {"role": "assistant", "content": f"It is {a + b}."}]})
    write_jsonl(d / "train.jsonl", rows)
    write_jsonl(d / "other.jsonl", rows[::-1])
    tok, model = build_tiny(vocab_size=300, hidden=16, layers=1, heads=2, kv_heads=1, intermediate=32)
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    return d


def _config(assets: Path, out: Path, **sections) -> Path:
    cfg = {"model": {"path": str(assets / "model")}, "template": "chatml",
           "data": {"train": [str(assets / "train.jsonl")]}, "encoding": {"max_length": 64},
           "seed": 1, "out": str(out), "log": {"progress": False, "trackers": []},
           "optim": {"lr": 1e-3, "micro_batch_size": 2, "grad_accum": 1, "max_steps": 2, "warmup_steps": 1},
           "checkpointing": {"every_n_steps": 1, "keep_last": 3}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("where", ["root", "file", "under_file", "foreign", "loop"])
def test_run_directories_that_are_not_a_run_are_refused(assets, tmp_path, capsys, where):
    (tmp_path / "afile").write_text("mine\n")
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine\n")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    out = {"root": Path("/"), "file": tmp_path / "afile", "under_file": tmp_path / "afile" / "run",
           "foreign": foreign, "loop": tmp_path / "loop" / "run"}[where]
    cfg = _config(assets, tmp_path / "cfg")
    err = one_line_refusal(capsys, main(["train", str(cfg), f"out={out}"]))
    assert "out=" in err
    assert (tmp_path / "afile").read_text() == "mine\n" and sorted(os.listdir(foreign)) == ["thesis.tex"]


@pytest.fixture(scope="module")
def base_run(assets, tmp_path_factory):
    """A finished two-step run with a checkpoint after each step."""
    d = tmp_path_factory.mktemp("hostile_runs")
    run = d / "base"
    assert main(["train", str(_config(assets, run))]) == 0
    return run


def _copy(base_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    return run


def test_a_live_run_holds_the_directory_and_the_message_says_how_to_continue(assets, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket
        (run / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                               "started": "then", "config": "first.yaml"}))
        err = one_line_refusal(capsys, main(["train", str(_config(assets, run))]))
        assert f"pid {holder.pid}" in err and "sftlab train first.yaml --resume" in err
        assert sorted(os.listdir(run)) == [".lock"]  # nothing of the live run was touched
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and the next run takes the directory
    assert main(["train", str(_config(assets, run))]) == 0
    assert not (run / ".lock").exists()
    capsys.readouterr()


def test_two_trainings_on_one_directory_one_is_refused(assets, tmp_path, capsys):
    cfg = _config(assets, tmp_path / "run", optim={"max_steps": 6})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "sftlab", "train", str(cfg)]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import time
    while not (tmp_path / "run" / ".lock").exists():
        assert first.poll() is None, first.stderr.read()
        time.sleep(0.01)
    assert "in use by another sftlab train" in one_line_refusal(capsys, main(["train", str(cfg)]))
    assert first.wait(timeout=LIMIT_S) == 0, first.stderr.read()
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [s["from_step"] for s in manifest["segments"]] == [0]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == list(range(1, 7))  # one run's metrics, not two interleaved


# -- resume ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("change,key", [
    ({"optim": {"lr": 5e-3}}, "config.optim.lr"),
    ({"seed": 9}, "config.seed"),
    ({"lora": {"enabled": True}}, "config.lora.enabled"),
    ({"encoding": {"max_length": 48}}, "config.encoding.max_length"),
    ({"template": "zephyr"}, "template.fingerprint"),
    ({"data": {"train": ["OTHER"]}}, "data.splits.train.records_sha256"),
])
def test_resume_refuses_what_changes_the_result_and_names_the_keys(assets, base_run, tmp_path, capsys,
                                                                    change, key):
    run = _copy(base_run, tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    if change.get("data"):
        change = {"data": {"train": [str(assets / "other.jsonl")]}}
    err = one_line_refusal(capsys, main(["train", str(_config(assets, run, **change)), "--resume"]))
    assert key in err and "--allow-changes" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing rewritten


def test_resume_with_allow_changes_uses_the_new_settings_and_records_segments(assets, base_run, tmp_path, capsys):
    import torch

    from sftlab.train.config import load_config
    from sftlab.train.loop import lr_scheduler

    run = _copy(base_run, tmp_path)
    cfg = _config(assets, run, optim={"lr": 4e-3, "max_steps": 4})
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


# -- checkpoints ----------------------------------------------------------------------------------

def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip_optimizer", "edit_state", "truncate_model", "empty_rng",
                                    "delete_optimizer_json", "delete_state"])
def test_a_damaged_checkpoint_is_refused_and_the_intact_one_offered(assets, base_run, tmp_path, capsys, damage):
    run = _copy(base_run, tmp_path)
    newest = run / "checkpoints" / "step-2"
    if damage == "flip_optimizer":
        _flip_byte(newest / "optimizer.safetensors")
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
    cfg = _config(assets, run, optim={"max_steps": 3})
    err = one_line_refusal(capsys, main(["train", str(cfg), "--resume", "--allow-changes"]))
    assert "step-2 is damaged" in err and "step-1" in err and "--fallback-checkpoint" in err
    assert main(["train", str(cfg), "--resume", "--allow-changes", "--fallback-checkpoint"]) == 0
    err = capsys.readouterr().err
    assert "resuming from the newest intact checkpoint, step-1" in err
    manifest = json.loads((run / "run.json").read_text())
    assert [(s["from_step"], s["to_step"]) for s in manifest["segments"]] == [(0, 1), (1, 3)]


def test_an_unverifiable_checkpoint_fails_with_a_reason_not_a_traceback(assets, base_run, tmp_path):
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from sftlab.errors import UsageError
    from sftlab.train.checkpoint import load_checkpoint

    run = _copy(base_run, tmp_path)
    ckpt = run / "checkpoints" / "step-2"
    (ckpt / "optimizer.safetensors").write_bytes(b"\x00" * 7)
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(UsageError, match="optimizer|safetensors|header"):
        load_checkpoint(ckpt, model=model, optimizer=opt, scheduler=get_cosine_schedule_with_warmup(opt, 1, 2))


# -- readers --------------------------------------------------------------------------------------

def _rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "messages": [{"role": "user", "content": "q" * (i % 97 + 1)},
                                         {"role": "assistant", "content": f"answer {i}"}]} for i in range(n)]


def _validate_json(capsys, *argv) -> tuple[int, dict]:
    code = main(["validate", *map(str, argv), "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def _feed(path_or_fd, data: bytes):
    import threading

    def write():
        with open(path_or_fd, "wb", closefd=True) as f:
            f.write(data)
    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


def test_a_pipe_is_read_once_and_loses_no_record(tmp_path, capsys):
    data = "".join(json.dumps(r) + "\n" for r in _rows(300)).encode()
    r, w = os.pipe()
    writer = _feed(w, data)
    code, out = _validate_json(capsys, f"/dev/fd/{r}", "--quarantine", tmp_path / "q.jsonl")
    writer.join()
    os.close(r)
    assert code == 0 and out["records"] == out["accepted"] == 300


def test_a_named_fifo_is_read_without_hanging(tmp_path, capsys):
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    writer = _feed(fifo, "".join(json.dumps(r) + "\n" for r in _rows(50)).encode())
    code, out = _validate_json(capsys, fifo, "--quarantine", tmp_path / "q.jsonl")
    writer.join()
    assert code == 0 and out["records"] == out["accepted"] == 50
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_jsonl_whose_first_line_is_an_array_keeps_every_good_record(tmp_path, capsys):
    path = write_jsonl(tmp_path / "a.jsonl", [[1, 2], *_rows(5)])
    code, out = _validate_json(capsys, path)
    assert code == 1 and (out["records"], out["accepted"], out["quarantined"]) == (6, 5, 1)
    assert out["reasons"] == {"not_an_object": 1}


@pytest.mark.parametrize("layout", ["jsonl", "json"])
def test_an_integer_of_5000_digits_quarantines_its_record_only(tmp_path, capsys, layout):
    huge = '{"id": "big", "weight": ' + "9" * 5000 + "}"
    rows = [json.dumps(r) for r in _rows(3)]
    path = tmp_path / f"a.{layout}"
    if layout == "jsonl":
        path.write_text("\n".join([rows[0], huge, *rows[1:]]) + "\n")
    else:
        path.write_text("[" + ",\n".join([rows[0], huge, *rows[1:]]) + "]")
    code, out = _validate_json(capsys, path)
    assert code == 1 and (out["accepted"], out["quarantined"]) == (3, 1)
    q = (tmp_path / "quarantine.jsonl").read_text()
    assert "4,300 digits" in q
    assert main(["stats", str(path)]) in (0, 1)
    capsys.readouterr()


@pytest.mark.parametrize("extra", [{"id": "\ud800"}, {"meta": {"source": "x\udfff"}},
                                   {"meta": {"\ud800key": 1}}, {"tags": [{"a": "\udc00"}]}])
def test_a_lone_surrogate_anywhere_in_a_record_is_quarantined_by_validate(tmp_path, capsys, extra):
    from sftlab.data.loading import load_files

    rows = _rows(2)
    rows[1].update(extra)
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json.dumps writes \ud800 escapes
    code, out = _validate_json(capsys, path)
    assert code == 1 and out["reasons"] == {"invalid_text": 1}
    report = load_files([path])
    assert len(report.conversations) == 1


def _damaged_copies(good: bytes, start: int, end: int, n: int = 12) -> list[bytes]:
    rng = random.Random(7)
    out = []
    for _ in range(n):
        data = bytearray(good)
        for _ in range(8):
            data[rng.randrange(start, end)] ^= rng.randrange(1, 256)
        out.append(bytes(data))
    return out


def _no_traceback_and_nothing_lost(capsys, path: Path) -> None:
    code = main(["validate", str(path), "--json", "--quarantine", str(path.parent / "q.jsonl")])
    out = json.loads(capsys.readouterr().out)
    if code == 2:
        assert "error" in out and "\n" not in out["error"]
    else:
        assert out["records"] == out["accepted"] + out["quarantined"]


def test_damaged_parquet_pages_behind_a_valid_footer_never_crash(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist(_rows(400)), good, compression="NONE", write_page_checksum=True)
    data = good.read_bytes()
    footer = int.from_bytes(data[-8:-4], "little") + 8
    for i, bad in enumerate(_damaged_copies(data, 4, len(data) - footer, n=6)):
        path = tmp_path / f"bad{i}.parquet"
        path.write_bytes(bad)
        _no_traceback_and_nothing_lost(capsys, path)


def test_a_damaged_saved_dataset_is_a_reason_not_a_crash(tmp_path, capsys):
    import datasets

    good = tmp_path / "good"
    datasets.Dataset.from_list(_rows(200)).save_to_disk(str(good))
    arrow = next(good.glob("*.arrow"))
    data = arrow.read_bytes()
    for i, bad in enumerate(_damaged_copies(data, 200, len(data), n=4)):
        copy = tmp_path / f"bad{i}"
        shutil.copytree(good, copy)
        (copy / arrow.name).write_bytes(bad)
        _no_traceback_and_nothing_lost(capsys, copy)


def test_a_symbolic_link_loop_as_input_is_a_one_line_reason(tmp_path, capsys):
    (tmp_path / "loop.jsonl").symlink_to(tmp_path / "loop.jsonl")
    err = one_line_refusal(capsys, main(["validate", str(tmp_path / "loop.jsonl")]))
    assert "loop.jsonl" in err


# -- configs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("override,field", [
    ("optim.lr=.inf", "optim.lr"), ("optim.lr=.nan", "optim.lr"), ("optim.betas=[2,-1]", "optim.betas"),
    ("seed=-1", "seed"), ("mixture.sampling_weights={a: -1}", "sampling_weights"),
    ("mixture.sampling_weights={a: 0, b: 0}", "sampling_weights"), ("mixture.loss_weights={a: .nan}", "loss_weights"),
    ("encoding.max_length=100000000000", "encoding.max_length"),
])
def test_values_that_would_break_training_are_refused_with_field_and_range(tmp_path, capsys, override, field):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"path": "m"}, "data": {"train": ["t.jsonl"]}, "out": str(tmp_path / "r")}))
    err = one_line_refusal(capsys, main(["train", str(cfg), override]))
    assert field in err


def test_unknown_lora_target_modules_name_the_field_and_the_choices(assets, tmp_path, capsys):
    cfg = _config(assets, tmp_path / "run", lora={"enabled": True, "target_modules": ["nope_proj"]})
    err = one_line_refusal(capsys, main(["train", str(cfg)]))
    assert "lora.target_modules" in err and "q_proj" in err


def test_a_message_weight_of_1e39_is_quarantined_not_a_nan_at_step_one(tmp_path, capsys):
    rows = _rows(2)
    rows[1]["messages"][1]["weight"] = 1e39
    code, out = _validate_json(capsys, write_jsonl(tmp_path / "a.jsonl", rows))
    assert code == 1 and out["reasons"] == {"bad_weight": 1}


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-3"])
def test_max_record_mb_out_of_range_is_refused(tmp_path, capsys, value):
    path = write_jsonl(tmp_path / "a.jsonl", [GOOD])
    assert "--max-record-mb" in one_line_refusal(capsys, main(["validate", str(path), "--max-record-mb", value]))


def _laughs() -> str:
    lines, prev = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'], "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = name
    return "\n".join(lines) + "\nmodel: {path: m}\ndata: {train: [x]}\nout: o\noptim: {lr: *i}\n"


@pytest.mark.parametrize("kind", ["latin1", "binary", "deep", "laughs", "broken"])
def test_unreadable_yaml_is_one_line(tmp_path, capsys, kind):
    cfg = tmp_path / "c.yaml"
    data = {"latin1": "model: {path: caf\xe9}\n".encode("latin-1"), "binary": b"\x00\x01\x02\xff",
            "deep": ("a: " + "[" * 10000 + "]" * 10000 + "\n").encode(), "laughs": _laughs().encode(),
            "broken": b"model: {path: m\ndata: [\n"}[kind]
    cfg.write_bytes(data)
    err = one_line_refusal(capsys, main(["train", str(cfg)]))
    assert "c.yaml" in err
    policy = tmp_path / "p.yaml"
    policy.write_bytes(data)
    one_line_refusal(capsys, main(["validate", str(write_jsonl(tmp_path / "a.jsonl", [GOOD])),
                                   "--policy", str(policy)]))


# -- run.json and eval.json -----------------------------------------------------------------------

@pytest.mark.parametrize("damage", [b"[" * 100000 + b"]" * 100000, b"\xff\xfe not utf-8", b'{"kind": 5}',
                                    b'{"seed": ' + b"9" * 5000 + b"}"])
def test_report_on_a_damaged_run_json_or_eval_json_exits_nonzero(tmp_path, capsys, damage):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "run.json").write_bytes(damage)
    (run / "eval" / "eval.json").write_bytes(damage)
    code = main(["report", str(run), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code in (1, 2) and "Traceback" not in json.dumps(out)
    if code == 1:
        assert "run.json" in out["unreadable"]


def test_resume_with_a_damaged_run_json_is_a_reason(assets, base_run, tmp_path, capsys):
    run = _copy(base_run, tmp_path)
    (run / "run.json").write_bytes(b"[" * 100000)
    for ckpt in (run / "checkpoints").iterdir():
        (ckpt / "run.json").unlink()  # also the copies: nothing left to compare the config with
    code = main(["train", str(_config(assets, run, optim={"max_steps": 3})), "--resume"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1


# -- evaluation answers ---------------------------------------------------------------------------

def test_a_catastrophically_backtracking_regex_answer_is_unmatchable_not_a_hang():
    from sftlab.evaluation.answers import UnmatchableAnswer, check_answer

    with pytest.raises(UnmatchableAnswer, match="unmatchable"):
        check_answer("a" * 60 + "b", r"(a|aa)+$", "regex")
    assert check_answer("the answer is 42", r"(?i)ANSWER is \d+", "regex")


def test_a_model_directory_with_only_pickled_weights_is_refused_with_the_reason(assets, tmp_path, capsys):
    import torch

    model = tmp_path / "pickled"
    shutil.copytree(assets / "model", model)
    from safetensors.torch import load_file
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    cfg = _config(assets, tmp_path / "run", model={"path": str(model)})
    err = one_line_refusal(capsys, main(["train", str(cfg)]))
    assert "pickled weights" in err and "safetensors" in err


def test_eval_out_that_is_a_file_is_refused_before_generating(tmp_path, capsys):
    (tmp_path / "out").write_text("mine\n")
    err = one_line_refusal(capsys, main(["eval", "--model", str(tmp_path / "m"), "--prompts", "x.jsonl",
                                         "--out", str(tmp_path / "out")]))
    assert "--out" in err and (tmp_path / "out").read_text() == "mine\n"


def test_an_eval_prompt_with_a_5000_digit_integer_is_skipped_not_fatal(tmp_path):
    from sftlab.evaluation.prompts import load_prompt_sets

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "hi", "expected": "comply"}) + "\n"
                    + '{"id": "b", "prompt": "x", "n": ' + "9" * 5000 + "}\n")
    (prompts,) = load_prompt_sets([str(path)])
    assert [p.id for p in prompts.prompts] == ["a"] and "4,300 digits" in prompts.bad_rows[0]["reason"]


def test_training_writes_nothing_outside_its_run_directory(assets, tmp_path, capsys, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cfg = _config(assets, tmp_path / "run", optim={"max_steps": 1})
    before = sorted(p.name for p in tmp_path.iterdir())
    assets_before = sorted(str(p) for p in assets.rglob("*"))
    assert main(["train", str(cfg)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "run"])
    assert list(cwd.iterdir()) == [] and sorted(str(p) for p in assets.rglob("*")) == assets_before
    assert not (tmp_path / "run" / ".lock").exists()


def test_an_input_deleted_while_it_is_read_loses_no_record(tmp_path):
    from sftlab.data.readers import sources

    path = write_jsonl(tmp_path / "a.jsonl", _rows(5000))  # far more than one read buffer
    seen = 0
    for _, items in sources(path, 10 << 20):
        for _ in items:
            seen += 1
            if seen == 1:
                path.unlink()  # opened once: the rest still comes from the open file
    assert seen == 5000


def test_a_classifier_directory_with_only_pickled_weights_is_refused(tmp_path):
    from sftlab.errors import UsageError
    from sftlab.evaluation.detectors import ClassifierDetector

    (tmp_path / "clf").mkdir()
    (tmp_path / "clf" / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UsageError, match="pickled weights"):
        ClassifierDetector(tmp_path / "clf")


@pytest.mark.parametrize("damage", [b"[" * 100000, b"\xff\xfe", b'{"seed": ' + b"9" * 5000 + b"}"])
def test_manifest_of_a_damaged_run_json_is_one_line(tmp_path, capsys, damage):
    (tmp_path / "run.json").write_bytes(damage)
    assert "run.json" in one_line_refusal(capsys, main(["manifest", str(tmp_path)]))
