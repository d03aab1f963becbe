"""Columnar inputs: Parquet files, ``save_to_disk`` dataset directories and datasets named for
``datasets.load_dataset`` (from the local Hugging Face cache), read in Arrow batches, row by row,
with each row's size and depth checked (``sftlab.data.record_shape``). A Parquet file or saved
dataset is first read once in a child process with Arrow's full validation, so a damaged file is a
one-line ``UsageError`` instead of a crash of sftlab itself.

Example::

    >>> hub_dataset("HuggingFaceH4/no_robots:default:train")
    ('HuggingFaceH4/no_robots', 'default', 'train')
    >>> hub_dataset("train.jsonl") is None
    True
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sftlab.data.record_shape import MAX_DEPTH, preview, shape_problem, text_of, too_large
from sftlab.errors import UsageError
from sftlab.hub import hub_unreachable

__all__ = ["hub_dataset", "check_columnar", "read_parquet", "read_saved_dataset", "read_dataset", "load_dataset",
           "first_line"]

_BATCH_ROWS = 4096
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]*){0,2}$")
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".arrow", ".txt", ".gz", ".bz2", ".xz", ".zst", ".zip")


def hub_dataset(p: Path | str) -> tuple[str, str | None, str | None] | None:
    """``(name, config, split)`` when ``p`` (not a path that exists) names a dataset for
    ``datasets.load_dataset`` as ``name[:config[:split]]``, else ``None``."""
    text = str(p)
    if os.path.lexists(text) or not _HUB_NAME.match(text) or text.lower().endswith(
            (*_DATA_SUFFIXES, ".pq", ".yaml", ".yml")):
        return None
    name, config, split = (text.split(":") + [None, None])[:3]
    return name, config or None, split or None


def read_parquet(p: Path, stream: Any, max_bytes: int) -> Iterator[tuple]:
    """The rows of the Parquet file ``p`` (``stream``: the file opened, read whole where it is a pipe)."""
    import pyarrow as pa  # pyarrow and datasets are imported on first use, for start-up time
    import pyarrow.parquet as pq

    regular = p.is_file()
    data = None if regular else stream.read()  # a pipe: Parquet needs to seek, so keep it in memory
    check_columnar(p, "parquet", data)
    try:
        batches = pq.ParquetFile(str(p) if regular else pa.BufferReader(data),
                                 page_checksum_verification=True).iter_batches(batch_size=_BATCH_ROWS)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UsageError(f"{p}: not a readable Parquet file ({first_line(e)})") from None
    yield from _read_batches(_guarded(batches, p, "Parquet"), max_bytes)


def _guarded(batches: Iterable[Any], p: Path, kind: str) -> Iterator[Any]:
    """The batches, with a reader error turned into a one-line ``UsageError`` naming the file."""
    it, n = iter(batches), 0
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as e:  # OSError, ArrowInvalid, ... from a damaged page
            raise UsageError(f"{p}: damaged {kind} data after row {n} ({first_line(e)}); "
                             "repair or re-export the file") from None
        n += batch.num_rows
        yield batch


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), for a one-line error."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


# Run in a child process: read every batch of a columnar input with Arrow's full validation.
_CHECK = """
import glob, os, sys
import pyarrow as pa, pyarrow.parquet as pq
kind, path = sys.argv[1], sys.argv[2]
try:
    if kind == "parquet":
        src = pa.BufferReader(sys.stdin.buffer.read()) if path == "-" else path
        f = pq.ParquetFile(src, page_checksum_verification=True)
        batches = [f.iter_batches(batch_size=4096)]
    else:
        files = sorted(glob.glob(os.path.join(path, "**", "*.arrow"), recursive=True))
        batches = [pa.ipc.open_stream(pa.memory_map(fn)) for fn in files]
    for reader in batches:
        for batch in reader:
            batch.validate(full=True)
