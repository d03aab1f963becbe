"""The prepared-data store: encoded examples written once, found by content, memory-mapped by every process.

``prepare(inputs, tokenizer, template, ...)`` reads, validates and encodes the records of
``inputs`` (``sftlab.data.loading`` and ``sftlab.tokens.encoding``, unchanged) a chunk of
``chunk_records`` records at a time, and writes each chunk as flat arrays:

    CACHE/KEY/store.json                 key, its parts, counts per input file, chunks, sha256 of every file
    CACHE/KEY/quarantine.jsonl           every record not used, with its reason (load, then encode stage)
    CACHE/KEY/stats.json                 sftlab.data.stats' schema, from the chunk summaries
    CACHE/KEY/chunk-00000/ids.npy        int32, the token ids of the chunk's examples end to end
                          weights.npy    float32, their loss weights
                          lengths.npy    int32, tokens per example (packing reads only this)
                          slices.npy     int32, index into the chunk's slice names (chunk.json)
                          trained.npy    int32, trained tokens per example
                          records.npy    int64, record number of each example (order in the input)
                          lines.npy      int64, its line (JSONL) or row in the input file
                          examples.jsonl the example's other fields (id, task, dropped turns, ...)
                          stats/         compact per-record summaries (sftlab.data.chunk_stats)

Why NumPy ``.npy``: every array here is one flat column of one fixed type, which is exactly what
the format holds: ``np.load(mmap_mode="r")`` maps it without copying or parsing, it needs nothing
beyond NumPy (already required), and it never unpickles (``allow_pickle=False``). Arrow IPC would
add record batches and a schema that a flat column does not use.

The key is the sha256 of the normalised records of every input (each accepted record's
``Conversation.to_dict()`` and each quarantined raw record, with its line, in order), the template (its
fingerprint covers the source, control tokens and tokenizer; the control tokens are listed too),
the tokenizer (``sftlab.manifest.tokenizer_fingerprint``), every encoding option, the policy,
the store format and the sftlab version. An unchanged key reuses the store; anything else builds
a new one. The normalised records are only known after reading, so the raw content of each
input (``sftlab.data.readers.input_digest``: file bytes, or a dataset's fingerprint) with the
other parts indexes the key (``CACHE/index/``): a run on unchanged files finds its store without
reading a record, and a file rewritten with the same records is read once and maps to the same
store. An index entry holds the key, the raw digests it was written for and the sha256 of the
``store.json`` it found; it is followed only when all three hold (``_from_index``), and the store
only when its ``store.json`` names its own folder's key, that key is the hash of the parts it
lists, and those parts are this run's (``PreparedStore._check_identity``). Opening a store checks
that its checksum list is complete and every file's size and sha256; a damaged store is reported
and rebuilt, never used. Stamps are a speed-up, not the truth: a file whose stat stamp (size,
mtime, ctime, inode) is the one recorded when it last hashed right is not read again
(``CACHE/index/KEY.stamps.json``, as git's index does) unless it is drawn for the sample hashed on
every open (``_SAMPLE_BYTES`` in all, so a small store is hashed whole), and an input over
``_SAMPLE_BYTES`` is not hashed again while its stamp is the one it hashed with
(``CACHE/index/inputs.stamps.json``): a second run on a million conversations opens its store
reading 128 MiB, not gigabytes, and any write to a file moves its ctime, so it is hashed again.

Workers (``num_proc``) each encode whole chunks and write them themselves (nothing but a small
task description and a small summary crosses processes); the chunks, the per-record checks
that need every record (duplicate ids: 16-byte keys; near duplicates: band keys) and the
statistics are put together by the main process, so the store is the same bit for bit for any
``num_proc``.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, fields as dc_fields
from pathlib import Path
from typing import Any

import numpy as np

from sftlab.errors import UsageError
from sftlab.files import no_room, room_message

FORMAT = 2  # 2: the statistics summaries keep word 3-shingles (near duplicates confirmed exactly)
CHUNK_RECORDS = 8192
_ARRAYS = ("ids", "weights", "lengths", "slices", "trained", "records", "lines", "derived", "lost", "reasoning")
_DERIVED = (None, "turn", "overflow")
_NOT_META = {"input_ids", "loss_weights", "slice", "trained_tokens", "origin", "trace"}


class StoreError(ValueError):
    """A store that cannot be used as it is (missing, truncated or altered files)."""


def default_cache_dir() -> Path:
    """``$SFTLAB_CACHE`` or ``~/.cache/sftlab``, plus ``prepared``."""
    root = os.environ.get("SFTLAB_CACHE") or Path.home() / ".cache" / "sftlab"
    return Path(root) / "prepared"


def _jsonl_lines(path: Path) -> list[str]:
    """The lines of a JSONL file the store wrote, split on ``\\n`` only: a JSON string may hold
    U+2028, U+2029 or U+0085 raw, where ``str.splitlines`` would cut the record."""
    return [x for x in path.read_text(encoding="utf-8").split("\n") if x]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------ stat-verified files
#
# Hashing every file of a large store on every start costs seconds (a million conversations are
# a few GiB of chunks, and the input file another GiB or two). As git's index does for a work
# tree, a file whose content was hashed is remembered by its ``stat`` (size, mtime, ctime, inode,
# device): while those are unchanged the content is the one hashed. Any write changes the
# ctime (which no user call can set back), a replaced file has another inode, so a truncated or
# altered file is hashed again and caught. A file changed within ``_RACY_NS`` of being hashed
# could change again within the same clock tick, so such a stamp is not kept (it is hashed
# again next time), which is git's "racy clean" rule.

_RACY_NS = 2_000_000_000
_SAMPLE_BYTES = 128 << 20
"""Bytes of stamped files hashed anyway on every open (drawn at random), and the size up to
which an input file is hashed on every run instead of trusted by its stamp."""


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _settled(st: os.stat_result) -> bool:
    """Unchanged for ``_RACY_NS``: a stamp of it can be trusted later."""
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS


def _read_stamps(path: Path) -> dict:
    try:
        stamps = json.loads(path.read_text(encoding="utf-8"))
        return stamps if isinstance(stamps, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_stamps(path: Path, stamps: dict) -> None:
    """Best effort: a cache folder that cannot be written only costs the hashing next time."""
    from sftlab.files import write_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(stamps, sort_keys=True) + "\n")
    except (OSError, UsageError):
        pass


def _hashed(path: Path) -> tuple[str, list[int] | None]:
    """``(sha256, stamp or None)``: the stamp when the file did not change while it was hashed
    and had settled before."""
    before = os.stat(path)
    digest = _sha256_file(path)
    after = os.stat(path)
    return digest, _stamp(after) if _stamp(before) == _stamp(after) and _settled(after) else None


def _stamps_path(store_dir: Path) -> Path:
    """``CACHE/index/KEY.stamps.json``: beside the index, so a store's own files stay what was built."""
    return store_dir.parent / "index" / f"{store_dir.name}.stamps.json"


def _file_digest(p: Path, cache: Path) -> str:
    """``sftlab.data.readers.input_digest(p)``, remembered by the file's stamp in
    ``CACHE/index/inputs.stamps.json`` (a plain file only: a folder or a dataset is digested)."""
    from sftlab.data.readers import input_digest

    try:
        st = os.stat(p)
    except OSError:
        return input_digest(p)
    if not Path(p).is_file():
        return input_digest(p)
    where = cache / "index" / "inputs.stamps.json"
    name = str(Path(p).resolve())
    stamps = _read_stamps(where)
    entry = stamps.get(name)
    if isinstance(entry, list) and len(entry) == 2 and entry[0] == _stamp(st) and st.st_size > _SAMPLE_BYTES:
        return entry[1]  # a large file, unchanged since it was hashed: its content is not read again
    digest = input_digest(p)
    after = os.stat(p)
    if _stamp(after) == _stamp(st) and _settled(after) and st.st_size > _SAMPLE_BYTES:
        stamps = _read_stamps(where)  # another process may have added its own inputs meanwhile
        stamps[name] = [_stamp(after), digest]
        _write_stamps(where, stamps)
    return digest


