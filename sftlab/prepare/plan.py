"""Which records each chunk of a store holds, and reading them back from their input.

Chunk k of a source holds its records ``[k * chunk_records, (k + 1) * chunk_records)``, however
the chunks are then run (in this process as the input streams by, or by worker processes that
each read their own chunks from where they start)."""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from sftlab.data.readers import jsonl_starts, read_jsonl_at, sources
from sftlab.errors import UsageError
from sftlab.prepare.read import StoreError


@dataclass(frozen=True)
class ChunkTask:
    """One chunk to encode: where its records are and how many."""
    chunk: int
    """Its number, in store order (``chunk-NNNNN``)."""
    input: int
    """Index of its input in the store's inputs."""
    source: int
    """Which source of the input (a folder's files, a dataset's splits; 0 for a file)."""
    name: str
    """The name its records are reported under (a file, ``DIR[split]``, a stream's given name)."""
    count: int
    """Records in the chunk."""
    first_record: int
    """Record number of its first record, counted over every input of the store."""
    first_item: int = 0
    """Index of its first record within its source (read by streaming the source)."""
    byte_offset: int | None = None
    """A plain JSONL file read from a byte offset: where the chunk's first line starts."""
    first_line: int = 0
    """With ``byte_offset``: the line number there."""


def plan_chunks(paths: list[Path], chunk_records: int, max_bytes: int, names: list, offsets: bool = False):
    """``(task, items or None)`` for every chunk, in order. The items come with the task when
    stream reading has them already. A spooled stream keeps the name it was given (``names[i]``,
    else ``None``). With ``offsets``, a plain JSONL file is planned by the byte offsets of its
    chunks (``readers.jsonl_starts``: its lines scanned, not parsed), so a worker reads its own
    chunks from there and nothing is parsed twice."""
    rec = chunk = 0
    for i, p in enumerate(paths):
        starts = jsonl_starts(p, max_bytes, chunk_records) if offsets else None
        if starts is not None:
            if not starts:
                raise UsageError(f"{names[i] or p}: no records (the input is empty or has only blank lines)")
            for offset, line, count in starts:
                yield ChunkTask(chunk, i, 0, names[i] or str(p), count, rec, byte_offset=offset, first_line=line), None
                chunk, rec = chunk + 1, rec + count
            continue
        for s, (name, items) in enumerate(sources(p, max_bytes)):
            name = names[i] or name
            block, first = [], 0
            for item in items:
                block.append(item)
                if len(block) == chunk_records:
                    yield ChunkTask(chunk, i, s, name, len(block), rec, first_item=first), block
                    chunk, rec, first, block = chunk + 1, rec + len(block), first + len(block), []
            if block:
                yield ChunkTask(chunk, i, s, name, len(block), rec, first_item=first), block
                chunk, rec = chunk + 1, rec + len(block)
            elif first == 0:
                raise UsageError(f"{name}: no records (the input is empty or has only blank lines)")


def chunk_items(task: ChunkTask, paths: list[Path], max_bytes: int):
    """The raw items of one chunk, read from its source."""
    return islice(items_from(task, paths, max_bytes), task.count)


def items_from(task: ChunkTask, paths: list[Path], max_bytes: int):
    """The raw items of ``task``'s source from the task's first item on (a generator)."""
    if task.byte_offset is not None:
        return read_jsonl_at(paths[task.input], task.byte_offset, task.first_line, max_bytes)
    return _source_items(paths[task.input], task.source, task.first_item, max_bytes)


def _source_items(p: Path, source: int, start: int, max_bytes: int):
    """The raw items of source number ``source`` of input ``p`` from item ``start`` on (a
    generator: it keeps the reader, and its open file, alive while it is read)."""
    for s, (_, items) in enumerate(sources(p, max_bytes)):
        if s == source:
            yield from islice(items, start, None)
            return
    raise StoreError(f"{p}: source {source} vanished while preparing")


def task_of(tasks: list[ChunkTask]):
    """``rec -> index of the task holding record rec``: tasks hold consecutive record ranges, in order."""
    firsts = [t.first_record for t in tasks]
    return lambda rec: bisect.bisect_right(firsts, rec) - 1


def estimate_records(paths: list[Path]) -> int | None:
    """Records of the inputs, estimated for the progress bar's total and ETA: the lines that open a
    top-level object (JSONL, objects pretty-printed or not; a JSON array's objects at the first one's
    indentation); ``None`` when an input is no JSON text file (Parquet, a dataset directory, a pipe).

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     a, b = Path(d) / "a.json", Path(d) / "b.jsonl"
        ...     _ = a.write_text('[\\n  {\\n    "x": {\\n      "y": 1\\n    }\\n  },\\n  {\\n    "x": 2\\n  }\\n]\\n')
        ...     _ = b.write_text('{"x": 1}\\n{\\n  "x": 2\\n}\\n{"x": 3}\\n')
        ...     estimate_records([a]), estimate_records([b])
        (2, 3)
    """
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