except Exception as e:
    print(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", file=sys.stderr)
    sys.exit(3)
"""


def check_columnar(p: Path, kind: str, data: bytes | None = None) -> None:
    """Read ``p`` (``parquet``: a file, or its bytes ``data``; ``arrow``: a saved datasets
    directory) in a child process with full validation; ``UsageError`` when it is damaged or
    crashes the reader, so a native crash never takes sftlab down."""
    try:
        proc = subprocess.run([sys.executable, "-c", _CHECK, kind, "-" if data is not None else str(p)],
                              input=data, capture_output=True)
    except OSError as e:
        raise UsageError(f"{p}: cannot start the check of the file: {e.strerror or e}") from None
    what = "Parquet file" if kind == "parquet" else "saved dataset"
    if proc.returncode < 0:
        raise UsageError(f"{p}: reading this {what} crashed the Arrow reader (signal "
                         f"{-proc.returncode}); the file is damaged: repair or re-export it")
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise UsageError(f"{p}: not a readable {what} ({lines[-1][:300] if lines else 'unknown error'}); "
                         "repair or re-export it")


def _read_batches(batches: Iterable[Any], max_bytes: int) -> Iterator[tuple]:
    row = 0
    for batch in batches:
        # Arrow bounds both checks for a whole batch: its byte size bounds each row's, and the
        # schema bounds every row's nesting depth.
        check_size = batch.nbytes > max_bytes
        check_depth = 1 + max((_type_depth(f.type) for f in batch.schema), default=0) > MAX_DEPTH
        for obj in batch.to_pylist():
            row += 1
            if check_size:
                size = len(text_of(obj).encode("utf-8", "replace"))
                if size > max_bytes:
                    yield row, preview(text_of(obj)), too_large(size, max_bytes)
                    continue
            yield row, obj, shape_problem(obj, False) if check_depth else None


def _type_depth(t: Any) -> int:
    """Nesting depth of an Arrow type: 0 for a scalar, +1 per list, struct or map level."""
    import pyarrow as pa  # for start-up time

    if pa.types.is_struct(t):
        return 1 + max((_type_depth(t.field(i).type) for i in range(t.num_fields)), default=0)
    if pa.types.is_map(t):
        return 1 + max(_type_depth(t.key_type), _type_depth(t.item_type))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return 1 + _type_depth(t.value_type)
    return 0


def read_saved_dataset(p: Path, max_bytes: int) -> Iterator[tuple[str, Iterator[tuple]]]:
    """``(name, rows)`` per split of the ``save_to_disk`` directory ``p``."""
    import datasets  # for start-up time

    check_columnar(p, "arrow")
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:  # datasets raises several types for a damaged directory
        raise UsageError(f"{p}: not a loadable saved dataset ({first_line(e)})") from None
    splits = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    for split, d in splits:
        name = str(p) if split is None else f"{p}[{split}]"
        batches = d.with_format("arrow").iter(batch_size=_BATCH_ROWS)
        yield name, _read_batches(_guarded(batches, p, "Arrow"), max_bytes)


def load_dataset(p: Path):
    """A dataset named ``name[:config[:split]]``; where no hub answers (``sftlab.hub.hub_unreachable``:
    one request, not retried), from the local Hugging Face cache in the datasets library's offline
    mode, so a name that is not cached fails at once instead of after the hub client's retries
    (tens of seconds)."""
    import datasets  # for start-up time

    name, config, split = hub_dataset(p)
    why = hub_unreachable()
    try:
        with _offline(why is not None):
            return datasets.load_dataset(name, config, split=split)
    except Exception as e:  # datasets raises several types for a damaged or unknown dataset
        where = (f"; {why}, and the local Hugging Face cache does not hold it: download it where the hub is "
                 "reachable, or give the data files") if why else ""
        raise UsageError(f"{p}: not a loadable dataset ({first_line(e)}){where}") from None


@contextlib.contextmanager
def _offline(on: bool) -> Iterator[None]:
    """The datasets library and its hub client in offline mode (their flags are read from the
    environment once, at import, so they are set on the modules) for the block, where ``on``."""
    import datasets  # lazy, as in load_dataset
    from huggingface_hub import constants

    if not on:
        yield
        return
    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def read_dataset(p: Path, max_bytes: int) -> Iterator[tuple[str, Iterator[tuple]]]:
    """``(name, rows)`` per split of the dataset named ``p`` (``hub_dataset``)."""
    import datasets  # for start-up time

    ds = load_dataset(p)
    splits = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    for split, d in splits:
        name = str(p) if split is None else f"{p}[{split}]"
        batches = d.with_format("arrow").iter(batch_size=_BATCH_ROWS)
        yield name, _read_batches(_guarded(batches, p, "Arrow"), max_bytes)
