"""Hostile folder inputs: a folder is read file by file with sftlab's own readers, or refused.

A folder of data files (the layout of a dataset repository: JSON Lines, JSON, Parquet, a README)
is not handed to ``datasets.load_dataset``, which caches by modification time, guesses splits
from file names, reads one format per folder and drops the rest, and writes an Arrow copy under
the user's cache. Every data file is read as it would be alone, record by record (a bad record is
quarantined, not the folder refused), counted under its own name; a file sftlab does not read is
a one-line refusal naming it. A saved ``datasets`` directory is still read with ``load_from_disk``.
Every case runs under the corpus' time limit; inputs stay byte-identical and nothing is written
outside the output asked for.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftlab.cli import main
from sftlab.data.readers import check_readable
from sftlab.errors import UsageError

pytestmark = pytest.mark.usefixtures("time_limit")  # conftest.py: every case under HOSTILE_LIMIT_S


def _row(i, rid=None) -> dict:
    return {"id": f"r{i}" if rid is None else rid,
            "messages": [{"role": "user", "content": f"what is {i} + 1?"},
                         {"role": "assistant", "content": f"It is {i + 1}."}]}


def _lines(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def hf_cache():
    """The user's datasets cache, to show it is not written to."""
    import datasets

    root = Path(datasets.config.HF_DATASETS_CACHE)
    before = sorted(root.rglob("*")) if root.exists() else []
    yield
    assert (sorted(root.rglob("*")) if root.exists() else []) == before


def _validate(folder: Path, tmp: Path, capsys) -> tuple[int, dict, list]:
    q = tmp / "out" / "q.jsonl"
    before = _snapshot(folder)
    code = main(["validate", str(folder), "--json", "--quarantine", str(q)])
    out = json.loads(capsys.readouterr().out)
    assert _snapshot(folder) == before  # inputs byte-identical, nothing written beside them
    assert out["records"] == out["accepted"] + out["quarantined"]
    for f in out["files"]:
        assert f["records"] == f["accepted"] + f["quarantined"]
    return code, out, [json.loads(x) for x in q.read_text().splitlines()]


def test_one_malformed_line_among_fifty_quarantines_that_line_not_the_folder(tmp_path, capsys, hf_cache):
    folder = tmp_path / "ds"
    rows = [json.dumps(_row(i)) for i in range(50)]
    rows.insert(17, '{"id": "broken", "messages": [{"role": "user", "content": "unterminated')
    _lines(folder / "data" / "train.json", rows)  # JSON Lines under a .json name, as hubs ship them
    _lines(folder / "data" / "more.json", [_row(100 + i) for i in range(5)])
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# a dataset card\n")
    code, out, quarantined = _validate(folder, tmp_path, capsys)
    assert code == 1 and (out["records"], out["accepted"], out["quarantined"]) == (56, 55, 1)
    assert [(q["file"], q["line"], q["code"]) for q in quarantined] == [(str(folder / "data" / "train.json"), 18, "bad_json")]


def test_files_that_type_the_id_differently_are_each_read(tmp_path, capsys, hf_cache):
    folder = tmp_path / "ds"
    _lines(folder / "a.jsonl", [_row(i, rid=i) for i in range(10)])            # integer ids
    _lines(folder / "b.jsonl", [_row(i, rid=f"b{i}") for i in range(10)])      # string ids
    _lines(folder / "c.jsonl", [{**_row(i), "id": None} for i in range(3)])                # no id
    code, out, _ = _validate(folder, tmp_path, capsys)
    assert code == 0 and out["accepted"] == 23
    assert [(Path(f["path"]).name, f["records"]) for f in out["files"]] == [("a.jsonl", 10), ("b.jsonl", 10), ("c.jsonl", 3)]


def test_files_of_several_formats_are_all_read_and_counted(tmp_path, capsys, hf_cache):

    folder = tmp_path / "ds"
    _lines(folder / "a.jsonl", [_row(i) for i in range(20)])
    pq.write_table(pa.Table.from_pylist([_row(99)]), folder / "b.parquet")
    (folder / "c.json").write_text(json.dumps([_row(200), _row(201)], indent=1))  # a JSON array
    code, out, _ = _validate(folder, tmp_path, capsys)
    assert code == 0 and out["records"] == 23
    assert [(Path(f["path"]).name, f["records"]) for f in out["files"]] == [("a.jsonl", 20), ("b.parquet", 1), ("c.json", 2)]


