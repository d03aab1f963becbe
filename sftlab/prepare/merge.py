"""The chunks of a build put together by the main process: the duplicate-id rule over every
chunk, one quarantine, counts per input, the statistics, the key, the checksums; then the store
is moved to its key's folder. Nothing here depends on how many processes encoded the chunks,
so the store is the same bit for bit for any ``num_proc``."""
from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sftlab.data.chunk_stats import Summaries, merge
from sftlab.data.conversation import Origin
from sftlab.data.loading import DuplicateIds, duplicate_id_error, quarantine_entry, quarantine_line, validate_record
from sftlab.data.stats import COUNTED_FIELDS, NONE
from sftlab.fingerprints import chained_sha256, canonical_json
from sftlab.prepare import key as store_key
from sftlab.prepare.chunks import BuildContext, chunk_dir, filter_chunk, scratch_files
from sftlab.prepare.plan import ChunkTask, chunk_items, task_of
from sftlab.prepare.read import PreparedStore, StoreError, jsonl_lines
from sftlab.tokens.rows import slice_order


@dataclass
class Copies:
    """Later copies of an id, over every chunk and both sides of ``data.eval_split``."""
    excluded: set = field(default_factory=set)
    """Record numbers of every later copy: left out of the examples and the summaries."""
    entries: list = field(default_factory=list)
    """The quarantine entries this store reports (``_rec``: the record number)."""
    field_counts: list = field(default_factory=list)
    """Metadata counts of the copies in this store's summaries (taken out of the statistics)."""
    moved: dict = field(default_factory=dict)
    """Records moved into (+) or out of (-) each chunk's count by the rule (its index: the count)."""


