"""Hostile files: what is read must be a regular file of a sane size, and every broken path,
number or cache is one line naming it.

A FIFO nobody writes to, ``/dev/zero`` or ``/dev/urandom`` where a config, a policy, a sidecar
or a run's own state is read never hangs and never fills memory: each is refused by its kind
before a byte is read (a FIFO is accepted only where a data stream is documented: data inputs).
A file another program keeps appending to is read up to the size it had when opened. The readers
read a pipe or FIFO once without hanging, never crash on damaged Parquet pages or a damaged saved
dataset, refuse a symbolic link loop in one line, and lose no record of an input deleted mid-read.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import stat
import threading
from pathlib import Path

import pytest

from sftlab.cli import main

DEVICES = ["fifo", "/dev/zero", "/dev/urandom"]


def _device(kind: str, path) -> str:
    if kind == "fifo":
        os.mkfifo(path)  # nobody ever writes to it
        return str(path)
    return kind


@pytest.mark.parametrize("kind", DEVICES)
@pytest.mark.parametrize("where", ["config", "policy", "eval --policy", "eval --prompts", "data file",
                                   "heldout file", "labelled file", "label input"])
def test_a_device_or_fifo_where_a_file_is_read_is_refused_by_kind(hostile, hostile_assets, tmp_path, capsys,
                                                                  where, kind):
    if where in ("data file", "heldout file") and kind == "fifo":
        pytest.skip("a FIFO is a documented data stream for data inputs (test_a_named_fifo_is_read_without_hanging reads one)")
    data = tmp_path / "data.jsonl"
    shutil.copy(hostile_assets / "train.jsonl", data)
    (tmp_path / "prompts.jsonl").write_text('{"id": "p", "prompt": "What is 2 + 2?"}\n')
    bad = _device(kind, tmp_path / "fifo")
    argv = {"config": ["train", bad],
            "policy": ["validate", str(data), "--policy", bad],
            "eval --policy": ["eval", "--model", str(hostile_assets / "model"), "--prompts",
                              str(tmp_path / "prompts.jsonl"), "--policy", bad, "--out", str(tmp_path / "ev")],
            "eval --prompts": ["eval", "--model", str(hostile_assets / "model"), "--prompts", bad,
                               "--out", str(tmp_path / "ev")],
            "data file": ["validate", bad],
            "heldout file": ["stats", str(data), "--heldout", bad],
            "labelled file": ["eval-detector", "--labelled", bad, "--detector", "rules"],
            "label input": ["label", bad, "--out", str(tmp_path / "l.jsonl")]}[where]
    before = hostile.snapshot(tmp_path)
    err = hostile.refusal(capsys, main(argv), bad)
    assert "not a regular file" in err
    assert hostile.snapshot(tmp_path) == before


@pytest.mark.parametrize("entry", ["metrics.jsonl", ".lock", "run.json", "checkpoints/step-2/checksums.json"])
@pytest.mark.parametrize("kind", ["fifo", "directory", "devzero"])
def test_run_state_that_is_not_a_regular_file_is_refused_before_resuming(hostile, hostile_assets, hostile_runs,
                                                                        tmp_path, capsys, entry, kind):
    run = tmp_path / "run"
    shutil.copytree(hostile_runs["full"], run)
    target = run / entry
    target.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    else:
        target.symlink_to("/dev/zero")
    cfg = hostile.config(hostile_assets, run)
    before = hostile.snapshot(run)
    err = hostile.refusal(capsys, main(["train", str(cfg), "--resume"]), entry.split("/")[-1])
    assert hostile.snapshot(run) == before, err


@pytest.mark.parametrize("kind", ["fifo", "devzero", "directory"])
def test_report_reads_no_run_file_that_is_not_a_regular_file(hostile, hostile_runs, tmp_path, capsys, kind):
    run = tmp_path / "run"
    shutil.copytree(hostile_runs["full"], run)
    for name in ("metrics.jsonl", "data/stats.json", "data/mask_preview.json"):
        (run / name).unlink()
        if kind == "fifo":
            os.mkfifo(run / name)
        elif kind == "devzero":
            (run / name).symlink_to("/dev/zero")
        else:
            (run / name).mkdir()
    code = main(["report", str(run), "--out", str(tmp_path / "page.html")])
    out = capsys.readouterr()
    assert code in (0, 1) and "Traceback" not in out.err
    assert out.out.count("not a regular file") + out.out.count("is a directory") == 3, out.out


def test_a_file_appended_to_while_it_is_read_ends_at_its_size_when_opened(hostile, tmp_path):
    from sftlab.files import open_input

    path = tmp_path / "growing.jsonl"
    path.write_bytes(b'{"id": 1}\n' * 1000)
    stop = threading.Event()

    def append():
        with open(path, "ab") as f:
            while not stop.is_set():
                f.write(b'{"id": 2}\n' * 100)
                f.flush()

    writer = threading.Thread(target=append)
    with open_input(path) as f:
        writer.start()
        try:
            data = f.read()
        finally:
            stop.set()
            writer.join()
    assert data == b'{"id": 1}\n' * 1000


def test_validate_of_a_file_another_program_keeps_appending_to_ends(hostile, hostile_assets, tmp_path, capsys):
    import json

    path = tmp_path / "growing.jsonl"
    shutil.copy(hostile_assets / "train.jsonl", path)
    stop = threading.Event()

    def append():
        with open(path, "a") as f:
            while not stop.is_set():
                f.write(json.dumps({"id": "more", "messages": []}) + "\n")
                f.flush()

    writer = threading.Thread(target=append)
    writer.start()
    try:
        code = main(["validate", str(path), "--json", "--quarantine", str(tmp_path / "q.jsonl")])
    finally:
        stop.set()
        writer.join()
    report = json.loads(capsys.readouterr().out)
    assert code in (0, 1) and report["files"][0]["records"] >= 24


@pytest.mark.parametrize("what", ["config", "policy"])
def test_a_config_or_policy_of_absurd_size_is_refused_unread(hostile, hostile_assets, tmp_path, capsys, what):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.write(b"# " + b"x" * (17 << 20) + b"\n")
    argv = ["train", str(big)] if what == "config" else ["validate", str(hostile_assets / "train.jsonl"),
                                                         "--policy", str(big)]
    assert "larger than" in hostile.refusal(capsys, main(argv), str(big))


# -- tracebacks left: caches, run directories, numbers, paths ---------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "chardev", "file link", "dangling link", "link loop", "/proc/self",
                                  "under a file"])
def test_a_cache_dir_that_cannot_be_a_writable_directory_is_one_line(hostile, hostile_assets, tmp_path, capsys, kind):
    cache = tmp_path / "cache"
    (tmp_path / "afile").write_text("mine\n")
    if kind == "fifo":
        os.mkfifo(cache)
    elif kind == "chardev":
        cache = "/dev/null"
    elif kind == "file link":
        cache.symlink_to(tmp_path / "afile")
    elif kind == "dangling link":
        cache.symlink_to(tmp_path / "nowhere" / "x")
    elif kind == "link loop":
        cache.symlink_to(cache)
    elif kind == "/proc/self":
        cache = "/proc/self"
    else:
        cache = tmp_path / "afile" / "cache"
    cfg = hostile.config(hostile_assets, tmp_path / "run")
    before = hostile.snapshot(tmp_path)
    hostile.refusal(capsys, main(["prepare", str(cfg), f"data.cache_dir={cache}"]), f"data.cache_dir={cache}")
    assert hostile.snapshot(tmp_path) == before


@pytest.mark.parametrize("damage", ["checkpoints a file", "checkpoints a link loop", ".lock a directory",
                                    "run.json a FIFO"])
def test_a_run_directory_with_entries_of_the_wrong_kind_is_one_line(hostile, hostile_assets, hostile_runs,
                                                                     tmp_path, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(hostile_runs["full"], run)
    name = damage.split()[0]
    shutil.rmtree(run / name, ignore_errors=True)
    (run / name).unlink(missing_ok=True)
    if damage.endswith("a file"):
        (run / name).write_text("mine\n")
    elif damage.endswith("link loop"):
        (run / name).symlink_to(run / name)
    elif damage.endswith("a directory"):
        (run / name).mkdir()
    else:
        os.mkfifo(run / name)
    cfg = hostile.config(hostile_assets, run)
    before = hostile.snapshot(run)
    hostile.refusal(capsys, main(["train", str(cfg), "--resume"]), name)
    assert hostile.snapshot(run) == before


BIG = "9" * 5000


@pytest.mark.parametrize("override", [f"seed={BIG}", f"optim.max_steps={BIG}", f"optim.max_steps={'9' * 4000}",
                                      "optim.max_steps=1000000000000000000000000000000", f"data.num_proc=-{BIG}",
                                      f"mixture.sampling_weights={{a: {BIG}}}"])
def test_an_integer_past_64_bits_in_an_override_is_one_line_naming_the_key(hostile, hostile_assets, tmp_path,
                                                                           capsys, override):
    cfg = hostile.config(hostile_assets, tmp_path / "run")
    err = hostile.refusal(capsys, main(["prepare", str(cfg), override]), override.split("=")[0])
    assert "digits" in err or "out of range" in err


@pytest.mark.parametrize("key", ["seed", "optim.max_steps", "encoding.max_length"])
def test_an_integer_of_5000_digits_in_the_yaml_is_one_line_with_its_line(hostile, hostile_assets, tmp_path,
                                                                         capsys, key):
    import yaml

    cfg = hostile.config(hostile_assets, tmp_path / "run")
    raw = yaml.safe_load(cfg.read_text())
    section, _, leaf = key.rpartition(".")
    (raw[section] if section else raw)[leaf] = 1234567
    cfg.write_text(yaml.safe_dump(raw).replace("1234567", BIG))
    line = next(i for i, t in enumerate(cfg.read_text().split("\n"), 1) if BIG in t)
    hostile.refusal(capsys, main(["prepare", str(cfg)]), str(cfg), f"line {line}")


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-10])
def test_a_vanishing_mixture_temperature_gives_finite_shares(hostile, temperature):
    from sftlab.train.mixture import target_counts, temperature_shares

    shares = temperature_shares({"a": 900, "b": 100, "c": 900, "d": 1}, temperature)
    assert shares == {"a": 0.5, "b": 0.0, "c": 0.5, "d": 0.0}
    assert sum(target_counts(shares, 7).values()) == 7


def test_training_with_a_mixture_temperature_of_5e_324_runs(hostile, hostile_assets, tmp_path, capsys):
    cfg = hostile.config(hostile_assets, tmp_path / "run", mixture={"temperature": 5e-324},
                         optim={"max_steps": 1})
    assert main(["train", str(cfg)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("key", ["model.path", "data.train", "data.cache_dir", "tokenizer"])
def test_a_path_with_bytes_that_are_not_utf8_is_one_line_naming_the_key(hostile, hostile_assets, tmp_path,
                                                                        capsys, key):
    name = os.fsdecode(b"tr\xffain.jsonl")  # how Python hands such an argument over
    shutil.copy(hostile_assets / "train.jsonl", tmp_path / name)
    value = f"[{tmp_path / name}]" if key == "data.train" else str(tmp_path / name)
    cfg = hostile.config(hostile_assets, tmp_path / "run")
    before = hostile.snapshot(tmp_path)
    err = hostile.refusal(capsys, main(["prepare", str(cfg), f"{key}={value}"]), key, "\\xff")
    assert "not UTF-8" in err
    assert hostile.snapshot(tmp_path) == before


def test_a_config_file_with_bytes_that_are_not_utf8_is_one_line(hostile, hostile_assets, tmp_path, capsys):
    cfg = hostile.config(hostile_assets, tmp_path / "run")
    cfg.write_bytes(cfg.read_bytes().replace(b"/model", b"/mod\xffel"))
    assert "not UTF-8" in hostile.refusal(capsys, main(["prepare", str(cfg)]), str(cfg))


def test_a_template_file_that_is_a_fifo_is_refused_by_kind(hostile, hostile_assets, tmp_path, capsys):
    os.mkfifo(tmp_path / "chat.jinja")
    code = main(["inspect", str(hostile_assets / "train.jsonl"), "--tokenizer", str(hostile_assets / "model"),
                 "--template", str(tmp_path / "chat.jinja")])
    assert "not a regular file" in hostile.refusal(capsys, code, "chat.jinja")


def _feed(path_or_fd, data: bytes):
    import threading

    def write():
        with open(path_or_fd, "wb", closefd=True) as f:
            f.write(data)
    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


def test_a_pipe_is_read_once_and_loses_no_record(hostile, tmp_path, capsys):
    data = "".join(json.dumps(r) + "\n" for r in hostile.records(300)).encode()
    r, w = os.pipe()
    writer = _feed(w, data)
    code, out = hostile.validate_json(capsys, f"/dev/fd/{r}", "--quarantine", tmp_path / "q.jsonl")
    writer.join()
    os.close(r)
    assert code == 0 and out["records"] == out["accepted"] == 300


def test_a_named_fifo_is_read_without_hanging(hostile, tmp_path, capsys):
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    writer = _feed(fifo, "".join(json.dumps(r) + "\n" for r in hostile.records(50)).encode())
    code, out = hostile.validate_json(capsys, fifo, "--quarantine", tmp_path / "q.jsonl")
    writer.join()
    assert code == 0 and out["records"] == out["accepted"] == 50
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


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


def test_damaged_parquet_pages_behind_a_valid_footer_never_crash(hostile, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist(hostile.records(400)), good, compression="NONE", write_page_checksum=True)
    data = good.read_bytes()
    footer = int.from_bytes(data[-8:-4], "little") + 8
    for i, bad in enumerate(_damaged_copies(data, 4, len(data) - footer, n=6)):
        path = tmp_path / f"bad{i}.parquet"
        path.write_bytes(bad)
        _no_traceback_and_nothing_lost(capsys, path)


def test_a_damaged_saved_dataset_is_a_reason_not_a_crash(hostile, tmp_path, capsys):
    import datasets

    good = tmp_path / "good"
    datasets.Dataset.from_list(hostile.records(200)).save_to_disk(str(good))
    arrow = next(good.glob("*.arrow"))
    data = arrow.read_bytes()
    for i, bad in enumerate(_damaged_copies(data, 200, len(data), n=4)):
        copy = tmp_path / f"bad{i}"
        shutil.copytree(good, copy)
        (copy / arrow.name).write_bytes(bad)
        _no_traceback_and_nothing_lost(capsys, copy)


def test_a_symbolic_link_loop_as_input_is_a_one_line_reason(hostile, tmp_path, capsys):
    (tmp_path / "loop.jsonl").symlink_to(tmp_path / "loop.jsonl")
    err = hostile.refusal(capsys, main(["validate", str(tmp_path / "loop.jsonl")]))
    assert "loop.jsonl" in err


def test_an_input_deleted_while_it_is_read_loses_no_record(hostile, tmp_path):
    from sftlab.data.readers import sources

    path = hostile.write_jsonl(tmp_path / "a.jsonl", hostile.records(5000))  # far more than one read buffer
    seen = 0
    for _, items in sources(path, 10 << 20):
        for _ in items:
            seen += 1
            if seen == 1:
                path.unlink()  # opened once: the rest still comes from the open file
    assert seen == 5000
