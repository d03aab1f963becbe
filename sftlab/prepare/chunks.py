"""One chunk of a store, encoded and written: what a worker process does with a ``ChunkTask``.

Every function here takes the build's ``BuildContext`` as an argument: the main process passes
its own, and a worker process gets it once, when the pool forks it (``sftlab.prepare.build``),
never by pickling the tokenizer per task. A chunk's folder holds its example arrays, its
quarantine, its summaries for the statistics (``sftlab.data.chunk_stats``), the 16-byte keys of
its ids (the duplicate-id rule is applied over every chunk by the main process) and a few
accepted records for the mask preview."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields as dc_fields
from pathlib import Path
from typing import Any

import numpy as np

from sftlab.data.chunk_stats import BUILD_ONLY, summarise
from sftlab.data.conversation import Origin
from sftlab.data.formats import RecordError
from sftlab.data.loading import DuplicateIds, quarantine_entry, quarantine_line, record_warnings, validate_record
from sftlab.data.split import heldout_key
from sftlab.fingerprints import canonical_json, data_bytes
from sftlab.prepare.plan import ChunkTask, chunk_items
from sftlab.prepare.read import ARRAYS, jsonl_lines
from sftlab.tokens import encoding
from sftlab.tokens.rows import slice_order

_DERIVED = (None, "turn", "overflow")
_NOT_META = {"input_ids", "loss_weights", "slice", "trained_tokens", "origin", "trace"}
_ID_ARRAYS = ("id_keys", "id_records", "id_lines", "id_here")


@dataclass(frozen=True)
class BuildContext:
    """What every chunk of one build is encoded with."""
    paths: list[Path]
    """The inputs, as read (a stream's spooled copy)."""
    max_bytes: int
    """The largest record a reader accepts."""
    tokenizer: Any
    template: Any
    options: dict
    """``encode_all``'s keyword options."""
    policy: Any
    columns: list
    """One ``sftlab.data.formats.Columns`` or ``None`` per input."""
    names: list
    """The name each input's records are reported under (``None``: its own)."""
    sides: list | None = None
    """One of ``None``, ``"train"``, ``"heldout"`` per input, with ``data.eval_split``."""
    eval_split: float = 0.0
    root: Path | None = None
    """The build folder (``CACHE/.build-*``, set when it is made): chunk k is written to
    ``root/chunk-{k:05d}``."""


def chunk_dir(ctx: BuildContext, chunk: int) -> Path:
    return ctx.root / f"chunk-{chunk:05d}"


def encode_chunk(ctx: BuildContext, task: ChunkTask, items: list | None = None) -> dict:
    """Read (unless ``items`` are given), validate, encode and summarise one chunk into
    ``ROOT/chunk-NNNNN``; a small summary back."""
    out = chunk_dir(ctx, task.chunk)
    out.mkdir(parents=True, exist_ok=True)
    convs, recs, quarantine = [], [], []
    h, other = hashlib.sha256(), _OtherSide(ctx, task.input)
    rec_of: dict[tuple[str, int | None], int] = {}
    warnings: dict[str, int] = {}
    for k, item in enumerate(items if items is not None else chunk_items(task, ctx.paths, ctx.max_bytes)):
        line, raw, problem = item[0], item[1], item[2]
        file_line = item[3] if len(item) > 3 else None
        rec = task.first_record + k
        if problem is None:
            try:
                conv = validate_record(raw, Origin(task.name, line), ctx.policy, ctx.columns[task.input])
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
            h.update(normalised(line, raw, conv))
        else:
            entry = quarantine_entry(task.name, line, raw, problem, file_line).to_dict()
            quarantine.append({"_rec": rec, "stage": "load", **entry})
            h.update(normalised(line, raw, None))
    examples, enc_q = encoding.encode_all(convs, ctx.tokenizer, ctx.template, **ctx.options)
    for e in enc_q:
        quarantine.append({"_rec": rec_of[(e["file"], e["line"])], **e})
    write_examples(out, examples, [rec_of[(ex.origin.file, ex.origin.line)] for ex in examples])
    summarise(convs, recs, out / "stats")
    _write_ids(out, sorted([(c.id, r, c.origin.line, 1) for c, r in zip(convs, recs) if c.id is not None]
                           + other.ids, key=lambda x: x[1]))  # the other side's ids too: they decide duplicates
    with open(out / "quarantine.jsonl", "w", encoding="utf-8") as f:
        for e in quarantine:
            f.write(quarantine_line(e))
    _write_preview(out, task.name, convs)
    return {"chunk": task.chunk, "records": task.count, "examples": len(examples), "warnings": warnings,
            "tokens": int(sum(len(e.input_ids) for e in examples)), "records_sha256": h.hexdigest(),
            "kept": task.count - other.records, "other_sha256": other.sha256()}


def normalised(line, raw, conv) -> bytes:
    """A record as the key hashes it: its line and ``conv.to_dict()``, or its raw content where it
    was quarantined while loading (``conv`` None)."""
    return data_bytes([line, conv.to_dict() if conv is not None else {"quarantined": raw}]) + b"\n"


def _write_ids(out: Path, ids: list[tuple]) -> None:
    """``(id, record, line, here)`` of every id of the chunk, in record order, as arrays: the
    id's key (``DuplicateIds.key``), its record number and line, and whether the record is on this
    store's side (1) or only hashed for the other (0)."""
    keys = b"".join(DuplicateIds.key(x[0]) for x in ids)
    np.save(out / "id_keys.npy", np.frombuffer(keys, np.uint8).reshape(len(ids), 16), allow_pickle=False)
    np.save(out / "id_records.npy", np.asarray([x[1] for x in ids], dtype=np.int64), allow_pickle=False)
    np.save(out / "id_lines.npy", np.asarray([-1 if x[2] is None else x[2] for x in ids], dtype=np.int64),
            allow_pickle=False)
    np.save(out / "id_here.npy", np.asarray([x[3] for x in ids], dtype=np.int8), allow_pickle=False)


def _write_preview(out: Path, name: str, convs: list) -> None:
    """The first records of the chunk and the first of each slice, for the mask preview."""
    with open(out / "preview.jsonl", "w", encoding="utf-8") as f:
        seen: set = set()
        for n, c in enumerate(convs):
            if n < 8 or c.slice not in seen:
                f.write(canonical_json({"file": name, "line": c.origin.line, "slice": c.slice,
                                        "record": c.to_dict()}, default=str) + "\n")
            seen.add(c.slice)


class _OtherSide:
    """With ``data.eval_split`` (``BuildContext.sides``): the records of a chunk that belong to
    the other side. They are hashed (the key covers the whole input) and their ids kept for the
    duplicate-id check; nothing else is done with them. A record quarantined while loading
    belongs to training, as ``load_files`` then ``split_by_hash`` place it."""

    def __init__(self, ctx: BuildContext, input_index: int):
        self.side = ctx.sides[input_index] if ctx.sides else None
        self.share = ctx.eval_split
        self.ids: list[tuple] = []
        self.records = 0
        self._h = hashlib.sha256()

    def takes(self, rec: int, line, raw, conv) -> bool:
        """Whether the record (``conv`` None: quarantined while loading) is the other side's."""
        held = conv is not None and self.share > 0 and heldout_key(conv) < self.share
        if held == (self.side == "heldout"):
            return False
        self.records += 1
        self._h.update(normalised(line, raw, conv))
        if conv is not None and conv.id is not None:
            self.ids.append((conv.id, rec, line, 0))
        return True

    def sha256(self) -> str:
        return self._h.hexdigest()


def write_examples(out: Path, examples: list, records: list[int]) -> dict:
    """The example arrays of one chunk, and its ``chunk.json`` entry (slice names, counts)."""
    names = slice_order(e.slice for e in examples)
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
    with open(out / "examples.jsonl", "wb") as f:
        for e in examples:
            kept = meta_fields.get(type(e))
            if kept is None:
                kept = meta_fields[type(e)] = [fl.name for fl in dc_fields(e) if fl.name not in _NOT_META]
            f.write(data_bytes({name: getattr(e, name) for name in kept}) + b"\n")
    entry = {"slices": names, "examples": len(examples), "tokens": int(lengths.sum())}
    (out / "chunk.json").write_text(canonical_json(entry, default=str) + "\n", encoding="utf-8")
    return entry


def filter_chunk(out: Path, drop: set[int]) -> None:
    """Rewrite a chunk's example files without the examples of the records in ``drop``."""
    records = np.load(out / "records.npy", allow_pickle=False)
    keep = ~np.isin(records, np.fromiter(drop, np.int64, len(drop)))
    arrays = {n: np.load(out / f"{n}.npy", allow_pickle=False) for n in ARRAYS}
    token_keep = np.repeat(keep, arrays["lengths"])
    for n in ("ids", "weights"):
        arrays[n] = arrays[n][token_keep]
    for n in ARRAYS[2:]:
        arrays[n] = arrays[n][keep]
    for n, a in arrays.items():
        np.save(out / f"{n}.npy", a, allow_pickle=False)
    lines = jsonl_lines(out / "examples.jsonl")
    (out / "examples.jsonl").write_text("".join(x + "\n" for x, k in zip(lines, keep) if k), encoding="utf-8")
    entry = json.loads((out / "chunk.json").read_text(encoding="utf-8"))
    entry.update(examples=int(keep.sum()), tokens=int(arrays["lengths"].sum()))
    (out / "chunk.json").write_text(canonical_json(entry, default=str) + "\n", encoding="utf-8")


def scratch_files() -> tuple[str, ...]:
    """The files of a chunk folder that only the build reads (removed before the store is published)."""
    return ("quarantine.jsonl", *(f"{n}.npy" for n in _ID_ARRAYS), "preview.jsonl",
            *(f"stats/{n}" for n in BUILD_ONLY))
