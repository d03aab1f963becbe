"""Preparation: encoded examples written once, found by content, memory-mapped by every process.

The stage between ``sftlab.tokens`` (encoding, packing, the rows training reads) and the model and
training above it. ``prepare(inputs, tokenizer, template, ...)`` (``build``) reads, validates and
encodes the records of ``inputs`` (``sftlab.data.loading`` and ``sftlab.tokens.encoding``,
unchanged) a chunk of ``chunk_records`` records at a time, and writes each chunk as flat arrays:

    CACHE/KEY/store.json                 key, its parts, counts per input file, chunks, sha256 of every file
    CACHE/KEY/quarantine.jsonl           every record not used, with its reason (load, then encode stage)
    CACHE/KEY/stats.json                 sftlab.data.stats' schema, from the chunk summaries
    CACHE/KEY/preview.jsonl              a few accepted records, for the mask preview
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

The modules, in the order a build runs them:

- ``key``: the key (the sha256 of the normalised records of every input, the template, the
  tokenizer, every encoding option, the policy, the store format and the sftlab version), the raw
  digests of the inputs that index it (``CACHE/index/``), and the stat stamps that spare hashing
  unchanged files (as git's index does);
- ``spool``: pipes and FIFOs copied once while hashed;
- ``plan``: which records each chunk holds (``ChunkTask``);
- ``chunks``: one chunk encoded and written, by the main process or a worker, from an explicit
  ``BuildContext``;
- ``merge``: the chunks put together (the duplicate-id rule over every chunk, quarantine,
  statistics, checksums) and the store moved to its key;
- ``read``: a store opened (``PreparedStore``: its identity and checksums checked, tokens
  memory-mapped), and the store an index entry names;
- ``build``: ``prepare`` itself.

An index entry holds the key, the raw digests it was written for and the sha256 of the
``store.json`` it found; it is followed only when all three hold, and the store only when its
``store.json`` names its own folder's key, that key is the hash of the parts it lists, and those
parts are this run's. Opening a store checks that its checksum list is complete and every file's
size and sha256; a damaged store is reported and rebuilt, never used. A second run on a million
conversations opens its store reading 128 MiB, not gigabytes, and any write to a file moves its
ctime, so it is hashed again.

Workers (``num_proc``) each encode whole chunks and write them themselves; the per-record checks
that need every record (duplicate ids: 16-byte keys; near duplicates: band keys) and the
statistics are put together by the main process, so the store is the same bit for bit for any
``num_proc``. The rows training reads from a store are ``sftlab.tokens.rows.StoreRow``.
"""
from sftlab.prepare.build import prepare
from sftlab.prepare.read import PreparedStore, StoreError
from sftlab.prepare.spool import Spool

__all__ = ["prepare", "PreparedStore", "StoreError", "Spool"]
