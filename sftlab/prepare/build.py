"""``prepare``: the store of some inputs, found by its key or built.

A build reads, validates and encodes the records a chunk of ``chunk_records`` at a time
(``sftlab.prepare.chunks``), in this process as the input streams by or in ``num_proc`` worker
processes that each encode whole chunks and write them themselves (nothing but a small task and
a small summary crosses processes); the main process then puts the chunks together
(``sftlab.prepare.merge``) and indexes the store by the inputs' raw digests (``sftlab.prepare.key``)."""
from __future__ import annotations

import errno
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

from sftlab import collector
from sftlab.data.chunk_stats import warm
from sftlab.data.readers import DEFAULT_MAX_RECORD_BYTES, check_readable
from sftlab.errors import UsageError
from sftlab.files import cache_dir, check_cache_dir, no_room, room_message
from sftlab.prepare import key as store_key
from sftlab.prepare.chunks import BuildContext, encode_chunk
from sftlab.prepare.merge import finalize
from sftlab.prepare.plan import ChunkTask, estimate_records, items_from, plan_chunks
from sftlab.prepare.read import PreparedStore, StoreError, open_indexed
from sftlab.prepare.spool import Spool, is_stream
from sftlab.progress import progress_bar
from sftlab.tokens.encoder import encoder_for