def finalize(ctx: BuildContext, tasks: list[ChunkTask], results: list[dict], parts: dict, build: dict,
             cache: Path) -> Path:
    """Duplicate ids, quarantine, counts, statistics and checksums; then the store is moved to its key."""
    root, dirs = ctx.root, [chunk_dir(ctx, t.chunk) for t in tasks]
    copies = duplicate_ids(ctx, dirs, tasks)
    dup_by_chunk = _drop_copies(dirs, tasks, copies)
    counts, per_input, unencoded = _write_quarantine(root, dirs, tasks, results, copies, dup_by_chunk,
                                                     len(ctx.paths))
    summary, stats = _statistics(dirs, tasks, copies, ctx.policy, unencoded, parts["template"]["name"])
    _merge_preview(root, dirs)
    for d in dirs:
        for name in scratch_files():
            (d / name).unlink()
    digests, parts, split = _record_digests(tasks, results, parts, per_input)
    key = store_key.store_key({**parts, "records": digests})
    chunks = [{"dir": d.name, "name": t.name, "input": t.input, "first_record": t.first_record,
               "records": t.count, **json.loads((d / "chunk.json").read_text(encoding="utf-8"))}
              for t, d in zip(tasks, dirs)]
    (root / "stats.json").write_text(json.dumps({**stats, "files": list(counts.values())}, indent=2,
                                                ensure_ascii=False) + "\n", encoding="utf-8")
    checksums, stamps = _checksums(root)
    warnings = Counter()
    for r in results:
        warnings.update(r["warnings"])
    meta = {"format": store_key.FORMAT, "key": key, "parts": {**parts, "records": digests},
            "records_sha256": chained_sha256(digests), "examples": sum(c["examples"] for c in chunks),
            "tokens": sum(c["tokens"] for c in chunks), "records": sum(per_input),
            **({"split": split} if split is not None else {}),
            "excluded": sorted(copies.excluded),  # later copies of an id: left out of the summaries too
            "files": list(counts.values()), "encoding_summary": summary,
            "warnings": dict(sorted(warnings.items(), key=lambda kv: (-kv[1], kv[0]))),
            "slices": slice_order(s for c in chunks for s in c["slices"]),
            "chunks": chunks, "checksums": checksums, "build": build}
    (root / "store.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return _publish(root, cache / key, stamps)


def duplicate_ids(ctx: BuildContext, dirs: list[Path], tasks: list[ChunkTask]) -> Copies:
    """Records whose id an earlier record has (``sftlab.data.loading.DuplicateIds``, the rule
    ``load_files`` applies, over every chunk and both sides of ``data.eval_split``). A later copy
    belongs to training (``load_files`` quarantines it before the split): an input read for its
    held-out side reports none and drops its copies from its count (-1), one read for its
    training side reports the copies that hashed to the held-out side too (+1)."""
    load = lambda name, dt, shape=(0,): np.concatenate(  # noqa: E731
        [np.load(d / f"id_{name}.npy", allow_pickle=False) for d in dirs]) if dirs else np.zeros(shape, dt)
    keys, recs = load("keys", np.uint8, (0, 16)), load("records", np.int64)
    lines, here_flags = load("lines", np.int64), load("here", np.int8)
    first_of = _later_copies(keys)
    if not first_of:
        return Copies()
    copies = Copies(excluded={int(recs[i]) for i in first_of})
    first_rec = {int(recs[i]): int(recs[f]) for i, f in first_of.items()}
    line_of = {int(recs[f]): int(lines[f]) for f in set(first_of.values())}
    here = {int(recs[i]) for i in first_of if here_flags[i]}
    sides = ctx.sides or [None] * len(ctx.paths)
    where, report = task_of(tasks), set()
    for rec in copies.excluded:
        k = where(rec)
        side = sides[tasks[k].input]
        if side != "heldout":
            report.add(rec)
        if side == "train" and rec not in here or side == "heldout" and rec in here:
            copies.moved[k] = copies.moved.get(k, 0) + (1 if side == "train" else -1)
    _copy_entries(ctx, tasks, copies, report, here, lambda rec: (first_rec[rec], line_of[first_rec[rec]]))
    return copies


def _later_copies(keys: np.ndarray) -> dict[int, int]:
    """``{row: row of the first record with its id}`` for every later copy, the rows in record
    order: ``DuplicateIds`` decides, over the rows whose key occurs more than once."""
    if not len(keys):
        return {}
    flat = np.ascontiguousarray(keys).view(np.dtype((np.void, 16))).ravel()
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    rule, first_of = DuplicateIds(), {}
    for row in np.flatnonzero(counts[inverse.ravel()] > 1).tolist():  # a key seen once is no copy
        first = rule.first(flat[row].tobytes(), row)
        if first is not None:
            first_of[row] = first
    return first_of


def _copy_entries(ctx: BuildContext, tasks: list[ChunkTask], copies: Copies, report: set, here: set,
                  first_of) -> None:
    """The quarantine entries of the copies this store reports, and the metadata counts of those
    in its summaries: their records read again (``first_of(rec)``: the first's record and line)."""
    where, by_task = task_of(tasks), {}
    for rec in sorted(report | here):
        by_task.setdefault(where(rec), []).append(rec)
    for k, wanted in by_task.items():
        t, wanted = tasks[k], set(wanted)
        for j, item in enumerate(chunk_items(t, ctx.paths, ctx.max_bytes)):
            rec, line, raw = t.first_record + j, item[0], item[1]
            if rec not in wanted:
                continue
            conv = validate_record(raw, Origin(t.name, line), ctx.policy, ctx.columns[t.input])
            if rec in report:
                first, first_line = first_of(rec)
                error = duplicate_id_error(conv.id, Origin(tasks[where(first)].name, first_line))
                copies.entries.append({"_rec": rec, "stage": "load", **quarantine_entry(
                    t.name, line, raw, error, item[3] if len(item) > 3 else None).to_dict()})
            if rec in here:
                copies.field_counts.append({
                    "counts": {f: {getattr(conv, f) or NONE: 1} for f in COUNTED_FIELDS},
                    "refuse": Counter([str(conv.policy_category)] if conv.expected == "refuse" else []),
                    "comply": Counter([str(conv.policy_category)] if conv.expected == "comply" else [])})


def _drop_copies(dirs: list[Path], tasks: list[ChunkTask], copies: Copies) -> dict[int, list]:
    """The copies' examples taken out of their chunks; their quarantine entries by chunk."""
    where, by_chunk, entries = task_of(tasks), {}, {}
    for rec in copies.excluded:
        by_chunk.setdefault(where(rec), set()).add(rec)
    for e in copies.entries:
        entries.setdefault(where(e["_rec"]), []).append(e)
    for c, drop in by_chunk.items():
        filter_chunk(dirs[c], drop)
    return entries


def _write_quarantine(root: Path, dirs: list[Path], tasks: list[ChunkTask], results: list[dict], copies: Copies,
                      dup_by_chunk: dict, inputs: int) -> tuple[dict, list[int], int]:
    """``ROOT/quarantine.jsonl``: the load stage of every chunk, then the encode stage (as
    ``load_files`` + ``encode_all`` order them). ``(counts per file, records per input, records
    quarantined while encoding)``."""
    counts, per_input = {}, [0] * inputs
    for t, r in zip(tasks, results):  # records of this store's side (all of them without eval_split)
        counts.setdefault(t.name, {"path": t.name, "records": 0, "accepted": 0, "quarantined": 0})
        n = r["kept"] + copies.moved.get(t.chunk, 0)  # tasks are in chunk order: t.chunk is the task's index
        counts[t.name]["records"] += n
        per_input[t.input] += n
    unencoded = 0
    with open(root / "quarantine.jsonl", "w", encoding="utf-8") as out:
        for stage in ("load", "encode"):
            for c, d in enumerate(dirs):
                entries = [json.loads(x) for x in jsonl_lines(d / "quarantine.jsonl")]
                if stage == "load":
                    entries += dup_by_chunk.get(c, [])
                    entries.sort(key=lambda e: e["_rec"])
                for e in entries:
                    if e.get("stage") != stage or (stage == "encode" and e["_rec"] in copies.excluded):
                        continue
                    counts[tasks[c].name]["quarantined"] += 1
                    unencoded += stage == "encode"
                    out.write(quarantine_line({k: v for k, v in e.items() if k != "_rec"}))
    for f in counts.values():
        f["accepted"] = f["records"] - f["quarantined"]
    return counts, per_input, unencoded


def _statistics(dirs: list[Path], tasks: list[ChunkTask], copies: Copies, policy, unencoded: int,
                template: str) -> tuple[dict, dict]:
    """``(encoding summary, statistics)`` from the chunks' arrays and summaries."""
    column = lambda name: np.concatenate([np.load(d / f"{name}.npy") for d in dirs])  # noqa: E731
    lengths, derived = column("lengths").astype(np.int64), column("derived")
    encoded = (lengths, column("trained").astype(np.int64), unencoded, template)
    summary = {"expanded_examples": int((derived == 1).sum()), "expanded_tokens": int(lengths[derived == 1].sum()),
               "overflow_examples": int((derived == 2).sum()), "overflow_tokens": int(lengths[derived == 2].sum()),
               "lost_trained_tokens": int(column("lost").astype(np.int64).sum())}
    stats = merge(Summaries([d / "stats" for d in dirs], [t.name for t in tasks], copies.excluded), policy,
                  copies.field_counts, encoded)
    stats["lengths"]["extra"] = summary
    _reasoning_share(stats, dirs)
    return summary, stats


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


def _merge_preview(root: Path, dirs: list[Path]) -> None:
    """``ROOT/preview.jsonl``: the first record of each slice, then the first ones, 16 at most."""
    rows = [json.loads(x) for d in dirs for x in jsonl_lines(d / "preview.jsonl")]
    firsts, seen = [], set()
    for r in rows:
        if r["slice"] not in seen:
            seen.add(r["slice"])
            firsts.append(r)
    rest = [r for r in rows if not any(r is f for f in firsts)]
    with open(root / "preview.jsonl", "w", encoding="utf-8") as f:
        for r in (firsts + rest)[:16]:
            f.write(canonical_json(r, default=str) + "\n")


def _record_digests(tasks: list[ChunkTask], results: list[dict], parts: dict,
                    per_input: list[int]) -> tuple[list[str], dict, dict | None]:
    """``(records digest per input, key parts, split entry or None)``: each input's digest chains
    its chunks' digests; with ``data.eval_split`` the key covers the other side's records too
    (their ids decide duplicates)."""
    def chained(name: str) -> list[str]:
        by_input: dict[int, list[str]] = {}
        for t, r in zip(tasks, results):
            by_input.setdefault(t.input, []).append(r[name])
        return [chained_sha256(by_input[i]) for i in range(len(per_input))]

    digests, split = chained("records_sha256"), None
    if "split" in parts:
        parts = {**parts, "other": chained("other_sha256")}
        split = {**parts["split"], "records": per_input}
    return digests, parts, split


def _checksums(root: Path) -> tuple[dict, dict]:
    """``({file: [size, sha256]}, {file: stamp or None})`` of every file under ``root``."""
    checksums, stamps = {}, {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(root))
            digest, stamps[rel] = store_key.hashed(p)
            checksums[rel] = [p.stat().st_size, digest]
    return checksums, stamps


def _publish(root: Path, final: Path, stamps: dict) -> Path:
    """The built store moved to its key's folder (a whole store of that key already there is
    kept: the same records, reformatted), its stamps written."""
    if final.exists():
        try:
            PreparedStore(final, verify=True)
            return final
        except StoreError as e:
            print(f"sftlab: prepared store {final} is damaged ({e}); replacing it", file=sys.stderr)
            shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(root, final)  # the files keep their stamps: a rename of their folder changes none
    except OSError:  # another process finished the same store first
        if not (final / "store.json").is_file():
            raise
        return final
    store_key.write_stamps(store_key.stamps_path(final), {rel: st for rel, st in stamps.items() if st is not None})
    return final
