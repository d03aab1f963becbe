"""Hostile prepared-data stores (DESIGN invariant 13): what the cache is told is checked, not trusted.

A store is found through an index entry and opened with stat stamps that spare the hashing of
unchanged files; each of those can be edited. Every case alters the cache or an input the way a
hand, a bad copy or a stale tool would, then prepares again: the store trained on is the one of
the records on disk (rebuilt, with one line naming what was wrong), never the altered one, and
records = accepted + quarantined. Each case runs under the corpus' time limit.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from sftlab.demo.tiny import build_tokenizer
from sftlab.prepare import PreparedStore, StoreError, prepare
from sftlab.tokens.templates import get_template

pytestmark = pytest.mark.usefixtures("time_limit")  # conftest.py: every case under HOSTILE_LIMIT_S


OPTIONS = {"max_length": 64, "last_turn_only": False}
CONTROL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(special_tokens=CONTROL)


def _rows(n: int, tag: str = "r") -> list[dict]:
    return [{"id": f"{tag}{i}", "messages": [{"role": "user", "content": f"question {tag} {i}"},
                                              {"role": "assistant", "content": f"answer {i} " + "x " * (i % 5)}]}
            for i in range(n)]


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _prepare(path: Path, tok, cache: Path) -> PreparedStore:
    return prepare([str(path)], tok, get_template("chatml", tok), options=OPTIONS, cache_dir=cache,
                   chunk_records=8)


def _counts(store: PreparedStore) -> tuple[int, int, int]:
    records = sum(f["records"] for f in store.files)
    accepted = sum(f["accepted"] for f in store.files)
    assert records == accepted + store.quarantined
    return records, accepted, len(store)


def _entry(cache: Path, store: PreparedStore) -> Path:
    (entry,) = [p for p in (cache / "index").glob("*.json")
                if not p.name.endswith(".stamps.json") and json.loads(p.read_text())["key"] == store.key]
    return entry


def _damage_reported(capsys, path: Path) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and str(path) in err and "rebuilding" in err, err
    return err


def test_a_folder_rewritten_with_its_times_set_back_is_read_again_from_its_files(tok, tmp_path):
    import datasets

    folder = tmp_path / "data"
    a = _write(folder / "a.jsonl", _rows(30))
    hf_cache = Path(datasets.config.HF_DATASETS_CACHE)
    before = sorted(hf_cache.rglob("*")) if hf_cache.exists() else []
    first = _prepare(folder, tok, tmp_path / "cache")
    assert _counts(first) == (30, 30, 30)
    st = a.stat()
    _write(a, _rows(45))
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(folder, ns=(folder.stat().st_atime_ns, folder.stat().st_mtime_ns))
    second = _prepare(folder, tok, tmp_path / "cache")
    assert second.hit is False and _counts(second) == (45, 45, 45)
    assert [f["path"] for f in second.files] == [str(a)]
    assert (sorted(hf_cache.rglob("*")) if hf_cache.exists() else []) == before  # no Arrow copy anywhere


def test_an_input_rewritten_with_its_stamp_written_into_the_cache_is_hashed_anyway(tok, tmp_path):
    data = _write(tmp_path / "a.jsonl", _rows(30))
    cache = tmp_path / "cache"
    first = _prepare(data, tok, cache)
    from sftlab.data.readers import input_digest

    stamps_path = cache / "index" / "inputs.stamps.json"
    stamps = json.loads(stamps_path.read_text()) if stamps_path.exists() else {}
    old_digest = input_digest(data)
    text = data.read_text().replace('"r1"', '"q1"', 1)  # same size, other records
    data.write_text(text)
    st = data.stat()
    from sftlab.prepare.key import stamp

    stamps[str(data.resolve())] = [stamp(st), old_digest]  # the stamp vouches for the old content
    stamps_path.parent.mkdir(parents=True, exist_ok=True)
    stamps_path.write_text(json.dumps(stamps))
    second = _prepare(data, tok, cache)
    assert second.hit is False and second.key != first.key


@pytest.mark.parametrize("how", ["copied_entry", "edited_key"])
def test_an_index_entry_that_names_another_store_is_not_followed(tok, tmp_path, how):
    data = _write(tmp_path / "a.jsonl", _rows(30))
    cache = tmp_path / "cache"
    old = _prepare(data, tok, cache)
    old_entry = _entry(cache, old)
    _write(data, _rows(45))
    new = _prepare(data, tok, cache)
    new_entry = _entry(cache, new)
    if how == "copied_entry":
        new_entry.write_bytes(old_entry.read_bytes())
    else:
        entry = json.loads(new_entry.read_text())
        new_entry.write_text(json.dumps({**entry, "key": old.key}))
    again = _prepare(data, tok, cache)
    assert again.key == new.key and _counts(again) == (45, 45, 45)
    assert PreparedStore(old.path).key == old.key  # the other store is left whole


def test_a_store_copied_over_another_is_not_its_keys_store(tok, tmp_path, capsys):
    cache = tmp_path / "cache"
    a = _prepare(_write(tmp_path / "a.jsonl", _rows(30)), tok, cache)
    b = _prepare(_write(tmp_path / "b.jsonl", _rows(45, "b")), tok, cache)
    shutil.rmtree(a.path)
    shutil.copytree(b.path, a.path)  # every file of b, under a's key
    with pytest.raises(StoreError, match="copied or moved"):
        PreparedStore(a.path)
    again = _prepare(tmp_path / "a.jsonl", tok, cache)
    assert again.key == a.key and _counts(again) == (30, 30, 30)
    capsys.readouterr()


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))


def test_a_chunk_altered_with_its_stamp_written_back_is_caught(tok, tmp_path, capsys):
    from sftlab.prepare.key import stamp, stamps_path

    data = _write(tmp_path / "a.jsonl", _rows(30))
    cache = tmp_path / "cache"
    store = _prepare(data, tok, cache)
    good = [store.ids(i).tolist() for i in range(len(store))]
    ids = store.path / "chunk-00001" / "ids.npy"
    _flip(ids)
    stamps = stamps_path(store.path)
    known = json.loads(stamps.read_text()) if stamps.exists() else {}
    known["chunk-00001/ids.npy"] = stamp(ids.stat())  # the stamp file says: unchanged since hashed
    stamps.write_text(json.dumps(known))
    again = _prepare(data, tok, cache)
    _damage_reported(capsys, ids)
    assert again.hit is False and [again.ids(i).tolist() for i in range(len(again))] == good


@pytest.mark.parametrize("edit", ["emptied", "one_file", "unlisted_chunk"])
def test_a_checksum_list_emptied_or_cut_short_is_damage(tok, tmp_path, capsys, edit):
    data = _write(tmp_path / "a.jsonl", _rows(30))
    cache = tmp_path / "cache"
    store = _prepare(data, tok, cache)
    meta_path = store.path / "store.json"
    meta = json.loads(meta_path.read_text())
    if edit == "emptied":
        meta["checksums"] = {}
    elif edit == "one_file":
        meta["checksums"] = {"stats.json": meta["checksums"]["stats.json"]}
    else:  # a chunk left out of the list and flipped: nothing would check it
        meta["checksums"] = {k: v for k, v in meta["checksums"].items() if not k.startswith("chunk-00002/")}
        _flip(store.path / "chunk-00002" / "weights.npy")
    meta_path.write_text(json.dumps(meta, indent=1))
    with pytest.raises(StoreError, match="checksums"):
        PreparedStore(store.path)
    again = _prepare(data, tok, cache)
    assert again.hit is False and again.key == store.key and _counts(again) == (30, 30, 30)
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and str(store.path) in err, err
    PreparedStore(again.path)  # whole again


def test_a_store_json_edited_in_place_is_not_trusted(tok, tmp_path, capsys):
    data = _write(tmp_path / "a.jsonl", _rows(30))
    cache = tmp_path / "cache"
    store = _prepare(data, tok, cache)
    meta_path = store.path / "store.json"
    meta = json.loads(meta_path.read_text())
    meta["parts"]["encoding"]["max_length"] = 4096  # built with other settings, says the edit
    meta_path.write_text(json.dumps(meta, indent=1))
    again = _prepare(data, tok, cache)
    assert again.hit is False and again.key == store.key and _counts(again) == (30, 30, 30)
    assert json.loads((again.path / "store.json").read_text())["parts"]["encoding"]["max_length"] == 64
    capsys.readouterr()


# -- a full or read-only cache ------------------------------------------------------------------------

def _prepare_cli(data: Path, cache: Path, tmp: Path, preexec=None):
    """``sftlab prepare`` of ``data`` into ``cache`` in a child process (``preexec`` limits it)."""
    import resource  # noqa: F401  (used by the callers' preexec)
    import subprocess
    import sys

    import yaml

    model = tmp / "model"
    if not model.exists():
        tok = build_tokenizer(special_tokens=CONTROL)
        tok.save_pretrained(model)
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"path": str(model)}, "template": "chatml",
                                   "data": {"train": [str(data)], "cache_dir": str(cache)},
                                   "encoding": {"max_length": 64}, "out": str(tmp / "run"),
                                   "log": {"progress": False}}))
    return subprocess.run([sys.executable, "-m", "sftlab", "prepare", str(cfg)], capture_output=True, text=True,
                          timeout=120, preexec_fn=preexec,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


def _one_error_line(proc, cache: Path) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1 and str(cache) in lines[0], proc.stderr
    return lines[0]


def _store_files(cache: Path) -> dict:
    return {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()} if cache.exists() else {}


def test_prepare_over_the_file_size_limit_is_one_line_and_leaves_the_cache_as_it_was(tmp_path):
    import resource
    import signal

    cache = tmp_path / "cache"
    _prepare(_write(tmp_path / "small.jsonl", _rows(3)), build_tokenizer(special_tokens=CONTROL), cache)
    before = _store_files(cache)  # a store already there
    data = _write(tmp_path / "a.jsonl", _rows(400))
    source = data.read_bytes()

    def small_disk():  # writes past 16 KiB fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))

    line = _one_error_line(_prepare_cli(data, cache, tmp_path, small_disk), cache)
    assert ("over the file size limit" in line or "only part of a write" in line) and "it needs about" in line
    assert "iB free there" in line
    assert _store_files(cache) == before  # nothing partial: no .build-*, no half index; the old store whole
    assert data.read_bytes() == source


@pytest.fixture
def small_fs(tmp_path):
    """A 192 KiB tmpfs (skipped where this process may not mount one)."""
    import subprocess

    where = tmp_path / "fs"
    where.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(where)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode(errors='replace').strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_prepare_on_a_full_filesystem_is_one_line_and_leaves_nothing(tmp_path, small_fs):
    cache = small_fs / "cache"
    data = _write(tmp_path / "a.jsonl", _rows(3000))
    line = _one_error_line(_prepare_cli(data, cache, tmp_path), cache)
    assert ("no space left on the device" in line or "only part of a write" in line) and "it needs about" in line
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # no chunk, spool or index left behind


def test_prepare_on_a_read_only_filesystem_is_one_line(tmp_path, small_fs):
    import subprocess

    (small_fs / "cache").mkdir()
    if subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True).returncode != 0:
        pytest.skip("cannot remount the tmpfs read-only here")
    cache = small_fs / "cache"
    data = _write(tmp_path / "a.jsonl", _rows(30))
    line = _one_error_line(_prepare_cli(data, cache, tmp_path), cache)
    assert "read-only filesystem" in line