CHUNK_RECORDS = 8192


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
    hashed. ``build=False`` (ranks that wait for the main process) raises ``StoreError`` instead
    of building; ``verify=False`` skips the checksums (the main process checked them). The cache
    is ``cache_dir`` or ``sftlab.files.cache_dir("prepared")``. Raises ``UsageError`` for unusable
    inputs.
    """
    cache = check_cache_dir(cache_dir, what="data.cache_dir") if cache_dir else check_cache_dir(
        _default_cache(), what="SFTLAB_CACHE")
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
    parts = store_key.key_parts(inputs, tokenizer, template, options, policy, DEFAULT_MAX_RECORD_BYTES)
    parts["columns"] = [None if c is None else repr(c) for c in columns]
    if sides is not None:
        parts["split"] = {"eval_split": float(eval_split), "sides": sides}
    own = spool is None
    spool = Spool(cache) if own else spool
    try:
        read = [spool.read(p) for p in paths]  # (path to read, raw digest): a stream is copied once
        raw = [digest if digest is not None else store_key.raw_digest(p, cache) for p, digest in read]
        index = store_key.index_path(cache, parts, raw)
        found = open_indexed(cache, index, verify, parts, raw)
        if found is not None:
            found.hit = True
            return found
        if not build:
            raise StoreError(f"no prepared store for {', '.join(inputs)} in {cache} (the main process builds it)")
        ctx = BuildContext(paths=[r for r, _ in read], max_bytes=DEFAULT_MAX_RECORD_BYTES,
                           tokenizer=tokenizer, template=template, options=options, policy=policy, columns=columns,
                           names=[str(p) if r != p else None for p, (r, _) in zip(paths, read)], sides=sides,
                           eval_split=float(eval_split))
        store = _build(ctx, parts, cache, num_proc, chunk_records, progress, label)
        store_key.write_index(index, store.key, raw, store.path / "store.json")
        return store
    except (OSError, UsageError) as e:
        raise _cache_error(e, cache, paths) from None
    finally:
        if own:
            spool.close()


def _default_cache() -> Path:
    return cache_dir("prepared")


def _cache_error(e: OSError | UsageError, cache: Path, paths: list[Path]) -> BaseException:
    """A full or unwritable cache as a one-line ``UsageError``; any other error as it is."""
    reason = no_room(e)
    if reason is None and isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
        return UsageError(f"{cache}: cannot write the prepared-data store there: {e.strerror} ({e.filename}); "
                          "set data.cache_dir or $SFTLAB_CACHE to a folder you can write")
    if reason is None:
        return e
    need = 2 * sum(p.stat().st_size for p in paths if p.is_file())
    return UsageError(room_message(cache, reason, need, "every store already there is whole") +
                      " (a store takes about twice its inputs' bytes; data.cache_dir or $SFTLAB_CACHE "
                      "puts it elsewhere)")


def _build(ctx: BuildContext, parts: dict, cache: Path, num_proc: int, chunk_records: int, progress: bool,
           label: str) -> PreparedStore:
    """Every chunk encoded in a fresh ``CACHE/.build-*`` folder, put together, moved to its key."""
    # Fail early, here, on a template/tokenizer mismatch; the encoder, the signer and the imports
    # are made once, before workers fork, not once per worker.
    options = ctx.options
    encoder_for(ctx.tokenizer, ctx.template, reasoning=options.get("reasoning", "keep"),
                inline_reasoning=options.get("inline_reasoning", True),
                mask_source=options.get("mask_source", "contract"))
    warm()
    cache.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    ctx = replace(ctx, root=root)
    t0 = time.perf_counter()
    try:
        tasks, results = _run_tasks(ctx, chunk_records, num_proc, progress, label)
        store_dir = finalize(ctx, tasks, results, parts, {"num_proc": num_proc, "chunk_records": chunk_records,
                                                          "seconds": round(time.perf_counter() - t0, 3)}, cache)
    finally:
        if root.exists():
            shutil.rmtree(root, ignore_errors=True)
    store = PreparedStore(store_dir, verify=False)
    store.hit = False
    if progress:  # beside the progress bar; a run without progress output stays quiet
        print(f"sftlab: {label}: built {store_dir} ({store.meta['records']:,} records, {len(store):,} examples, "
              f"{store.meta['tokens']:,} tokens) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return store


def _run_tasks(ctx: BuildContext, chunk_records: int, num_proc: int, progress: bool,
               label: str) -> tuple[list[ChunkTask], list[dict]]:
    """Every chunk encoded: in this process as the input streams by, or by ``num_proc`` workers,
    each reading its own consecutive chunks (``_encode_run``). ``(tasks, results)`` in order."""
    bar = progress_bar(total=estimate_records(ctx.paths), desc=label, unit="rec", enabled=progress)
    t0, tokens, results, tasks = time.perf_counter(), 0, [], []

    def done(r: dict) -> None:
        nonlocal tokens
        results.append(r)
        tokens += r["tokens"]
        bar.update(r["records"])
        if progress:
            bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - t0, 1e-9):,.0f}", refresh=False)

    if num_proc > 1:
        tasks = [t for t, _ in plan_chunks(ctx.paths, chunk_records, ctx.max_bytes, ctx.names, offsets=True)]
        runs = max(1, min(len(tasks), 2 * num_proc))
        groups = [tasks[k * len(tasks) // runs:(k + 1) * len(tasks) // runs] for k in range(runs)]
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # fork: the context (tokenizer, template, policy) reaches each worker once, in its memory
        with mp.get_context("fork").Pool(min(num_proc, runs), initializer=_worker_init, initargs=(ctx,)) as pool:
            for rs in pool.imap_unordered(_encode_run, [g for g in groups if g]):
                for r in rs:
                    done(r)
    else:
        with collector.paused():
            for t, items in plan_chunks(ctx.paths, chunk_records, ctx.max_bytes, ctx.names):
                tasks.append(t)
                done(encode_chunk(ctx, t, items))
    bar.total = bar.n  # the estimate was an estimate: the finished bar shows every record, at 100 %
    bar.refresh()
    bar.close()
    return tasks, sorted(results, key=lambda r: r["chunk"])


_WORKER: BuildContext | None = None
"""The build context of a worker process, set once by the pool's initializer (``_worker_init``)."""


def _worker_init(ctx: BuildContext) -> None:
    global _WORKER
    _WORKER = ctx


def _encode_run(tasks: list[ChunkTask]) -> list[dict]:
    """Consecutive chunks in one worker: each source is read once from the first chunk's start."""
    ctx = _WORKER
    out, it, at = [], None, None
    with collector.paused():  # as in one process: a chunk's objects are many, alive and acyclic
        for t in tasks:
            if at != (t.input, t.source, t.chunk):
                it = items_from(t, ctx.paths, ctx.max_bytes)
            out.append(encode_chunk(ctx, t, list(islice(it, t.count))))
            at = (t.input, t.source, t.chunk + 1)
    return out