_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _canonical(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 kept (``json.dumps`` with those options; one encoder reused)."""
    return _JSON.encode(value)


def _digest(value: Any) -> str:
    return hashlib.sha256(_canonical(value).encode("utf-8", "surrogatepass")).hexdigest()


# ------------------------------------------------------------------------------------- key

def key_parts(inputs: list[str], tokenizer, template, options: dict, policy: Any = None,
              max_record_bytes: int | None = None) -> dict:
    """Everything but the records that decides what the store holds (the records are added as
    ``inputs[i].records_sha256`` once read, or as the inputs' raw digests for the index)."""
    from sftlab import __version__
    from sftlab.fingerprints import tokenizer_fingerprint

    return {"format": FORMAT, "sftlab_version": __version__,
            "inputs": [str(p) for p in inputs],
            "template": {"name": template.name, "fingerprint": template.fingerprint,
                         "control_tokens": list(template.control_tokens)},
            "tokenizer": tokenizer_fingerprint(tokenizer)["sha256"],
            "encoding": dict(sorted(options.items())),
            "policy": policy.manifest_entry()["sha256"] if policy is not None else None,
            "max_record_bytes": max_record_bytes}


# ----------------------------------------------------------------------------- the store

@dataclass(frozen=True)
class StoreRow:
    """A packed row of a store: example indices only; tokens are read from the memory map when
    ``collate`` asks (the interface of ``sftlab.tokens.packing.PackedRow``)."""
    store: Any
    example_indices: tuple[int, ...]
    loss_scale: tuple[float, ...] | None = None
    """Per-example multiplier of the loss weights (the mixture's slice loss weights)."""

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(int(self.store.lengths[i]) for i in self.example_indices)

    def __len__(self) -> int:
        return sum(self.lengths)

    @property
    def input_ids(self) -> np.ndarray:
        return np.concatenate([self.store.ids(i) for i in self.example_indices])

    @property
    def loss_weights(self) -> np.ndarray:
        scale = self.loss_scale or (1.0,) * len(self.example_indices)
        parts = [self.store.weights(i) * np.float32(s) if s != 1.0 else self.store.weights(i)
                 for i, s in zip(self.example_indices, scale)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    @property
    def position_ids(self) -> tuple[int, ...]:
        return tuple(j for n in self.lengths for j in range(n))


class PreparedStore:
    """A built store, opened: per-example arrays in memory (4 bytes each), tokens memory-mapped."""

    def __init__(self, path: Path, *, verify: bool = True):
        self.path = Path(path)
        meta_path = self.path / "store.json"
        if not meta_path.is_file():
            raise StoreError(f"{self.path}: no store.json (an interrupted build?)")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise StoreError(f"{meta_path}: unreadable ({e})") from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT:
            found = self.meta.get("format") if isinstance(self.meta, dict) else None
            raise StoreError(f"{meta_path}: store format {found}, this sftlab reads {FORMAT}")
        self._check_identity(meta_path)
        if verify:
            self.verify()
        self.key: str = self.meta["key"]
        self.hit: bool | None = None
        chunks = self.meta["chunks"]
        self.slice_names: list[str] = list(self.meta["slices"])
        code = {s: i for i, s in enumerate(self.slice_names)}
        lengths, slices, trained = [], [], []
        self._ids, self._weights = [], []
        try:
            for c in chunks:
                d = self.path / c["dir"]
                load = lambda name: np.load(d / f"{name}.npy", mmap_mode="r", allow_pickle=False)  # noqa: E731
                lengths.append(np.asarray(load("lengths")))
                remap = np.asarray([code[s] for s in c["slices"]] or [0], dtype=np.int32)
                slices.append(remap[np.asarray(load("slices"))])
                trained.append(np.asarray(load("trained")))
                self._ids.append(load("ids"))
                self._weights.append(load("weights"))
        except (OSError, ValueError, KeyError) as e:
            raise StoreError(f"{self.path}: unreadable chunk ({e})") from None
        cat = lambda parts, dt: np.concatenate(parts).astype(dt, copy=False) if parts else np.zeros(0, dt)  # noqa: E731
        self.lengths = cat(lengths, np.int32)
        self.slice_codes = cat(slices, np.int32)
        self.trained = cat(trained, np.int32)
        self.chunk_starts = np.concatenate(([0], np.cumsum([c["examples"] for c in chunks]))).astype(np.int64)
        self._token_starts = [np.concatenate(([0], np.cumsum(x, dtype=np.int64))) for x in lengths]

    # -- checks ---------------------------------------------------------------------------------
    def _check_identity(self, meta_path: Path) -> None:
        """The store is the one its folder names: ``store.json``'s key is the folder's name and
        the hash of the key parts it lists (records included), so a store copied or renamed over
        another, or a ``store.json`` whose parts were edited, is no store of that key."""
        key, parts = self.meta.get("key"), self.meta.get("parts")
        if key != self.path.name:
            raise StoreError(f"{meta_path}: holds the store of key {key!r}, not of {self.path.name!r} (a store "
                             "copied or moved over another)")
        if not isinstance(parts, dict) or _digest(parts) != key:
            raise StoreError(f"{meta_path}: its key parts do not hash to its key (altered)")

    def verify(self) -> None:
        """Every file of the store is listed, and has its size and sha256; raises ``StoreError``
        naming the first that does not.

        The list must be complete: every file in the folder (``store.json`` aside) and every file
        a store of its chunks holds is in it, so a list emptied or cut short is damage, not a
        smaller store. A file is hashed unless its stat stamp (size, mtime, ctime, inode, device)
        equals the one recorded when its content last hashed to the listed sha256
        (``CACHE/index/KEY.stamps.json``; see ``_stamp``) and it is not drawn for the sample: on
        every open, files are drawn at random among the stamped ones and hashed anyway, up to
        ``_SAMPLE_BYTES`` in all (a store that small is hashed whole every time). A stamp is a
        speed-up, not the truth: a changed file is always hashed again, and a stamp file edited to
        vouch for a changed file is caught at once on a small store, and on a large one by the
        draws (each open reads ``_SAMPLE_BYTES`` of it)."""
        listed = self.meta.get("checksums")
        if not isinstance(listed, dict) or not listed:
            raise StoreError(f"{self.path / 'store.json'}: lists no checksums (damaged)")
        required = {"quarantine.jsonl", "stats.json", "preview.jsonl"} | {
            f"{c['dir']}/{name}" for c in self.meta.get("chunks", ())
            for name in (*(f"{a}.npy" for a in _ARRAYS), "examples.jsonl", "chunk.json")}
        root, on_disk = str(self.path), set()
        for d, _, names in os.walk(root):  # scandir: no stat per file
            prefix = d[len(root) + 1:] + "/" if d != root else ""
            on_disk.update(prefix + f for f in names)
        unlisted = sorted((required | on_disk) - set(listed) - {"store.json"})
        if unlisted:
            raise StoreError(f"{self.path / unlisted[0]}: not in store.json's checksums (the list is incomplete: "
                             "damaged)")
        where = _stamps_path(self.path)
        known = _read_stamps(where)
        fresh, stamped = {}, []
        for rel, entry in sorted(listed.items()):
            try:
                size, digest = entry
            except (TypeError, ValueError):
                raise StoreError(f"{self.path / 'store.json'}: checksum entry of {rel} is not [size, sha256] (damaged)") from None
            p = self.path / rel
            if not p.is_file():
                raise StoreError(f"{p}: missing")
            st = p.stat()
            if st.st_size != size:
                raise StoreError(f"{p}: {st.st_size} bytes, expected {size} (truncated or altered)")
            if known.get(rel) == _stamp(st):
                fresh[rel] = known[rel]
                stamped.append((rel, size, digest))
                continue
            found, stamp = _hashed(p)
            if found != digest:
                raise StoreError(f"{p}: sha256 differs from the one recorded (altered)")
            if stamp is not None:
                fresh[rel] = stamp
        random.SystemRandom().shuffle(stamped)
        budget = _SAMPLE_BYTES
        for rel, size, digest in stamped:
            if size > budget:
                continue
            budget -= size
            if _sha256_file(self.path / rel) != digest:
                raise StoreError(f"{self.path / rel}: sha256 differs from the one recorded (altered, with its stat "
                                 "stamp written back)")
        if fresh != known:
            _write_stamps(where, fresh)

    # -- examples ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.lengths)

    def _locate(self, i: int) -> tuple[int, int, int]:
        c = int(np.searchsorted(self.chunk_starts, i, side="right") - 1)
        j = i - int(self.chunk_starts[c])
        starts = self._token_starts[c]
        return c, int(starts[j]), int(starts[j + 1])

    def ids(self, i: int) -> np.ndarray:
        c, a, b = self._locate(i)
        return self._ids[c][a:b]

    def weights(self, i: int) -> np.ndarray:
        c, a, b = self._locate(i)
        return self._weights[c][a:b]

    @property
    def slices(self) -> list[str]:
        """The slice name of every example (one shared string object per slice)."""
        names = self.slice_names
        return [names[c] for c in self.slice_codes.tolist()]

    def rows(self, groups, scales: np.ndarray | None = None) -> list[StoreRow]:
        """``StoreRow``s for groups of example indices; ``scales[code]`` multiplies the loss
        weights of slice ``slice_names[code]`` (the mixture's loss weights)."""
        return _rows(self, groups, scales)

    def encoding_summary(self) -> dict:
        """``sftlab.tokens.encoding.encoding_summary`` of the examples (extra examples, lost tokens)."""
        return dict(self.meta["encoding_summary"])

    # -- beside the examples ------------------------------------------------------------------------
    @property
    def stats(self) -> dict:
        return json.loads((self.path / "stats.json").read_text(encoding="utf-8"))

    @property
    def quarantine_path(self) -> Path:
        return self.path / "quarantine.jsonl"

    @property
    def files(self) -> list[dict]:
        return self.meta["files"]

    @property
    def quarantined(self) -> int:
        return sum(f["quarantined"] for f in self.files)

    def preview(self) -> list:
        """A few accepted conversations (the first of each slice, then the first ones), for the
        mask preview."""
        from sftlab.data.conversation import Origin
        from sftlab.data.formats import to_conversation

        out = []
        for line in _jsonl_lines(self.path / "preview.jsonl"):
            d = json.loads(line)
            out.append(to_conversation(d["record"], Origin(d["file"], d["line"])))
        return out

    def summaries(self):
        from sftlab.data.chunk_stats import Summaries

        chunks = self.meta["chunks"]
        return Summaries([self.path / c["dir"] / "stats" for c in chunks], [c["name"] for c in chunks],
                         set(self.meta.get("excluded", ())))

    def describe(self, hit: bool | None = None) -> dict:
        """The manifest's ``data.store`` entry."""
        return {"key": self.key, "path": str(self.path), "hit": self.hit if hit is None else hit,
                "examples": len(self), "tokens": int(self.meta["tokens"]), "chunks": len(self.meta["chunks"]),
                "records_sha256": self.meta["records_sha256"]}


def _rows(table, groups, scales) -> list[StoreRow]:
    out = []
    for g in groups:
        g = tuple(int(i) for i in g)
        scale = tuple(scales[table.slice_codes[list(g)]].tolist()) if scales is not None else None
        out.append(StoreRow(table, g, scale))
    return out


class ExampleTable:
    """Encoded examples held in memory, with the interface of ``PreparedStore`` that training
    reads (``lengths``, ``slice_codes``, ``slice_names``, ``trained``, ``ids(i)``,
    ``weights(i)``, ``rows``): for examples made in code rather than read from a store."""

    def __init__(self, examples: list):
        self.examples = list(examples)
        self.slice_names = _slice_order(e.slice for e in self.examples)
        code = {s: i for i, s in enumerate(self.slice_names)}
        self.lengths = np.asarray([len(e.input_ids) for e in self.examples], dtype=np.int32)
        self.slice_codes = np.asarray([code[e.slice] for e in self.examples], dtype=np.int32)
        self.trained = np.asarray([getattr(e, "trained_tokens", 0) for e in self.examples], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.examples)

    def ids(self, i: int) -> np.ndarray:
        return np.asarray(self.examples[i].input_ids, dtype=np.int32)

    def weights(self, i: int) -> np.ndarray:
        return np.asarray(self.examples[i].loss_weights, dtype=np.float32)

    slices = PreparedStore.slices
    rows = PreparedStore.rows

    def encoding_summary(self) -> dict:
        from sftlab.tokens.encoding import encoding_summary

        return encoding_summary(self.examples)


class EpochRows:
    """The rows of an epoch as two flat arrays (example indices, row starts), in training order;
    indexing makes ``StoreRow``s on demand, so an epoch of millions of examples costs 8 bytes
    an example."""

    def __init__(self, table, members: np.ndarray, starts: np.ndarray, order: list[int] | np.ndarray,
                 scales: np.ndarray | None):
        """Row ``order[k]`` of the rows ``members[starts[r]:starts[r + 1]]`` becomes row k."""
        order = np.asarray(order, dtype=np.int64)
        sizes = (starts[1:] - starts[:-1])[order]
        self.starts = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        at = np.repeat(starts[:-1][order] - self.starts[:-1], sizes) + np.arange(int(self.starts[-1]), dtype=np.int64)
        self.members = np.asarray(members, dtype=np.int64)[at]
        self.table, self.scales = table, scales

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        return _rows(self.table, [self.members[self.starts[k]:self.starts[k + 1]]], self.scales)[0]

    def __iter__(self):
        return (self[k] for k in range(len(self)))

    def stats(self, max_length: int, mode: str) -> dict:
        """``sftlab.tokens.packing.packing_stats`` of these rows, from the arrays."""
        tokens = int(self.table.lengths[self.members].sum()) if len(self.members) else 0
        rows = len(self)
        return {"mode": mode, "strategy": "best_fit_decreasing" if mode == "packed" else "one_per_row",
                "max_length": max_length, "rows": rows, "examples": int(len(self.members)), "tokens": tokens,
                "efficiency": round(tokens / (rows * max_length), 6) if rows else 0.0}


# --------------------------------------------------------------------------- preparation

def prepare(inputs: list[str], tokenizer, template, *, options: dict, policy: Any = None,
            cache_dir: str | os.PathLike | None = None, num_proc: int = 1, chunk_records: int = CHUNK_RECORDS,
            progress: bool = False, build: bool = True, verify: bool = True,
            label: str = "prepare", columns: list | None = None, sides: list | None = None,
            eval_split: float = 0.0, spool: Spool | None = None) -> PreparedStore:
    """The store of ``inputs`` encoded with ``tokenizer``/``template``/``options``: opened from the
    cache when its key matches (``store.hit`` True), else built (``hit`` False).

    ``options`` are ``encode_all``'s keyword options (``max_length``, ``last_turn_only``, ...):
    all of them are part of the key, as are ``columns`` (one ``sftlab.data.formats.Columns`` or
    ``None`` per input: how its records name their fields). ``sides`` (one per input: ``None``,
    ``"train"`` or ``"heldout"``) keeps only the records of that side of ``data.eval_split``
    (``sftlab.data.split``: a hash of the record's messages below ``eval_split`` is held out;
    records quarantined while loading, and later copies of an id, belong to training); both sides,
    and the share, are part of the key. An input that can be read only once (a pipe, a FIFO) is
    copied into ``spool`` (a ``Spool``; one of this call's own when ``None``) as it is read and
    hashed. ``build=False`` (ranks that wait for the main process)
    raises ``StoreError`` instead of building; ``verify=False`` skips the checksums (the main
    process checked them). Raises ``UsageError`` for unusable inputs.
    """
    from sftlab.data.readers import DEFAULT_MAX_RECORD_BYTES, check_readable
    from sftlab.files import check_cache_dir

    cache = check_cache_dir(cache_dir, what="data.cache_dir") if cache_dir else check_cache_dir(
        default_cache_dir(), what="SFTLAB_CACHE")
    paths = [Path(p) for p in inputs]
    if not paths:
        raise UsageError("no input files given")
    for p in paths:
        check_readable(p)
        if not build and is_stream(p):
            raise UsageError(f"{p}: a pipe or FIFO can be read by one process only; in a multi-process run "
                             "give data as files")
    columns = list(columns) if columns is not None else [None] * len(paths)
    sides = list(sides) if sides is not None and any(sides) else None
    parts = key_parts(inputs, tokenizer, template, options, policy, DEFAULT_MAX_RECORD_BYTES)
    parts["columns"] = [None if c is None else repr(c) for c in columns]
    if sides is not None:
        parts["split"] = {"eval_split": float(eval_split), "sides": sides}
    own = spool is None
    spool = Spool(cache) if own else spool
    try:
        return _prepare(paths, inputs, tokenizer, template, options, policy, cache, num_proc, chunk_records,
                        progress, build, verify, label, columns, sides, eval_split, spool, parts)
    except (OSError, UsageError) as e:
        reason = no_room(e)
        if reason is None and isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
            raise UsageError(f"{cache}: cannot write the prepared-data store there: {e.strerror} ({e.filename}); "
                             "set data.cache_dir or $SFTLAB_CACHE to a folder you can write") from None
        if reason is None:
            raise
        need = 2 * sum(p.stat().st_size for p in paths if p.is_file())
        raise UsageError(room_message(cache, reason, need, "every store already there is whole") +
                         " (a store takes about twice its inputs' bytes; data.cache_dir or $SFTLAB_CACHE "
                         "puts it elsewhere)") from None
    finally:
        if own:
            spool.close()


def _prepare(paths, inputs, tokenizer, template, options, policy, cache, num_proc, chunk_records, progress,
             build, verify, label, columns, sides, eval_split, spool, parts) -> PreparedStore:
    """``prepare`` once the inputs are checked and the key parts known: found, or built and indexed."""
    read = [spool.read(p) for p in paths]  # (path to read, raw digest): a stream is copied once
    raw = [digest if digest is not None else _file_digest(p, cache) for p, digest in read]
    index = cache / "index" / (_digest({**parts, "raw": raw}) + ".json")
    found = _from_index(cache, index, verify, parts, raw)
    if found is not None:
        found.hit = True
        return found
    if not build:
        raise StoreError(f"no prepared store for {', '.join(inputs)} in {cache} (the main process builds it)")
    names = [str(p) if r != p else None for p, (r, _) in zip(paths, read)]
    store = _build([r for r, _ in read], tokenizer, template, options, policy, parts, cache, num_proc,
                   chunk_records, progress, label, columns, names, sides, eval_split)
    index.parent.mkdir(parents=True, exist_ok=True)
    _write_text(index, json.dumps({"key": store.key, "raw": raw,
                                   "store_sha256": _sha256_file(store.path / "store.json")}) + "\n")
    return store


def is_stream(p: Path) -> bool:
    """Whether ``p`` is an input that can be read only once (a pipe, a FIFO, ``/dev/stdin``)."""
    return os.path.exists(p) and not Path(p).is_file() and not Path(p).is_dir()


class Spool:
    """Inputs that can be read only once (pipes, FIFOs, ``/dev/stdin``), copied as they are read
    into files under the cache folder (``CACHE/.spool-*``, beside the stores' ``.build-*``
    folders) while hashed, a block at a time: the store is still keyed by the content, and the
    copy can be read as often as preparation needs (worker processes, both sides of
    ``data.eval_split``). Removed on ``close`` (or leaving ``with``)."""

    def __init__(self, cache: str | os.PathLike | None = None):
        self.cache = Path(cache) if cache else default_cache_dir()
        self.root: Path | None = None
        self.copies: dict[str, tuple[Path, str]] = {}

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        self.copies.clear()

    def read(self, p: Path) -> tuple[Path, str | None]:
        """``(path to read, raw digest)``: a stream's copy and the digest of its bytes (as
        ``sftlab.data.readers.input_digest`` gives it for a file), anything else as it is and ``None``."""
        if not is_stream(p):
            return p, None
        if str(p) not in self.copies:
            if self.root is None:
                self.cache.mkdir(parents=True, exist_ok=True)
                self.root = Path(tempfile.mkdtemp(prefix=".spool-", dir=self.cache))
            dest = self.root / str(len(self.copies)) / (Path(p).name or "input")
            dest.parent.mkdir()
            h = hashlib.sha256(b"\0")
            from sftlab.data.readers import open_input

            with open_input(p) as src:
                try:
                    with open(dest, "wb") as out:
                        for block in iter(lambda: src.read(1 << 22), b""):
                            h.update(block)
                            out.write(block)
                except OSError as e:
                    raise UsageError(f"{p}: cannot copy it into {dest.parent}: {e.strerror or e}") from None
            h.update(b"\0")
            self.copies[str(p)] = (dest, h.hexdigest())
        return self.copies[str(p)]


def _from_index(cache: Path, index: Path, verify: bool, parts: dict, raw: list) -> PreparedStore | None:
    """The store ``index`` names, when the entry and the store are what this run asks for: the
    entry names these raw input digests and a ``store.json`` of that sha256, the store is its key's
    (``PreparedStore``) and was built from these inputs with these settings (its key parts but the
    records equal ``parts``). An entry that names another store is a miss (the records are read
    and the key found again, where a damaged store of that key is replaced); a store found
    damaged here is removed."""
    if not index.is_file():
        return None
    try:
        entry = json.loads(index.read_text(encoding="utf-8"))
        key, sha = entry["key"], entry["store_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if entry.get("raw") != raw or not isinstance(key, str) or not _KEY.match(key):
        return None  # an entry of other inputs, or an older sftlab's
    path = cache / key
    try:
        if _sha256_file(path / "store.json") != sha:
            return None  # the entry names another store.json than the one there (an entry or a store altered)
    except OSError:
        return None
    try:
        store = PreparedStore(path, verify=verify)
        built = {k: v for k, v in store.meta["parts"].items() if k not in ("records", "other")}
        if built != json.loads(_canonical(parts)):
            return None  # another store (other inputs or settings): not ours to use or remove
        return store
    except (StoreError, OSError) as e:
        print(f"sftlab: prepared store {path} is damaged ({e}); rebuilding it", file=sys.stderr)
        shutil.rmtree(path, ignore_errors=True)
        return None


_KEY = re.compile(r"^[0-9a-f]{64}$")


def _write_text(path: Path, text: str) -> None:
    from sftlab.manifest import write_atomic

    write_atomic(path, text)


# Workers get their context by fork (module state), never by pickling the tokenizer per task.
_CTX: dict = {}


@dataclass(frozen=True)
class _Task:
    chunk: int
    input: int
    source: int
    name: str
    kind: str        # "jsonl": (start byte, first line); "items": (first item, -)
    a: int
    b: int
    count: int
    rec0: int


def _plan(paths: list[Path], chunk_records: int, max_bytes: int, offsets: bool = False):
    """``(task, items or None)`` for every chunk, in order: chunk k of a source holds its items
    ``[k * chunk_records, (k + 1) * chunk_records)``, however the chunks are then run. The items
    come with the task when ``stream`` reading has them already. A spooled stream keeps the name
    it was given (``_CTX["names"]``). With ``offsets``, a plain JSONL file is planned by the byte
    offsets of its chunks (``readers.jsonl_starts``: its lines scanned, not parsed), so a worker
    reads its own chunks from there and nothing is parsed twice."""
    from sftlab.data.readers import jsonl_starts, sources

    rec = chunk = 0
    names = _CTX.get("names") or [None] * len(paths)
    for i, p in enumerate(paths):
        starts = jsonl_starts(p, max_bytes, chunk_records) if offsets else None
        if starts is not None:
            if not starts:
                raise UsageError(f"{names[i] or p}: no records (the input is empty or has only blank lines)")
            for offset, line, count in starts:
                yield _Task(chunk, i, 0, names[i] or str(p), "jsonl", offset, line, count, rec), None
                chunk, rec = chunk + 1, rec + count
            continue
        for s, (name, items) in enumerate(sources(p, max_bytes)):
            name = names[i] or name
            block, first = [], 0
            for item in items:
                block.append(item)
                if len(block) == chunk_records:
                    yield _Task(chunk, i, s, name, "items", first, 0, len(block), rec), block
                    chunk, rec, first, block = chunk + 1, rec + len(block), first + len(block), []
            if block:
                yield _Task(chunk, i, s, name, "items", first, 0, len(block), rec), block
                chunk, rec = chunk + 1, rec + len(block)
            elif first == 0:
                raise UsageError(f"{name}: no records (the input is empty or has only blank lines)")


def _items(task: _Task, paths: list[Path], max_bytes: int):
    """The raw items of one chunk, read from its source."""
    from itertools import islice

    return islice(_task_items(task, paths, max_bytes), task.count)


def _task_items(task: _Task, paths: list[Path], max_bytes: int):
    """The raw items of ``task``'s source from the task's first item on (a generator)."""
    if task.kind == "jsonl":
        from sftlab.data.readers import read_jsonl_at

        return read_jsonl_at(paths[task.input], task.a, task.b, max_bytes)
    return _source_items(paths[task.input], task.source, task.a, max_bytes)


def _source_items(p: Path, source: int, start: int, max_bytes: int):
    """The raw items of source number ``source`` of input ``p`` from item ``start`` on (a
    generator: it keeps the reader, and its open file, alive while it is read)."""
    from itertools import islice

    from sftlab.data.readers import sources

    for s, (_, items) in enumerate(sources(p, max_bytes)):
        if s == source:
            yield from islice(items, start, None)
            return
    raise StoreError(f"{p}: source {source} vanished while preparing")


def _estimate_records(paths: list[Path]) -> int | None:
    """Records of the inputs, estimated for the progress bar's total and ETA: the lines that open a
    top-level object (JSONL, objects pretty-printed or not; a JSON array's objects at the first one's
    indentation); ``None`` when an input is no JSON text file (Parquet, a dataset directory, a pipe).

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     a, b = Path(d) / "a.json", Path(d) / "b.jsonl"
        ...     _ = a.write_text('[\\n  {\\n    "x": {\\n      "y": 1\\n    }\\n  },\\n  {\\n    "x": 2\\n  }\\n]\\n')
        ...     _ = b.write_text('{"x": 1}\\n{\\n  "x": 2\\n}\\n{"x": 3}\\n')
        ...     _estimate_records([a]), _estimate_records([b])
        (2, 3)
    """
    import re

    total = 0
    for p in paths:
        if not p.is_file():
            return None
        with open(p, "rb") as f:
            head = f.read(1 << 16).lstrip()
            if head[:1] == b"{":
                opener = b"\n{"
                total += 1  # the first object's line has no line break before it
            elif head[:1] == b"[":
                m = re.search(rb"\n([ \t]*)\{", head)
                if m is None:
                    return None  # one-line array: no cheap estimate
                opener = b"\n" + m.group(1) + b"{"
            else:
                return None
            f.seek(0)
            tail = b""
            for block in iter(lambda: f.read(1 << 22), b""):
                data = tail + block
                total += data.count(opener)
                tail = data[-(len(opener) - 1):]  # an opener split between two blocks is counted once
    return total or None


def _encode_chunk(task: _Task, items: list | None = None) -> dict:
    """Read (unless ``items`` are given), validate, encode and summarise one chunk into
    ``ROOT/chunk-NNNNN``; a small summary back."""
    from sftlab.data.chunk_stats import summarise
    from sftlab.data.conversation import Origin
    from sftlab.data.formats import RecordError
    from sftlab.data.loading import quarantine_entry, record_warnings, validate_record
    from sftlab.tokens.encoding import encode_all

    ctx = _CTX
    out = Path(ctx["root"]) / f"chunk-{task.chunk:05d}"
    out.mkdir(parents=True, exist_ok=True)
    convs, recs, quarantine = [], [], []
    h, other = hashlib.sha256(), _OtherSide(ctx, task.input)
    rec_of: dict[tuple[str, int | None], int] = {}
    warnings: dict[str, int] = {}
    for k, item in enumerate(items if items is not None else _items(task, ctx["paths"], ctx["max_bytes"])):
        line, raw, problem = item[0], item[1], item[2]
        file_line = item[3] if len(item) > 3 else None
        rec = task.rec0 + k
        if problem is None:
            try:
                conv = validate_record(raw, Origin(task.name, line), ctx["policy"], ctx["columns"][task.input])
            except RecordError as e:
                problem = e
        if other.side is not None and other.takes(rec, line, raw, None if problem is not None else conv):
            continue
        if problem is None:
            for code, _ in record_warnings(conv):
                warnings[code] = warnings.get(code, 0) + 1
            convs.append(conv)
            recs.append(rec)
            rec_of[(task.name, line)] = rec
            h.update(_normalised(line, raw, conv))
        else:
            entry = quarantine_entry(task.name, line, raw, problem, file_line).to_dict()
            quarantine.append({"_rec": rec, "stage": "load", **entry})
            h.update(_normalised(line, raw, None))
    examples, enc_q = encode_all(convs, ctx["tokenizer"], ctx["template"], **ctx["options"])
    for e in enc_q:
        quarantine.append({"_rec": rec_of[(e["file"], e["line"])], **e})
    _write_examples(out, examples, [rec_of[(ex.origin.file, ex.origin.line)] for ex in examples])
    summarise(convs, recs, out / "stats")
    ids = sorted([(c.id, r, c.origin.line, 1) for c, r in zip(convs, recs) if c.id is not None] + other.ids,
                 key=lambda x: x[1])  # the other side's ids too: a later copy of an id is quarantined
    keys = b"".join(hashlib.blake2b(x[0].encode("utf-8", "surrogatepass"), digest_size=16).digest() for x in ids)
    np.save(out / "id_keys.npy", np.frombuffer(keys, np.uint8).reshape(len(ids), 16), allow_pickle=False)
    np.save(out / "id_records.npy", np.asarray([x[1] for x in ids], dtype=np.int64), allow_pickle=False)
    np.save(out / "id_lines.npy", np.asarray([-1 if x[2] is None else x[2] for x in ids], dtype=np.int64),
            allow_pickle=False)
    np.save(out / "id_here.npy", np.asarray([x[3] for x in ids], dtype=np.int8), allow_pickle=False)
    with open(out / "quarantine.jsonl", "w", encoding="utf-8") as f:
        from sftlab.data.loading import quarantine_line

        for e in quarantine:
            f.write(quarantine_line(e))
    with open(out / "preview.jsonl", "w", encoding="utf-8") as f:
        seen: set = set()
        for n, c in enumerate(convs):
            if n < 8 or c.slice not in seen:
                f.write(_canonical({"file": task.name, "line": c.origin.line, "slice": c.slice,
                                    "record": c.to_dict()}) + "\n")
            seen.add(c.slice)
    return {"chunk": task.chunk, "records": task.count, "examples": len(examples), "warnings": warnings,
            "tokens": int(sum(len(e.input_ids) for e in examples)), "records_sha256": h.hexdigest(),
            "kept": task.count - other.records, "other_sha256": other.sha256()}


def _normalised(line, raw, conv) -> bytes:
    """A record as the key hashes it: its line and ``conv.to_dict()``, or its raw content where it
    was quarantined while loading (``conv`` None)."""
    return _canonical([line, conv.to_dict() if conv is not None else {"quarantined": raw}]).encode(
        "utf-8", "surrogatepass") + b"\n"


def _task_of(tasks: list[_Task]):
    """``rec -> index of the task holding record rec``: tasks hold consecutive record ranges, in order."""
    import bisect

    firsts = [t.rec0 for t in tasks]
    return lambda rec: bisect.bisect_right(firsts, rec) - 1


class _OtherSide:
    """With ``data.eval_split`` (``_CTX["sides"]``): the records of a chunk that belong to the
    other side. They are hashed (the key covers the whole input) and their ids kept for the
    duplicate-id check; nothing else is done with them. A record quarantined while loading
    belongs to training, as ``load_files`` then ``split_by_hash`` place it."""

    def __init__(self, ctx: dict, input_index: int):
        sides = ctx.get("sides")
        self.side = sides[input_index] if sides else None
        self.share = ctx.get("eval_split", 0.0)
        self.ids: list[tuple] = []
        self.records = 0
        self._h = hashlib.sha256()

    def takes(self, rec: int, line, raw, conv) -> bool:
        """Whether the record (``conv`` None: quarantined while loading) is the other side's."""
        from sftlab.data.split import heldout_key

        held = conv is not None and self.share > 0 and heldout_key(conv) < self.share
        if held == (self.side == "heldout"):
            return False
        self.records += 1
        self._h.update(_normalised(line, raw, conv))
        if conv is not None and conv.id is not None:
            self.ids.append((conv.id, rec, line, 0))
        return True

    def sha256(self) -> str:
        return self._h.hexdigest()


def _slice_order(names) -> list:
    """Slice names sorted, ``None`` (no slice) first."""
    return sorted(set(names), key=lambda s: (s is not None, s or ""))


def _write_examples(out: Path, examples: list, records: list[int]) -> dict:
    """The example arrays of one chunk, and its ``chunk.json`` entry (slice names, counts)."""
    names = _slice_order(e.slice for e in examples)
    code = {s: i for i, s in enumerate(names)}
    lengths = np.asarray([len(e.input_ids) for e in examples], dtype=np.int32)
    ids = np.frombuffer(b"".join(e.input_ids.tobytes() for e in examples), dtype=np.int32) if examples \
        else np.zeros(0, np.int32)
    weights = np.frombuffer(b"".join(e.loss_weights.tobytes() for e in examples), dtype=np.float32) if examples \
        else np.zeros(0, np.float32)
    arrays = {"ids": ids.astype("<i4", copy=False), "weights": weights.astype("<f4", copy=False),
              "lengths": lengths, "slices": np.asarray([code[e.slice] for e in examples], dtype=np.int32),
              "trained": np.asarray([e.trained_tokens for e in examples], dtype=np.int32),
              "records": np.asarray(records, dtype=np.int64),
              "lines": np.asarray([e.origin.line if e.origin and e.origin.line is not None else -1
                                   for e in examples], dtype=np.int64),
              "derived": np.asarray([_DERIVED.index(getattr(e, "derived", None)) for e in examples], dtype=np.int8),
              "lost": np.asarray([getattr(e, "lost_trained_tokens", 0) for e in examples], dtype=np.int32),
              "reasoning": np.asarray([getattr(e, "reasoning_tokens", 0) for e in examples], dtype=np.int32)}
    for name, a in arrays.items():
        np.save(out / f"{name}.npy", a, allow_pickle=False)
    meta_fields: dict[type, list[str]] = {}
    with open(out / "examples.jsonl", "w", encoding="utf-8") as f:
        for e in examples:
            kept = meta_fields.get(type(e))
            if kept is None:
                kept = meta_fields[type(e)] = [fl.name for fl in dc_fields(e) if fl.name not in _NOT_META]
            f.write(_canonical({name: getattr(e, name) for name in kept}) + "\n")
    entry = {"slices": names, "examples": len(examples), "tokens": int(lengths.sum())}
    (out / "chunk.json").write_text(_canonical(entry) + "\n", encoding="utf-8")
    return entry


def _filter_chunk(out: Path, drop: set[int]) -> None:
    """Rewrite a chunk's example files without the examples of the records in ``drop``."""
    records = np.load(out / "records.npy", allow_pickle=False)
    keep = ~np.isin(records, np.fromiter(drop, np.int64, len(drop)))
    arrays = {n: np.load(out / f"{n}.npy", allow_pickle=False) for n in _ARRAYS}
    lengths = arrays["lengths"]
    token_keep = np.repeat(keep, lengths)
    for n in ("ids", "weights"):
        arrays[n] = arrays[n][token_keep]
    for n in _ARRAYS[2:]:
        arrays[n] = arrays[n][keep]
    for n, a in arrays.items():
        np.save(out / f"{n}.npy", a, allow_pickle=False)
    lines = _jsonl_lines(out / "examples.jsonl")
    (out / "examples.jsonl").write_text("".join(x + "\n" for x, k in zip(lines, keep) if k), encoding="utf-8")
    entry = json.loads((out / "chunk.json").read_text(encoding="utf-8"))
    entry.update(examples=int(keep.sum()), tokens=int(arrays["lengths"].sum()))
    (out / "chunk.json").write_text(_canonical(entry) + "\n", encoding="utf-8")


def _build(paths: list[Path], tokenizer, template, options: dict, policy, parts: dict, cache: Path,
           num_proc: int, chunk_records: int, progress: bool, label: str, columns: list,
           names: list | None = None, sides: list | None = None, eval_split: float = 0.0) -> PreparedStore:
    from sftlab.data.chunk_stats import warm
    from sftlab.data.readers import DEFAULT_MAX_RECORD_BYTES
    from sftlab.tokens.encoder import encoder_for

    # Fail early, here, on a template/tokenizer mismatch; the encoder, the signer and the imports
    # are made once, before workers fork, not once per worker.
    encoder_for(tokenizer, template, reasoning=options.get("reasoning", "keep"),
                inline_reasoning=options.get("inline_reasoning", True), mask_source=options.get("mask_source", "contract"))
    warm()
    cache.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    t0 = time.perf_counter()
    try:
        _CTX.update(root=str(root), paths=paths, max_bytes=DEFAULT_MAX_RECORD_BYTES, policy=policy,
                    tokenizer=tokenizer, template=template, options=options, columns=columns,
                    names=names or [None] * len(paths), sides=sides, eval_split=float(eval_split))
        tasks, results = _run_tasks(paths, chunk_records, DEFAULT_MAX_RECORD_BYTES, num_proc, progress, label)
        store_dir = _finalize(root, tasks, results, parts, policy, paths,
                              {"num_proc": num_proc, "chunk_records": chunk_records,
                               "seconds": round(time.perf_counter() - t0, 3)}, cache)
    finally:
        _CTX.clear()
        if root.exists():
            shutil.rmtree(root, ignore_errors=True)
    store = PreparedStore(store_dir, verify=False)
    store.hit = False
    if progress:  # beside the progress bar; a run without progress output stays quiet
        print(f"sftlab: {label}: built {store_dir} ({store.meta['records']:,} records, {len(store):,} examples, "
              f"{store.meta['tokens']:,} tokens) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return store


def _run_tasks(paths: list[Path], chunk_records: int, max_bytes: int, num_proc: int, progress: bool,
               label: str) -> tuple[list[_Task], list[dict]]:
    """Every chunk encoded: in this process as the input streams by, or by ``num_proc`` workers,
    each reading its own consecutive chunks (``_encode_run``). ``(tasks, results)`` in order."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=_estimate_records(paths), desc=label, unit="rec",
                   dynamic_ncols=True, file=sys.stderr)  # counts as they are: "999/1000", never "999/1.00k"
    t0, tokens, results, tasks = time.perf_counter(), 0, [], []

    def done(r: dict) -> None:
        nonlocal tokens
        results.append(r)
        tokens += r["tokens"]
        if bar is not None:
            bar.update(r["records"])
            bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - t0, 1e-9):,.0f}")

    from sftlab import collector

    if num_proc > 1:
        import multiprocessing as mp

        tasks = [t for t, _ in _plan(paths, chunk_records, max_bytes, offsets=True)]  # no items kept
        runs = max(1, min(len(tasks), 2 * num_proc))
        groups = [tasks[k * len(tasks) // runs:(k + 1) * len(tasks) // runs] for k in range(runs)]
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        with mp.get_context("fork").Pool(min(num_proc, runs)) as pool:
            for rs in pool.imap_unordered(_encode_run, [g for g in groups if g]):
                for r in rs:
                    done(r)
    else:
        with collector.paused():
            for t, items in _plan(paths, chunk_records, max_bytes):
                tasks.append(t)
                done(_encode_chunk(t, items))
    if bar is not None:
        bar.total = bar.n  # the estimate was an estimate: the finished bar shows every record, at 100 %
        bar.refresh()
        bar.close()
    return tasks, sorted(results, key=lambda r: r["chunk"])


def _encode_run(tasks: list[_Task]) -> list[dict]:
    """Consecutive chunks in one worker: each source is read once from the first chunk's start."""
    from itertools import islice

    from sftlab import collector

    out, it, at = [], None, None
    with collector.paused():  # as in one process: a chunk's objects are many, alive and acyclic
        for t in tasks:
            if at != (t.input, t.source, t.chunk):
                it = _task_items(t, _CTX["paths"], _CTX["max_bytes"])
            out.append(_encode_chunk(t, list(islice(it, t.count))))
            at = (t.input, t.source, t.chunk + 1)
    return out


def _finalize(root: Path, tasks: list[_Task], results: list[dict], parts: dict, policy, paths: list[Path],
              build: dict, cache: Path) -> Path:
    """Duplicate ids, quarantine, counts, statistics and checksums; then the store is moved to its key."""
    from sftlab.data.chunk_stats import BUILD_ONLY, Summaries, merge

    dirs = [root / f"chunk-{t.chunk:05d}" for t in tasks]
    excluded, dup_entries, excluded_fields, moved = _duplicate_ids(dirs, tasks, paths, policy)
    task_of, by_chunk, dup_by_chunk = _task_of(tasks), {}, {}
    for rec in excluded:
        by_chunk.setdefault(task_of(rec), set()).add(rec)
    for e in dup_entries:
        dup_by_chunk.setdefault(task_of(e["_rec"]), []).append(e)
    for c, drop in by_chunk.items():
        _filter_chunk(dirs[c], drop)
    # quarantine: the load stage of every chunk, then the encode stage (as load_files + encode_all order them)
    counts, per_input = {}, [0] * len(paths)
    for t, r in zip(tasks, results):  # records of this store's side (all of them without eval_split)
        counts.setdefault(t.name, {"path": t.name, "records": 0, "accepted": 0, "quarantined": 0})
        n = r["kept"] + moved.get(t.chunk, 0)  # tasks are in chunk order: t.chunk is the task's index
        counts[t.name]["records"] += n
        per_input[t.input] += n
    from sftlab.data.loading import quarantine_line

    unencoded = 0
    with open(root / "quarantine.jsonl", "w", encoding="utf-8") as out:
        for stage in ("load", "encode"):
            for c, d in enumerate(dirs):
                entries = [json.loads(x) for x in _jsonl_lines(d / "quarantine.jsonl")]
                if stage == "load":
                    entries += dup_by_chunk.get(c, [])
                    entries.sort(key=lambda e: e["_rec"])
                for e in entries:
                    if e.get("stage") != stage or (stage == "encode" and e["_rec"] in excluded):
                        continue
                    counts[tasks[c].name]["quarantined"] += 1
                    unencoded += stage == "encode"
                    out.write(quarantine_line({k: v for k, v in e.items() if k != "_rec"}))
    for f in counts.values():
        f["accepted"] = f["records"] - f["quarantined"]
    column = lambda name: np.concatenate([np.load(d / f"{name}.npy") for d in dirs])  # noqa: E731
    lengths, derived = column("lengths").astype(np.int64), column("derived")
    encoded = (lengths, column("trained").astype(np.int64), unencoded, parts["template"]["name"])
    summary = {"expanded_examples": int((derived == 1).sum()), "expanded_tokens": int(lengths[derived == 1].sum()),
               "overflow_examples": int((derived == 2).sum()), "overflow_tokens": int(lengths[derived == 2].sum()),
               "lost_trained_tokens": int(column("lost").astype(np.int64).sum())}
    warnings: dict[str, int] = {}
    for r in results:
        for code, n in r["warnings"].items():
            warnings[code] = warnings.get(code, 0) + n
    stats = merge(Summaries([d / "stats" for d in dirs], [t.name for t in tasks], excluded), policy,
                  excluded_fields, encoded)
    stats["lengths"]["extra"] = summary
    _reasoning_share(stats, dirs)
    _merge_preview(root, dirs, excluded)
    for d in dirs:
        for name in ("quarantine.jsonl", "id_keys.npy", "id_records.npy", "id_lines.npy", "id_here.npy",
                     "preview.jsonl", *(f"stats/{n}" for n in BUILD_ONLY)):
            (d / name).unlink()
    # keys: records digest per input, then the store key
    per_input_records, per_input = per_input, {}
    for t, r in zip(tasks, results):
        per_input.setdefault(t.input, hashlib.sha256()).update(r["records_sha256"].encode())
    input_digests = [per_input[i].hexdigest() for i in range(len(paths))]
    split = None
    if "split" in parts:  # the key covers the other side's records too (their ids decide duplicates)
        other: dict[int, hashlib._Hash] = {}
        for t, r in zip(tasks, results):
            other.setdefault(t.input, hashlib.sha256()).update(r["other_sha256"].encode())
        parts = {**parts, "other": [other[i].hexdigest() for i in range(len(paths))]}
        split = {**parts["split"], "records": per_input_records}
    key = _digest({**parts, "records": input_digests})
    chunks = []
    for t, d in zip(tasks, dirs):
        entry = json.loads((d / "chunk.json").read_text(encoding="utf-8"))
        chunks.append({"dir": d.name, "name": t.name, "input": t.input, "first_record": t.rec0,
                       "records": t.count, **entry})
    (root / "stats.json").write_text(json.dumps({**stats, "files": list(counts.values())}, indent=2,
                                                ensure_ascii=False) + "\n", encoding="utf-8")
    checksums, stamps = {}, {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(root))
            digest, stamps[rel] = _hashed(p)
            checksums[rel] = [p.stat().st_size, digest]
    records_sha = hashlib.sha256("".join(input_digests).encode()).hexdigest()
    meta = {"format": FORMAT, "key": key, "parts": {**parts, "records": input_digests},
            "records_sha256": records_sha, "examples": sum(c["examples"] for c in chunks),
            "tokens": sum(c["tokens"] for c in chunks), "records": sum(per_input_records),
            **({"split": split} if split is not None else {}),
            "excluded": sorted(excluded),  # later copies of an id: left out of the summaries too
            "files": list(counts.values()), "encoding_summary": summary,
            "warnings": dict(sorted(warnings.items(), key=lambda kv: (-kv[1], kv[0]))), "slices": _slice_order(s for c in chunks for s in c["slices"]),
            "chunks": chunks, "checksums": checksums, "build": build}
    (root / "store.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    final = cache / key
    if final.exists():
        try:
            PreparedStore(final, verify=True)
            return final  # the same records, reformatted: the store is already there
        except StoreError as e:
            print(f"sftlab: prepared store {final} is damaged ({e}); replacing it", file=sys.stderr)
            shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(root, final)  # the files keep their stamps: a rename of their folder changes none
    except OSError:  # another process finished the same store first
        if not (final / "store.json").is_file():
            raise
        return final
    _write_stamps(_stamps_path(final), {rel: st for rel, st in stamps.items() if st is not None})
    return final


def _reasoning_share(stats: dict, dirs: list[Path]) -> None:
    """``tools.slices[*].reasoning_share`` in tokens (trained reasoning tokens over trained tokens
    of the examples), as ``compute_stats(encoded=...)`` gives it."""
    sums: dict[str, list[int]] = {}
    for d in dirs:
        names = json.loads((d / "chunk.json").read_text(encoding="utf-8"))["slices"]
        codes = np.load(d / "slices.npy")
        reasoning, trained = np.load(d / "reasoning.npy").astype(np.int64), np.load(d / "trained.npy").astype(np.int64)
        for code, name in enumerate(names):
            mask = codes == code
            for key in ("all", name) if name is not None else ("all",):
                acc = sums.setdefault(key, [0, 0])
                acc[0] += int(reasoning[mask].sum())
                acc[1] += int(trained[mask].sum())
    tools = stats["tools"]
    tools["unit"] = "tokens"
    for name, row in tools["slices"].items():
        r, t = sums.get(name, (0, 0))
        row["reasoning_share"] = round(r / t, 6) if t else 0.0


def _duplicate_ids(dirs: list[Path], tasks: list[_Task], paths: list[Path], policy):
    """Records whose id an earlier record has (``load_files``' rule, over every chunk and both
    sides of ``data.eval_split``): ``(their record numbers, the quarantine entries this store
    reports, the metadata counts of those in this store's summaries (to take out of the stats),
    records moved per chunk)``. A later copy belongs to training (``load_files`` quarantines it
    before the split): an input read for its held-out side reports none and drops its copies
    from its count (-1), one read for its training side reports the copies that hashed to the
    held-out side too (+1)."""
    from collections import Counter

    from sftlab.data.chunk_stats import _first_rows
    from sftlab.data.conversation import Origin
    from sftlab.data.loading import duplicate_id_error, quarantine_entry, validate_record
    from sftlab.data.stats import COUNTED_FIELDS, NONE

    load = lambda name, dt, shape=(0,): np.concatenate(  # noqa: E731
        [np.load(d / f"id_{name}.npy", allow_pickle=False) for d in dirs]) if dirs else np.zeros(shape, dt)
    all_keys, all_recs = load("keys", np.uint8, (0, 16)), load("records", np.int64)
    all_lines, all_here = load("lines", np.int64), load("here", np.int8)
    firsts, is_first = _first_rows(all_keys)
    dups = np.flatnonzero(~is_first)
    if not len(dups):
        return set(), [], [], {}
    excluded = {int(all_recs[i]) for i in dups}
    first_of = {int(all_recs[i]): int(all_recs[firsts[i]]) for i in dups}
    line_of = {int(all_recs[i]): int(all_lines[i]) for i in set(firsts[dups].tolist())}
    here = {int(all_recs[i]) for i in dups if all_here[i]}
    sides = _CTX.get("sides") or [None] * len(paths)

    task_of = _task_of(tasks)
    report, moved = set(), {}
    for rec in excluded:
        k = task_of(rec)
        t = tasks[k]
        side = sides[t.input]
        if side != "heldout":
            report.add(rec)
        if side == "train" and rec not in here or side == "heldout" and rec in here:
            moved[k] = moved.get(k, 0) + (1 if side == "train" else -1)
    entries, field_counts = [], []
    by_task: dict[int, list[int]] = {}
    for rec in sorted(report | here):
        by_task.setdefault(task_of(rec), []).append(rec)
    for k, wanted in by_task.items():
        t, wanted = tasks[k], set(wanted)
        for j, item in enumerate(_items(t, paths, _CTX["max_bytes"])):
            rec, line, raw = t.rec0 + j, item[0], item[1]
            if rec not in wanted:
                continue
            conv = validate_record(raw, Origin(t.name, line), policy, _CTX["columns"][t.input])
            if rec in report:
                first = tasks[task_of(first_of[rec])]
                error = duplicate_id_error(conv.id, Origin(first.name, line_of[first_of[rec]]))
                entries.append({"_rec": rec, "stage": "load",
                                **quarantine_entry(t.name, line, raw, error, item[3] if len(item) > 3 else None).to_dict()})
            if rec in here:
                field_counts.append({"counts": {f: {getattr(conv, f) or NONE: 1} for f in COUNTED_FIELDS},
                                     "refuse": Counter([str(conv.policy_category)] if conv.expected == "refuse" else []),
                                     "comply": Counter([str(conv.policy_category)] if conv.expected == "comply" else [])})
    return excluded, entries, field_counts, moved


def _merge_preview(root: Path, dirs: list[Path], excluded: set[int]) -> None:
    rows = [json.loads(x) for d in dirs for x in _jsonl_lines(d / "preview.jsonl")]
    firsts, seen = [], set()
    for r in rows:
        if r["slice"] not in seen:
            seen.add(r["slice"])
            firsts.append(r)
    rest = [r for r in rows if not any(r is f for f in firsts)]
    with open(root / "preview.jsonl", "w", encoding="utf-8") as f:
        for r in (firsts + rest)[:16]:
            f.write(_canonical(r) + "\n")
