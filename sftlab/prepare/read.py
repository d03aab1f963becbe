"""Opening a prepared store: its identity and checksums checked, its per-example arrays in memory
(4 bytes each), its tokens memory-mapped; and the store an index entry names, when it is the
one this run asks for."""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np

from sftlab import fingerprints
from sftlab.data.chunk_stats import Summaries
from sftlab.data.conversation import Origin
from sftlab.data.formats import to_conversation
from sftlab.prepare import key as store_key
from sftlab.tokens.rows import Table

ARRAYS = ("ids", "weights", "lengths", "slices", "trained", "records", "lines", "derived", "lost", "reasoning")
"""The arrays of every chunk (``chunk-NNNNN/NAME.npy``)."""


class StoreError(ValueError):
    """A store that cannot be used as it is (missing, truncated or altered files)."""


def jsonl_lines(path: Path) -> list[str]:
    """The lines of a JSONL file the store wrote, split on ``\\n`` only: a JSON string may hold
    U+2028, U+2029 or U+0085 raw, where ``str.splitlines`` would cut the record."""
    return [x for x in path.read_text(encoding="utf-8").split("\n") if x]


class PreparedStore(Table):
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
        if not isinstance(self.meta, dict) or self.meta.get("format") != store_key.FORMAT:
            found = self.meta.get("format") if isinstance(self.meta, dict) else None
            raise StoreError(f"{meta_path}: store format {found}, this sftlab reads {store_key.FORMAT}")
        self._check_identity(meta_path)
        if verify:
            self.verify()
        self.key: str = self.meta["key"]
        self.hit: bool | None = None
        self._map_chunks(self.meta["chunks"])

    def _map_chunks(self, chunks: list[dict]) -> None:
        """Per-example arrays read, token arrays memory-mapped, chunk by chunk."""
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
        if not isinstance(parts, dict) or store_key.store_key(parts) != key:
            raise StoreError(f"{meta_path}: its key parts do not hash to its key (altered)")

    def _listed(self) -> dict:
        """``store.json``'s checksum list, checked to be complete: every file in the folder
        (``store.json`` aside) and every file a store of its chunks holds is in it."""
        listed = self.meta.get("checksums")
        if not isinstance(listed, dict) or not listed:
            raise StoreError(f"{self.path / 'store.json'}: lists no checksums (damaged)")
        required = {"quarantine.jsonl", "stats.json", "preview.jsonl"} | {
            f"{c['dir']}/{name}" for c in self.meta.get("chunks", ())
            for name in (*(f"{a}.npy" for a in ARRAYS), "examples.jsonl", "chunk.json")}
        root, on_disk = str(self.path), set()
        for d, _, names in os.walk(root):  # scandir: no stat per file
            prefix = d[len(root) + 1:] + "/" if d != root else ""
            on_disk.update(prefix + f for f in names)
        unlisted = sorted((required | on_disk) - set(listed) - {"store.json"})
        if unlisted:
            raise StoreError(f"{self.path / unlisted[0]}: not in store.json's checksums (the list is incomplete: "
                             "damaged)")
        return listed

    def verify(self) -> None:
        """Every file of the store is listed, and has its size and sha256; raises ``StoreError``
        naming the first that does not.

        The list must be complete (``_listed``), so a list emptied or cut short is damage, not a
        smaller store. A file is hashed unless its stat stamp (size, mtime, ctime, inode, device)
        equals the one recorded when its content last hashed to the listed sha256
        (``CACHE/index/KEY.stamps.json``; see ``sftlab.prepare.key``) and it is not drawn for the
        sample: on every open, files are drawn at random among the stamped ones and hashed anyway,
        up to ``SAMPLE_BYTES`` in all (a store that small is hashed whole every time). A stamp is
        a speed-up, not the truth: a changed file is always hashed again, and a stamp file edited
        to vouch for a changed file is caught at once on a small store, and on a large one by the
        draws (each open reads ``SAMPLE_BYTES`` of it)."""
        listed = self._listed()
        where = store_key.stamps_path(self.path)
        known = store_key.read_stamps(where)
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
            if known.get(rel) == store_key.stamp(st):
                fresh[rel] = known[rel]
                stamped.append((rel, size, digest))
                continue
            found, stamp = store_key.hashed(p)
            if found != digest:
                raise StoreError(f"{p}: sha256 differs from the one recorded (altered)")
            if stamp is not None:
                fresh[rel] = stamp
        self._sample(stamped)
        if fresh != known:
            store_key.write_stamps(where, fresh)

    def _sample(self, stamped: list[tuple[str, int, str]]) -> None:
        """Stamped files drawn at random, up to ``SAMPLE_BYTES``, hashed anyway."""
        random.SystemRandom().shuffle(stamped)
        budget = store_key.SAMPLE_BYTES
        for rel, size, digest in stamped:
            if size > budget:
                continue
            budget -= size
            if fingerprints.file_sha256(self.path / rel) != digest:
                raise StoreError(f"{self.path / rel}: sha256 differs from the one recorded (altered, with its stat "
                                 "stamp written back)")

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
        out = []
        for line in jsonl_lines(self.path / "preview.jsonl"):
            d = json.loads(line)
            out.append(to_conversation(d["record"], Origin(d["file"], d["line"])))
        return out

    def summaries(self) -> Summaries:
        chunks = self.meta["chunks"]
        return Summaries([self.path / c["dir"] / "stats" for c in chunks], [c["name"] for c in chunks],
                         set(self.meta.get("excluded", ())))

    def describe(self, hit: bool | None = None) -> dict:
        """The manifest's ``data.store`` entry."""
        return {"key": self.key, "path": str(self.path), "hit": self.hit if hit is None else hit,
                "examples": len(self), "tokens": int(self.meta["tokens"]), "chunks": len(self.meta["chunks"]),
                "records_sha256": self.meta["records_sha256"]}


def open_indexed(cache: Path, index: Path, verify: bool, parts: dict, raw: list) -> PreparedStore | None:
    """The store ``index`` names, when the entry and the store are what this run asks for: the
    entry names these raw input digests and a ``store.json`` of that sha256, the store is its key's
    (``PreparedStore``) and was built from these inputs with these settings (its key parts but the
    records equal ``parts``). An entry that names another store is a miss (the records are read
    and the key found again, where a damaged store of that key is replaced); a store found
    damaged here is removed."""
    entry = store_key.read_index(index, raw)
    if entry is None:
        return None  # no entry, or one of other inputs, or an older sftlab's
    key, sha = entry
    path = cache / key
    try:
        if fingerprints.file_sha256(path / "store.json") != sha:
            return None  # the entry names another store.json than the one there (an entry or a store altered)
    except OSError:
        return None
    try:
        store = PreparedStore(path, verify=verify)
        built = {k: v for k, v in store.meta["parts"].items() if k not in ("records", "other")}
        if built != json.loads(fingerprints.canonical_json(parts, default=str)):
            return None  # another store (other inputs or settings): not ours to use or remove
        return store
    except (StoreError, OSError) as e:
        print(f"sftlab: prepared store {path} is damaged ({e}); rebuilding it", file=sys.stderr)
        shutil.rmtree(path, ignore_errors=True)
        return None