def test_a_folder_whose_files_name_several_splits_is_refused_naming_them(tmp_path, capsys, hf_cache):
    """A hub snapshot's folder (``data/train-*.parquet`` beside ``data/test-*.parquet``) or
    ``train.jsonl`` beside ``validation.jsonl``: read whole it would train the held-out split, so it
    is refused naming each split's files; one split's files, or names that only contain a split
    word (``retrained.jsonl``), are read as they are."""
    folder = tmp_path / "ds"
    _lines(folder / "train.jsonl", [_row(i) for i in range(20)])
    _lines(folder / "validation.jsonl", [_row(100 + i) for i in range(5)])
    _lines(folder / "notes.jsonl", [_row(200 + i) for i in range(3)])
    with pytest.raises(UsageError, match=r"ds: holds the files of several splits by their names \(train: train\.jsonl; "
                                         r"validation: validation\.jsonl\); .*data\.eval"):
        check_readable(folder)
    (folder / "validation.jsonl").unlink()
    _lines(folder / "retrained.jsonl", [_row(300)])
    code, out, _ = _validate(folder, tmp_path, capsys)
    assert code == 0 and out["records"] == 24
    hub = tmp_path / "snapshot"
    for split in ("train", "test"):
        pq.write_table(pa.Table.from_pylist([_row(1)]), _parent(hub / "data" / f"{split}-00000-of-00001.parquet"))
    (hub / "README.md").write_text("---\nconfigs: ...\n---\n")
    with pytest.raises(UsageError, match=r"test: data/test-00000-of-00001\.parquet; train: data/train-00000-of-00001\.parquet"):
        check_readable(hub)


def _parent(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_a_file_rewritten_with_its_time_set_back_is_read_as_it_is_now(tmp_path, capsys, hf_cache):
    folder = tmp_path / "ds"
    a = _lines(folder / "a.jsonl", [_row(i) for i in range(30)])
    assert _validate(folder, tmp_path, capsys)[1]["records"] == 30
    st = a.stat()
    _lines(a, [_row(i) for i in range(45)])
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _validate(folder, tmp_path, capsys)[1]["records"] == 45


@pytest.mark.parametrize("kind", ["zst", "txt", "arrow", "fifo", "linked_folder", "dangling_link"])
def test_a_file_sftlab_does_not_read_is_a_reason_naming_it(hostile, tmp_path, capsys, kind):
    folder = tmp_path / "ds"
    _lines(folder / "a.jsonl", [_row(i) for i in range(3)])
    odd = folder / "sub" / f"extra.{kind}"
    odd.parent.mkdir()
    if kind == "fifo":
        os.mkfifo(odd)  # nobody writes to it: reading it would hang
    elif kind == "linked_folder":  # its files would be skipped without a word (a loop, here)
        odd.symlink_to(folder, target_is_directory=True)
    elif kind == "dangling_link":
        odd.symlink_to(tmp_path / "gone.jsonl")
    else:
        odd.write_text("id,text\n1,hello\n")
    err = hostile.refusal(capsys, main(["validate", str(folder), "--quarantine", str(tmp_path / "q.jsonl")]))
    assert str(folder) in err and f"sub/extra.{kind}" in err
    assert not (tmp_path / "q.jsonl").exists()


def test_hidden_files_and_the_dataset_card_are_skipped(tmp_path, capsys, hf_cache):
    folder = tmp_path / "ds"
    _lines(folder / "data" / "train-00000-of-00001.jsonl", [_row(i) for i in range(4)])
    (folder / "README.md").write_text("# card\n")
    (folder / "LICENSE").write_text("MIT\n")
    (folder / ".gitattributes").write_text("*.parquet filter=lfs\n")
    (folder / "dataset_infos.json").write_text(json.dumps({"default": {"features": {}}}))
    _lines(folder / ".cache" / "x.jsonl", ["not json"])
    code, out, _ = _validate(folder, tmp_path, capsys)
    assert code == 0 and out["records"] == 4 and len(out["files"]) == 1


def test_a_saved_dataset_is_still_read_with_load_from_disk_and_copies_nothing(tmp_path, capsys, hf_cache):
    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_list([_row(i) for i in range(6)]).save_to_disk(str(saved))
    code, out, _ = _validate(saved, tmp_path, capsys)
    assert code == 0 and out["records"] == 6 and out["files"][0]["path"] == str(saved)
