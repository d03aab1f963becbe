"""The prepared-data store (DESIGN invariant 13): keyed by content, never stale, checked when
opened, the same bit for bit from any number of worker processes, and equal to encoding in memory."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from sftlab.data.loading import load_files
from sftlab.data.stats import compute_stats
from sftlab.demo.tiny import build_tokenizer
from sftlab.tokens.encoding import encode_all
from sftlab.prepare import PreparedStore, StoreError, prepare
from sftlab.tokens.templates import get_template

OPTIONS = {"max_length": 64, "last_turn_only": False}


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_record):
    d = tmp_path_factory.mktemp("store_data")
    rng = random.Random(0)
    rows = [make_record(i, rng) for i in range(150)]
    rows[40] = {"id": "bad", "messages": [{"role": "user", "content": "no answer"}]}     # load quarantine
    rows[77] = dict(rows[10])                                                            # duplicate id (r10)
    rows[90] = {**rows[12], "id": "copy-of-r12"}                                         # exact duplicate text
    lines = [json.dumps(r) for r in rows]
    lines.insert(20, "")                                                                 # a blank line
    (d / "a.jsonl").write_text("\n".join(lines) + "\n")
    held = [{**make_record(i, random.Random(i)), "id": f"h{i}"} for i in range(6)] + [{**rows[5], "id": "leak"}]
    (d / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    return d


CONTROL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "</s>", "<|system|>", "<|user|>", "<|assistant|>")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(special_tokens=CONTROL)


def _prepare(paths, tok, cache, template="chatml", **kw):
    kw = {"options": OPTIONS, "cache_dir": cache, "chunk_records": 32, **kw}
    return prepare([str(p) for p in paths], tok, get_template(template, tok), **kw)


def _files(store: PreparedStore) -> dict[str, bytes]:
    return {str(p.relative_to(store.path)): p.read_bytes() for p in sorted(store.path.rglob("*"))
            if p.is_file() and p.name != "store.json"}


def test_store_holds_what_encoding_in_memory_gives(data, tok, tmp_path):
    store = _prepare([data / "a.jsonl"], tok, tmp_path)
    report = load_files([data / "a.jsonl"])
    examples, enc_q = encode_all(report.conversations, tok, get_template("chatml", tok), **OPTIONS)
    assert store.hit is False and len(store) == len(examples)
    for i, ex in enumerate(examples):
        assert store.ids(i).tolist() == ex.input_ids.tolist()
        assert store.weights(i).tolist() == ex.loss_weights.tolist()
    assert store.lengths.tolist() == [len(e) for e in examples]
    assert store.trained.tolist() == [e.trained_tokens for e in examples]
    assert store.slices == [e.slice for e in examples]
    # nothing lost: records = accepted + quarantined, the quarantine in load_files' order, then encode's
    (f,) = store.files
    assert f["records"] == 150 == f["accepted"] + f["quarantined"] and f["accepted"] == len(examples)
    quarantine = [json.loads(x) for x in store.quarantine_path.read_text().splitlines()]
    expected = [{"stage": "load", **e.to_dict()} for e in report.quarantined] + enc_q
    assert [(q["line"], q["stage"], q["reason"]) for q in quarantine] == \
           [(q["line"], q["stage"], q["reason"]) for q in expected]
    assert any("duplicate id 'r10'" in q["reason"] for q in quarantine)
    # statistics: compute_stats' numbers, from the compact chunk summaries
    from sftlab.data.stats import EncodedLengths

    full, mine = compute_stats(report.conversations, encoded=EncodedLengths(examples, len(enc_q), "chatml")), store.stats
    for key in ("records", "counts", "tasks", "turns", "lengths", "tools", "refusals"):
        assert mine[key] == full[key], key
    assert mine["duplicates"]["exact"] == full["duplicates"]["exact"]
    assert mine["duplicates"]["exact"]["records"] == 1


def test_an_unchanged_input_reuses_the_store_and_every_part_of_the_key_rebuilds(data, tok, tmp_path):
    first = _prepare([data / "a.jsonl"], tok, tmp_path)
    again = _prepare([data / "a.jsonl"], tok, tmp_path)
    assert again.hit is True and again.key == first.key
    keys = {first.key}

    def changed(store):
        assert store.hit is False and store.key not in keys
        keys.add(store.key)

    edited = tmp_path / "edited.jsonl"  # a record's text
    edited.write_text((data / "a.jsonl").read_text().replace("question 3.0", "question 3.0!"))
    changed(_prepare([edited], tok, tmp_path))
    changed(_prepare([data / "a.jsonl"], tok, tmp_path, template="zephyr"))           # template source
    changed(_prepare([data / "a.jsonl"], tok, tmp_path, options={**OPTIONS, "max_length": 48}))
    changed(_prepare([data / "a.jsonl"], tok, tmp_path, options={**OPTIONS, "last_turn_only": True}))
    other_tok = build_tokenizer(texts=["an extra corpus line changes the merges"] * 50, special_tokens=CONTROL)  # tokenizer files
    changed(_prepare([data / "a.jsonl"], other_tok, tmp_path))
    import sftlab
    from unittest import mock

    with mock.patch.object(sftlab, "__version__", "9.9.9"):                               # sftlab version
        changed(_prepare([data / "a.jsonl"], tok, tmp_path))
    from sftlab.data.policy import load_policy

    policy = load_policy(Path(sftlab.__file__).parent / "data" / "policy_example.yaml")
    changed(_prepare([data / "a.jsonl"], tok, tmp_path, policy=policy))                  # policy
    # the same records written differently (same lines): read again, and found to be the same store
    own = tmp_path / "own.jsonl"
    own.write_bytes((data / "a.jsonl").read_bytes())
    before = _prepare([own], tok, tmp_path)
    own.write_text("".join((json.dumps(json.loads(x), separators=(" ,", " : ")) if x.strip() else x) + "\n"
                           for x in (data / "a.jsonl").read_text().splitlines()))
    after = _prepare([own], tok, tmp_path)
    assert after.hit is False and after.key == before.key and after.path == before.path
    assert _prepare([own], tok, tmp_path).hit is True  # and the new bytes now find it directly


def test_a_damaged_store_is_detected_reported_and_rebuilt(data, tok, tmp_path, capsys):
    store = _prepare([data / "a.jsonl"], tok, tmp_path)
    good = _files(store)
    ids = store.path / "chunk-00001" / "ids.npy"
    ids.write_bytes(ids.read_bytes()[:-8])  # truncated
    with pytest.raises(StoreError, match="truncated"):
        PreparedStore(store.path)
    rebuilt = _prepare([data / "a.jsonl"], tok, tmp_path)
    assert rebuilt.hit is False and "is damaged" in capsys.readouterr().err
    assert _files(rebuilt) == good
    weights = rebuilt.path / "chunk-00000" / "weights.npy"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1  # altered, same size
    weights.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="altered"):
        PreparedStore(rebuilt.path)
    assert _prepare([data / "a.jsonl"], tok, tmp_path).hit is False and _files(rebuilt) == good


def test_an_unchanged_store_is_opened_without_hashing_and_a_changed_file_still_is(data, tok, tmp_path,
                                                                                 monkeypatch):
    import os

    from sftlab import fingerprints
    from sftlab.prepare import key as store_key

    monkeypatch.setattr(store_key, "RACY_NS", 0)  # the files count as settled at once
    monkeypatch.setattr(store_key, "SAMPLE_BYTES", 0)  # as for a store and an input far larger than the sample
    hashed = []
    real = fingerprints.file_sha256  # every file the store hashes goes through it
    monkeypatch.setattr(fingerprints, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    store = _prepare([data / "a.jsonl"], tok, tmp_path)
    assert store.hit is False
    hashed.clear()
    again = _prepare([data / "a.jsonl"], tok, tmp_path)
    assert again.hit is True and hashed == ["store.json"]  # its index entry's binding; no chunk, not the input
    hashed.clear()
    # Altered in place, same size, modification time set back: the ctime still moves.
    weights = store.path / "chunk-00000" / "weights.npy"
    st = weights.stat()
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(StoreError, match="altered"):
        PreparedStore(store.path)
    assert hashed == ["weights.npy"]  # only the changed file was read
    # The input rewritten with other records of the same size, time set back: a new digest.
    src = data / "a.jsonl"
    copy = tmp_path / "input.jsonl"
    copy.write_bytes(src.read_bytes())
    first = _prepare([copy], tok, tmp_path / "c2")
    st = copy.stat()
    text = copy.read_text().replace('"r1"', '"q1"', 1)
    assert len(text) == st.st_size and text != copy.read_text()
    copy.write_text(text)
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = _prepare([copy], tok, tmp_path / "c2")
    assert second.hit is False and second.key != first.key


def test_worker_processes_write_the_same_store_bit_for_bit(data, tok, tmp_path):
    one = _prepare([data / "a.jsonl", data / "held.jsonl"], tok, tmp_path / "one", num_proc=1)
    three = _prepare([data / "a.jsonl", data / "held.jsonl"], tok, tmp_path / "three", num_proc=3)
    assert one.key == three.key and len(one.meta["chunks"]) >= 5
    assert _files(one) == _files(three)
    strip = lambda m: {k: v for k, v in m.items() if k != "build"}  # noqa: E731  (timings)
    assert strip(one.meta) == strip(three.meta)


def _arrow_memory_left_dirty(sizes, n: int = 64) -> list:
    """pyarrow's memory pool as a process that did other work may leave it: of ``n`` buffers of
    each size, filled with bytes that are not UTF-8 (0xFF), every other one is freed and the rest
    are returned (keep them alive), so new buffers of these sizes land beside and in used memory."""
    import numpy as np
    import pyarrow as pa

    kept = []
    for size in sizes:
        buffers = [pa.allocate_buffer(size) for _ in range(n)]
        for b in buffers:
            np.frombuffer(b, np.uint8)[:] = 0xFF
        kept += buffers[1::2]
    return kept


def test_a_store_is_the_same_whatever_the_process_did_before(data, tok, tmp_path, make_record):
    """Two other stores built first in this process, and memory left dirty, then one input with 1
    and with 2 workers: the same files bit for bit, and every planted copy of a record found as an
    exact duplicate. Every record ends in whitespace (``make_record``'s answers do) and every chunk's
    texts fill whole 64-byte blocks (pyarrow's buffers are padded with zeros to 64 bytes): each
    chunk's last text ends where pyarrow's whitespace split read past the string into memory that
    earlier work had used (``sftlab.data.dedup.split_words``). Each chunk but the first ends with a
    copy of a record of the chunk before."""
    rng = random.Random(2)
    rows = [make_record(i, rng) for i in range(160)]
    copies = range(15, 160, 8)
    for i in copies:
        rows[i] = {**rows[i - 11], "id": f"copy-{i}"}
    sizes = [sum(len(m["content"].encode()) for r in rows[k:k + 8] for m in r["messages"]) for k in range(0, 160, 8)]
    size = -(-max(sizes) // 64) * 64
    for k, n in zip(range(0, 160, 8), sizes):  # pad each chunk's first message: every chunk's texts, `size` bytes
        head = rows[k]["messages"][0]
        rows[k] = {**rows[k], "messages": [{**head, "content": head["content"] + "y" * (size - n)},
                                           *rows[k]["messages"][1:]]}
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _prepare([data / "a.jsonl"], tok, tmp_path / "a")
    _prepare([data / "a.jsonl", data / "held.jsonl"], tok, tmp_path / "b", num_proc=2)
    kept = _arrow_memory_left_dirty(range(size, size + 1024, 64))
    one, two = (_prepare([tmp_path / "c.jsonl"], tok, tmp_path / f"c{n}", chunk_records=8, num_proc=n)
                for n in (1, 2))
    del kept
    assert one.key == two.key and len(one.meta["chunks"]) == 20
    assert _files(one) == _files(two)
    for store in (one, two):
        assert store.stats["duplicates"]["exact"]["records"] == len(copies)


def test_leakage_and_near_duplicates_from_the_summaries(data, tok, tmp_path):
    from sftlab.data.chunk_stats import with_leakage

    train = _prepare([data / "a.jsonl"], tok, tmp_path)
    held = _prepare([data / "held.jsonl"], tok, tmp_path)
    stats = with_leakage(train.stats, train.summaries(), held.summaries())
    full = compute_stats(load_files([data / "a.jsonl"]).conversations, load_files([data / "held.jsonl"]).conversations)
    assert stats["leakage"]["exact"] == full["leakage"]["exact"]
    assert stats["leakage"]["exact"]["records"] >= 1 and not stats["passed"]


def test_a_folder_of_data_files_is_read_file_by_file(data, tok, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    rows = [json.loads(x) for x in (data / "held.jsonl").read_text().splitlines()]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = _prepare([folder], tok, tmp_path)
    direct = _prepare([data / "held.jsonl"], tok, tmp_path)
    assert len(store) == len(direct) > 0 and store.meta["records"] == len(rows)
    assert all(store.ids(i).tolist() == direct.ids(i).tolist() for i in range(len(store)))
    assert store.files[0]["path"] == str(folder / "train.jsonl")  # a file name is no split name


def test_jsonl_chunk_offsets_give_the_items_the_stream_reader_gives(tmp_path):
    """Workers read their chunks from byte offsets found by scanning lines unparsed: every run
    starts exactly where the streamed reader's items do, blank and broken lines included."""
    from itertools import islice

    from sftlab.data.readers import jsonl_starts, read_jsonl_at, sources

    good = lambda i: json.dumps({"messages": [{"role": "user", "content": f"q{i}"}]}).encode()  # noqa: E731
    lines = [b"\xef\xbb\xbf" + good(0), b"", b"  \t", "\u3000\u00a0".encode(), b"\x0b\x0c", good(1),
             b"{not json", b"\xff\xfe broken utf-8", b"x" * 300, good(2), "\u2028".encode(), good(3),
             b"[1, 2]", good(4), b"\r", good(5)]
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    items = [item for _, source in sources(p, 200) for item in source]
    assert len(items) == 10  # BOM record, bad JSON, bad UTF-8, too large, [1, 2], and good ones
    for every in (1, 2, 3, 4, 10, 11):
        starts = jsonl_starts(p, 200, every)
        assert sum(n for _, _, n in starts) == len(items)
        k = 0
        for offset, line, n in starts:
            got = list(islice(read_jsonl_at(p, offset, line, 200), n))
            assert [(x[0], repr(x[1]), repr(x[2])) for x in got] == \
                   [(x[0], repr(x[1]), repr(x[2])) for x in items[k:k + n]]
            k += n
    pretty = tmp_path / "one.json"
    pretty.write_text('\n{\n  "messages": []\n}\n')
    assert jsonl_starts(pretty, 200, 4) is None  # one pretty-printed object: read as a stream
    array = tmp_path / "array.json"
    array.write_text('[\n{"messages": []},\n{"messages": []}\n]\n')
    assert jsonl_starts(array, 200, 4) is None
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n \n")
    assert jsonl_starts(empty, 200, 4) == []


def test_chunk_words_are_the_words_of_the_joined_texts():
    """The store's statistics split each message once; the words of the conversation and prompt
    texts come out as ``signer.words`` gives them for ``conversation_text``/``prompt_text``."""
    import numpy as np

    from sftlab.data.chunk_stats import _signer_and_ranges, _text_words
    from sftlab.data.conversation import Conversation, Message
    from sftlab.data.stats import conversation_text, prompt_text

    contents = ["Hello World", "", "  padded\tboth  ", "ΟΔΟΣ ΣΟΦΟΣ", "中文没有空格 mixed 日本語テキスト", "\u3000wide\u3000",
                "İstanbul ǅ", "one", "a\nb\r\nc", "x" * 3, "\u2028line sep\u0085next", "ÉCOLE"]
    convs = []
    for i in range(40):
        msgs = [Message("system", contents[i % len(contents)])] if i % 3 == 0 else []
        for t in range(1 + i % 3):
            msgs += [Message("user", contents[(i + t) % len(contents)]),
                     Message("assistant", contents[(i * 7 + t) % len(contents)])]
        if i % 5 == 0:
            msgs.append(Message("user", contents[(i + 5) % len(contents)]))
        convs.append(Conversation(tuple(msgs)))
    signer, _ = _signer_and_ranges()
    got = _text_words(signer, convs)
    for name, text in (("conv", conversation_text), ("prompt", prompt_text)):
        words, offsets = signer.words([text(c) for c in convs])
        assert np.array_equal(got[name][0], words) and np.array_equal(got[name][1], offsets), name


def test_chunk_counts_are_the_counts_of_stats(tmp_path):
    """The store's statistics count words, turns, calls and reasoning in one pass over the
    messages; each count equals the per-record definitions ``stats.word_lengths`` and ``stats.tool_counts``."""
    import numpy as np

    from sftlab.data.chunk_stats import summarise
    from sftlab.data.conversation import Conversation, Message, ToolCall
    from sftlab.data.stats import tool_counts, word_lengths

    # ASCII text is counted from the statistics' own split: every ASCII whitespace character is here
    texts = ["two words", "", "  padded\tboth  ", "中文 mixed", "a\nb c", "\u3000wide\u3000x",
             "".join(f"w{c}{chr(c)}" for c in range(33)) + "W\x7fX", "\x1c\x1d", "x\x1ey\x1fz\x0bq\x0cr\rs",
             "ΟΔΟΣ \u2028 ok\u0085fin\u00a0nb"]
    convs = []
    for i in range(40):
        msgs = [Message("system", texts[i % 10])] if i % 4 == 0 else []
        for t in range(1 + i % 3):
            calls = tuple(ToolCall(f"f{j}", '{"city": "Oslo %d"}' % j) for j in range(i % 3 if t == 0 else 0))
            msgs += [Message("user", texts[(i + t) % 10]),
                     Message("assistant", texts[(i * 7 + t) % 10], tool_calls=calls,
                             reasoning=[None, "", "think it through", " x "][(i + t) % 4])]
            if calls:
                msgs.append(Message("tool", "result words", tool_call_id="c"))
        convs.append(Conversation(tuple(msgs), tools='[{"name": "f0"}]' if i % 5 == 0 else None))
    summarise(convs, list(range(len(convs))), tmp_path / "s")
    got = {n: np.load(tmp_path / "s" / f"{n}.npy") for n in
           ("turns", "prompt_words", "response_words", "calls", "has_tools", "reason_words", "trained_words")}
    assert got["turns"].tolist() == [len(c.assistant_indices) for c in convs]
    assert got["prompt_words"].tolist() == [word_lengths(c)[0] for c in convs]
    assert got["response_words"].tolist() == [word_lengths(c)[1] for c in convs]
    assert [tuple(map(int, x)) for x in zip(got["calls"], got["has_tools"], got["reason_words"], got["trained_words"])] \
        == [tuple(map(int, tool_counts(c))) for c in convs]
    assert int(got["reason_words"].sum()) > 0 and int(got["calls"].sum()) > 0


def test_a_store_of_known_inputs_has_a_known_key_and_files(data, tok, tmp_path, monkeypatch):
    """The same inputs make the same store, release after release of its code: the key and the
    sha256 of every file are pinned (a change of FORMAT, of the encoding or of the statistics'
    files changes them on purpose; then bump ``sftlab.prepare.key.FORMAT`` and pin again). The
    sftlab version, part of the key, is fixed here; the inputs are named relative to their folder.
    The tokenizer's fingerprint is part of the key too: a tokenizers release that serialises the
    same tokenizer otherwise changes the key, not the files."""
    import hashlib

    import sftlab

    monkeypatch.setattr(sftlab, "__version__", "0.0.0-pin")
    monkeypatch.chdir(data)
    found = {}
    for name, inputs, kw in (("one", ["a.jsonl"], {}),
                             ("split", ["a.jsonl", "held.jsonl"], {"sides": ["train", "train"], "eval_split": 0.2,
                                                                  "num_proc": 2})):
        store = _prepare(inputs, tok, tmp_path / name, **kw)
        files = hashlib.sha256("".join(f"{rel}:{hashlib.sha256(raw).hexdigest()}\n"
                                       for rel, raw in _files(store).items()).encode()).hexdigest()
        found[name] = (store.key[:16], files[:16], len(_files(store)))
    assert found == PINNED, found


PINNED = {"one": ("bd211dfad917613e", "81e90a220fa0875d", 158), "split": ("246adcf493810604", "b3ab3cea766d8603", 189)}
"""Store format 6 (inline reasoning of every known convention read, masked with its markers, and
refused under mask/drop where it cannot be read): the keys changed from format 5, every file is the
same (these inputs hold no reasoning). Format 5 (public data sets' own layouts read, a JSON object's one list of records read): the keys changed
from format 4, every file is the same (these inputs hold no such record). Format 4 (a template that rewrites an untrained message and loses text refuses its record;
a tool-call string spelling a special token that a template writes bare stays text): the keys
changed from format 3, every file is the same (these inputs hold no such record). Format 3 (an
untrained turn's unwritten reasoning refuses its record) changed the keys from format 2 alike. Format 2's files, word
3-shingles kept for exact near-duplicate confirmation, were found alike by the store's code as
it was in sftlab/tokens/store.py and by sftlab/prepare/ after the move."""


@pytest.mark.parametrize("num_proc", [1, 2])
def test_load_files_and_the_store_quarantine_the_same_copies_of_an_id(tok, tmp_path, make_record, num_proc):
    """One duplicate-id rule (``sftlab.data.loading.DuplicateIds``): the store, over chunks and
    worker processes, quarantines the records ``load_files`` does, with the same reason."""
    rng = random.Random(1)
    a = [make_record(i, rng) for i in range(40)]
    a[20] = dict(a[3])                                                         # r3 again, same text
    a[25] = {**a[25], "id": "r7"}                                              # r7 again, other text
    a[30] = {"id": "x", "messages": [{"role": "user", "content": "no answer"}]}   # quarantined: claims no id
    b = [{**make_record(50, rng), "id": "r1"},                                 # r1 again, in another file
         {**make_record(51, rng), "id": "x"},                                  # the first accepted "x"
         {**make_record(52, rng), "id": "x"}]                                  # "x" again
    paths = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for p, rows in zip(paths, (a, b)):
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = load_files(paths)
    store = _prepare(paths, tok, tmp_path / "cache", chunk_records=8, num_proc=num_proc)
    stored = [json.loads(x) for x in store.quarantine_path.read_text().splitlines()]
    loaded = [e.to_dict() for e in report.quarantined]
    copies = lambda entries: [(e["file"], e["line"], e["reason"]) for e in entries  # noqa: E731
                              if e["code"] == "duplicate_id"]
    assert copies(stored) == copies(loaded)
    assert [(f, line) for f, line, _ in copies(loaded)] == [(str(paths[0]), 21), (str(paths[0]), 26),
                                                            (str(paths[1]), 1), (str(paths[1]), 3)]
    assert "first seen at " + str(paths[1]) + ":2" in copies(loaded)[-1][2]
    assert [(e["file"], e["line"], e["code"]) for e in stored if e["stage"] == "load"] == \
           [(e["file"], e["line"], e["code"]) for e in loaded]
