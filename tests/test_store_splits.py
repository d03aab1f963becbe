"""The prepared-data store for ``data.eval_split`` and for inputs that can be read only once: the
held-out records are those ``split_by_hash`` chose in memory, a FIFO is copied once while hashed
(the key is still its content), and preparation never holds the whole input's examples."""
from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

import pytest

from sftlab.data.conversation import Origin
from sftlab.data.formats import to_conversation
from sftlab.data.loading import load_files
from sftlab.data.split import heldout_key, split_by_hash
from sftlab.demo.tiny import build_tokenizer
from sftlab.tokens.encoding import encode_all
from sftlab.prepare import prepare
from sftlab.tokens.templates import get_template

OPTIONS = {"max_length": 64, "last_turn_only": False}
SHARE = 0.3
CONTROL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "</s>", "<|system|>", "<|user|>", "<|assistant|>")


def _held(row: dict) -> bool:
    return heldout_key(to_conversation(row, Origin("x", 1))) < SHARE


def _rows(make_record) -> list:
    rng = random.Random(0)
    rows = [make_record(i, rng) for i in range(120)]
    rows[30] = {"id": "bad", "messages": [{"role": "user", "content": "no answer"}]}          # load quarantine
    rows[70] = {**rows[12], "id": "copy-of-r12"}                                                # exact copy: same side
    train_first = next(i for i in range(120) if i not in (30, 70) and not _held(rows[i]))
    held_later = next(i for i in range(100, 120) if _held(rows[i]))
    rows[held_later] = {**rows[held_later], "id": rows[train_first]["id"]}  # later copy of an id, held-out side
    long = next(i for i in range(40, 60) if _held(rows[i]) and i % 3 == 2)  # too long, on the held-out side
    rows[long]["messages"][-1]["content"] = "word " * 200
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_record):
    d = tmp_path_factory.mktemp("split_data")
    (d / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(make_record)))
    held = [{**make_record(i, random.Random(i)), "id": f"h{i}"} for i in range(5)]
    (d / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    return d


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(special_tokens=CONTROL)


def _prepare(paths, tok, cache, **kw):
    kw = {"options": OPTIONS, "cache_dir": cache, "chunk_records": 16, **kw}
    return prepare([str(p) for p in paths], tok, get_template("chatml", tok), **kw)


def _tokens(store) -> list[list[int]]:
    return [store.ids(i).tolist() for i in range(len(store))]


def _quarantine(store) -> list[tuple]:
    return [(q["file"], q["line"], q["stage"], q["code"])
            for q in map(json.loads, store.quarantine_path.read_text().splitlines())]


@pytest.mark.parametrize("num_proc", [1, 2])
def test_eval_split_stores_hold_the_records_split_by_hash_in_memory(data, tok, tmp_path, num_proc):
    """The split the in-memory path made (load_files, split_by_hash, data.eval first): the same
    records on each side, encoded the same, and every record counted on exactly one side."""
    chatml = get_template("chatml", tok)
    report = load_files([data / "a.jsonl"])
    kept, split_off = split_by_hash(report.conversations, SHARE)
    held_convs = load_files([data / "held.jsonl"]).conversations + split_off
    assert 0 < len(split_off) < len(kept)
    train_ex, train_q = encode_all(kept, tok, chatml, **OPTIONS)
    held_ex, held_q = encode_all(held_convs, tok, chatml, **OPTIONS)
    assert held_q and {q["code"] for q in held_q} == {"too_long"}  # the held-out side quarantines too

    kw = {"eval_split": SHARE, "num_proc": num_proc}
    train = _prepare([data / "a.jsonl"], tok, tmp_path, sides=["train"], **kw)
    held = _prepare([data / "held.jsonl", data / "a.jsonl"], tok, tmp_path, sides=[None, "heldout"], **kw)
    assert _tokens(train) == [e.input_ids.tolist() for e in train_ex]
    assert _tokens(held) == [e.input_ids.tolist() for e in held_ex]
    assert train.slices == [e.slice for e in train_ex] and held.slices == [e.slice for e in held_ex]
    # the later copy of an id is quarantined by training's store, as load_files does, wherever it hashed
    expected_train_q = [(q.file, q.line, "load", q.code) for q in report.quarantined] + \
        [(q["file"], q["line"], "encode", q["code"]) for q in train_q]
    assert _quarantine(train) == expected_train_q
    assert {q[3] for q in expected_train_q} == {"no_assistant", "duplicate_id", "too_long"}
    assert _quarantine(held) == [(q["file"], q["line"], "encode", q["code"]) for q in held_q]
    # nothing lost: each record of a.jsonl counted once, on its side, records = accepted + quarantined
    (a_train,) = train.files
    held_files = {f["path"]: f for f in held.files}
    a_held = held_files[str(data / "a.jsonl")]
    assert a_train["records"] + a_held["records"] == 120
    assert a_held["records"] == len(split_off) and held_files[str(data / "held.jsonl")]["records"] == 5
    for f in (a_train, a_held):
        assert f["records"] == f["accepted"] + f["quarantined"]
    assert held.meta["split"]["records"] == [5, len(split_off)]
    # the two stores are keyed together: the share and the side are part of the key
    assert train.key != held.key
    again = _prepare([data / "a.jsonl"], tok, tmp_path, sides=["train"], eval_split=0.2)
    assert again.hit is False and again.key != train.key
    assert _prepare([data / "a.jsonl"], tok, tmp_path, sides=["train"], **kw).hit is True


def test_training_data_with_eval_split_reads_both_stores(data, tok, tmp_path, monkeypatch):
    """``prepare_data`` with ``data.eval_split`` neither loads the whole input nor encodes it in one
    piece: every split is a prepared store, encoded a chunk at a time."""
    import sftlab.data.loading as loading
    import sftlab.tokens.encoding as encoding
    from sftlab.prepare import PreparedStore
    from sftlab.train.config import TrainConfig
    from sftlab.train.data import prepare_data

    sizes = []
    real = encoding.encode_all

    def counted(convs, *a, **kw):
        sizes.append(len(convs))
        return real(convs, *a, **kw)

    monkeypatch.setattr(encoding, "encode_all", counted)
    monkeypatch.setattr(loading, "load_files", lambda *a, **k: pytest.fail("the whole input was loaded"))
    cfg = TrainConfig.model_validate({
        "model": {"path": str(tmp_path / "unused")}, "template": "chatml", "out": str(tmp_path / "run"),
        "data": {"train": [str(data / "a.jsonl")], "eval": [str(data / "held.jsonl")], "eval_split": SHARE,
                 "cache_dir": str(tmp_path / "cache"), "max_quarantined_share": 1.0},
        "encoding": {"max_length": OPTIONS["max_length"]}, "log": {"progress": False, "trackers": []}})
    run = tmp_path / "run"
    td = prepare_data(cfg, tok, get_template("chatml", tok), run, write=True)
    assert isinstance(td.table, PreparedStore) and isinstance(td.eval_table, PreparedStore)
    assert sizes and max(sizes) <= 8192 and len(sizes) >= 2  # one chunk of records per call, per side
    split_off = split_by_hash(_convs(data / "a.jsonl"), SHARE)[1]
    assert td.splits["heldout"]["from_train"] == {"eval_split": SHARE, "records": len(split_off)}
    assert td.records == 125
    quarantine = [json.loads(x) for x in (run / "data" / "quarantine.jsonl").read_text().splitlines()]
    assert {(q["split"], q["code"]) for q in quarantine} == {
        ("train", "no_assistant"), ("train", "duplicate_id"), ("train", "too_long"), ("heldout", "too_long")}
    stats = json.loads((run / "data" / "stats.json").read_text())
    assert stats["leakage"]["heldout_records"] == 5 + len(split_off)  # every held-out record accepted at load
    assert stats["leakage"]["exact"]["records"] == 1  # h0 is r0's conversation


def _convs(path: Path) -> list:
    return load_files([path]).conversations  # the function itself, also where a test patches the module's


def _feed(fifo: Path, data: bytes) -> threading.Thread:
    def write():
        with open(fifo, "wb") as f:
            f.write(data)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


def test_a_fifo_is_copied_once_and_a_second_run_of_the_same_content_hits_the_cache(data, tok, tmp_path):
    content = (data / "a.jsonl").read_bytes()
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    cache = tmp_path / "cache"
    writer = _feed(fifo, content)
    first = _prepare([fifo], tok, cache, num_proc=2)
    writer.join()
    assert first.hit is False
    # records are named by the FIFO, never by the copy; the copy is gone afterwards
    assert [f["path"] for f in first.files] == [str(fifo)]
    assert all(q[0] == str(fifo) for q in _quarantine(first))
    assert not list(cache.glob(".spool-*"))
    # the same bytes through the FIFO again: found by content, nothing encoded
    writer = _feed(fifo, content)
    second = _prepare([fifo], tok, cache)
    writer.join()
    assert second.hit is True and second.key == first.key
    # and a plain file of the same records gives the same examples
    plain = _prepare([data / "a.jsonl"], tok, cache)
    assert _tokens(plain) == _tokens(first)
    # other bytes: a new store
    writer = _feed(fifo, content.replace(b"question 5.", b"question five."))
    third = _prepare([fifo], tok, cache)
    writer.join()
    assert third.hit is False and third.key != first.key


def test_a_fifo_with_eval_split_is_read_once_for_both_sides(data, tok, tmp_path):
    """Both stores of ``data.eval_split`` read the one copy of a FIFO (a second read of the FIFO
    itself would wait for a writer that never comes)."""
    from sftlab.train.config import TrainConfig
    from sftlab.train.data import prepare_stores

    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    cfg = TrainConfig.model_validate({
        "model": {"path": str(tmp_path / "unused")}, "template": "chatml", "out": str(tmp_path / "run"),
        "data": {"train": [str(fifo)], "eval_split": SHARE, "cache_dir": str(tmp_path / "cache")},
        "encoding": {"max_length": OPTIONS["max_length"]}, "log": {"progress": False, "trackers": []}})
    writer = _feed(fifo, (data / "a.jsonl").read_bytes())
    stores = prepare_stores(cfg, tok, get_template("chatml", tok))
    writer.join()
    kept, split_off = split_by_hash(_convs(data / "a.jsonl"), SHARE)
    assert stores["heldout"].files[0]["records"] == len(split_off)
    assert stores["train"].files[0]["records"] + len(split_off) == 120


def test_a_chunk_is_encoded_and_written_from_its_own_records_only(data, tok, tmp_path, monkeypatch):
    """Bounded memory: the chunk writer gets one chunk's examples at a time, and the records of the
    next chunk are not read before the chunk before them is written."""
    from sftlab.prepare import build, chunks

    events = []
    real_write = chunks.write_examples

    def write(out, examples, records):
        events.append(("write", len(examples), min(records), max(records)))
        return real_write(out, examples, records)

    real_plan = build.plan_chunks

    def plan(*a, **kw):
        for task, items in real_plan(*a, **kw):
            events.append(("read", task.count, task.first_record, task.first_record + task.count - 1))
            yield task, items

    monkeypatch.setattr(chunks, "write_examples", write)
    monkeypatch.setattr(build, "plan_chunks", plan)
    _prepare([data / "a.jsonl"], tok, tmp_path, chunk_records=16)
    assert [e[0] for e in events] == ["read", "write"] * 8  # 120 records: 8 chunks, read then written
    for (_, n, a, b), (_, m, lo, hi) in zip(events[::2], events[1::2]):
        assert n <= 16 and m <= 16 and a <= lo <= hi <= b


def test_a_fifo_copy_has_the_digest_of_a_file_of_the_same_bytes(data, tmp_path):
    """The raw digest a stream's copy is indexed by is the one ``input_digest`` gives a file of
    those bytes, so a store found for one is found for the other."""
    from sftlab.data.readers import input_digest
    from sftlab.prepare import Spool

    content = (data / "a.jsonl").read_bytes()
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    writer = _feed(fifo, content)
    with Spool(tmp_path / "cache") as spool:
        copy, digest = spool.read(fifo)
        writer.join()
        assert copy.read_bytes() == content
        assert digest == input_digest(data / "a.jsonl") == input_digest(copy)


def test_a_held_out_split_that_holds_nothing_is_said_and_refused_for_early_stopping(tok, tmp_path, capsys):
    """``data.eval_split: 0.02`` of LLaMA-Factory's 30 Alpaca demo records holds out none of them
    (each record's hash decides): the run is told it has no validation loss, and early stopping,
    which needs one, is refused before training."""
    from sftlab.errors import UsageError
    from sftlab.train.config import TrainConfig
    from sftlab.train.data import prepare_data

    demo = Path(__file__).parent / "data" / "public" / "llamafactory" / "alpaca_en_demo.json"
    records = json.loads(demo.read_text())
    assert not any(_held_share(r, 0.02) for r in records)  # the premise: no record below the share

    def config(**eval_section):
        return TrainConfig.model_validate({
            "model": {"path": str(tmp_path / "unused")}, "template": "chatml", "out": str(tmp_path / "run"),
            "data": {"train": [str(demo)], "eval_split": 0.02, "cache_dir": str(tmp_path / "cache"),
                     "max_quarantined_share": 1.0},
            "encoding": {"max_length": 512}, "eval": eval_section, "log": {"progress": False, "trackers": []}})

    prepare_data(config(), tok, get_template("chatml", tok), tmp_path / "run", write=True)
    err = capsys.readouterr().err
    assert ("sftlab train: the run has no validation loss: no held-out example (data.eval_split=0.02 of 30 "
            "training records gave 0 records); raise data.eval_split or give data.eval") in err
    with pytest.raises(UsageError, match=r"eval\.early_stopping\.patience=2 needs a validation loss: no held-out"):
        prepare_data(config(early_stopping={"patience": 2}), tok, get_template("chatml", tok), tmp_path / "run2",
                     write=True)


def _held_share(record: dict, share: float) -> bool:
    conv = to_conversation(record, Origin("x", 1), None)
    return split_by_hash([conv], share)[1] != []
