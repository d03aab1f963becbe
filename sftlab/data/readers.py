"""Readers: the records of JSONL, JSON, Parquet and saved ``datasets`` inputs, with their lines.

Each reader yields ``(line, raw record or raw text, problem or None)`` (a JSON array adds a fourth
item, the file line where the record starts, its ``line`` being the record number) and never raises for a
bad record: a line that is not JSON, is not valid UTF-8, or is absurdly large or deep comes out
with its problem, so ``sftlab.data.loading`` can quarantine it and keep reading. An input that cannot
be read at all raises ``UsageError``.

Every input is opened and read exactly once, as a stream, so pipes (``<(cat f.jsonl)``), named
FIFOs and ``/dev/stdin`` work: the format is detected on a buffered head (its first line when
that starts with ``[``), which is then read again from memory. A first line that is a whole
JSON value followed by more lines is JSONL (one of whose records happens to be an array), not
a JSON array. Parquet and Arrow files are read once in a child process first, with Arrow's
full validation, so a damaged file is a one-line reason instead of a crash of sftlab itself.
"""
from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sftlab.errors import UsageError
from sftlab.data.record_errors import RecordError

DEFAULT_MAX_RECORD_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 64
_PREVIEW_CHARS = 2000
_BATCH_ROWS = 4096
_WHITESPACE = re.compile(r"[ \t\n\r]*")

# (line, raw record or raw text, problem found while reading or None[, file line of a JSON array element])
RawItem = tuple


_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]*){0,2}$")
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow", ".txt")


def check_readable(p: Path) -> None:
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if hub_dataset(p) is not None:
            return
        raise UsageError(f"{p}: no such file or directory") from None
    except OSError as e:
        reason = "a symbolic link loop" if isinstance(e, OSError) and e.errno == 40 else e.strerror or e
        raise UsageError(f"{p}: cannot read: {reason}") from None
    if stat.S_ISDIR(st.st_mode):
        if not _is_saved_dataset(p):
            folder_files(p)
        return
    if stat.S_ISFIFO(st.st_mode):
        return  # a pipe or FIFO: opening it here would take (or wait for) data read later
    open_input(p).close()


def _is_saved_dataset(p: Path) -> bool:
    return (p / "dataset_dict.json").is_file() or (p / "dataset_info.json").is_file()


_FOLDER_READS = (".jsonl", ".json", ".parquet", ".pq")
_FOLDER_SKIPS = re.compile(r"^(readme|license|licence|notice|copying)(\.[\w.-]*)?$|\.md$|^dataset_infos\.json$",
                           re.IGNORECASE)


def folder_files(p: Path) -> list[Path]:
    """The data files of the folder ``p``, each read by its own reader, in the order of their
    paths: every ``.jsonl``, ``.json`` and ``.parquet`` file below it. Documentation (README,
    LICENSE, ``*.md``) and hidden files and folders are skipped; any other file (CSV, text,
    Arrow, a pipe, ...) makes the folder a ``UsageError`` naming it, since a file that is not
    read would be data lost without a word, as would a linked folder (not followed: pass it
    itself). A hub card's ``dataset_infos.json`` is metadata, skipped too. File names are never
    read as split names: a ``validation.jsonl`` beside ``train.jsonl`` is data like any other.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> for name in ("b.jsonl", "a/c.parquet", "README.md", ".git/x"):
    ...     (d / name).parent.mkdir(parents=True, exist_ok=True); _ = (d / name).write_text("")
    >>> [str(f.relative_to(d)) for f in folder_files(d)]
    ['a/c.parquet', 'b.jsonl']
    """
    out = []
    for f in sorted(p.rglob("*")):
        rel = f.relative_to(p)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if f.is_dir():
            if f.is_symlink():
                raise UsageError(f"{p}: holds {rel}, a symbolic link to a folder, which is not followed; "
                                 "pass that folder itself as an input")
            continue
        if not f.is_file():
            raise UsageError(f"{p}: holds {rel}, which is not a regular file; a folder input holds data "
                             "files only: move it out, or pass the data files themselves")
        if _FOLDER_SKIPS.search(f.name):
            continue
        if f.suffix.lower() not in _FOLDER_READS:
            raise UsageError(f"{p}: holds {rel}, which sftlab does not read (expected JSONL, JSON or Parquet "
                             "files; README, LICENSE, *.md and hidden files are skipped); convert or move "
                             "it out, or pass the data files themselves")
        out.append(f)
    if not out:
        raise UsageError(f"{p}: is a directory but neither a saved datasets directory (expected "
                         "dataset_info.json or dataset_dict.json from save_to_disk) nor a folder of "
                         "data files (JSONL, JSON, Parquet); pass the data files instead")
    return out


def hub_dataset(p: Path | str) -> tuple[str, str | None, str | None] | None:
    """``(name, config, split)`` when ``p`` (not a path that exists) names a dataset for
    ``datasets.load_dataset`` as ``name[:config[:split]]``, else ``None``."""
    text = str(p)
    if os.path.lexists(text) or not _HUB_NAME.match(text) or text.lower().endswith(
            (*_DATA_SUFFIXES, ".pq", ".yaml", ".yml")):
        return None
    name, config, split = (text.split(":") + [None, None])[:3]
    return name, config or None, split or None


def sources(p: Path, max_bytes: int) -> Iterator[tuple[str, Iterator[RawItem]]]:
    """(name, items) for each input inside ``p``: one for a file, one per split for a dataset
    (a ``save_to_disk`` directory, read with ``datasets.load_from_disk``, which copies nothing;
    a dataset name, read with ``datasets.load_dataset`` from the local Hugging Face cache), one
    per data file of a folder (``folder_files``: each read as that file alone is, record by
    record, named by its path)."""
    if p.is_dir() and _is_saved_dataset(p):
        yield from _read_saved_dataset(p, max_bytes)
        return
    if p.is_dir():
        for f in folder_files(p):
            yield from sources(f, max_bytes)
        return
    if hub_dataset(p) is not None:
        yield from _read_dataset(p, max_bytes)
        return
    name = str(p)
    with open_input(p) as f:
        head = _head(f)
        stream = io.BufferedReader(_Prefixed(head, f), buffer_size=1 << 16)
        kind = _format(p, head)
        if kind == "parquet":
            yield name, _read_parquet(p, stream, max_bytes)
        elif kind == "array":
            yield name, _read_json_array(p, stream.read(), max_bytes)
        else:
            yield name, _read_jsonl(stream, max_bytes)


class _Prefixed(io.RawIOBase):
    """The bytes already read (``head``), then the rest of the open file ``f``: one read of it."""

    def __init__(self, head: bytes, f: Any):
        self._head, self._f = memoryview(head), f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._f.readinto(b)


def _head(f: Any) -> bytes:
    """The first 4 KiB, and when the text starts with ``[``, up to the end of its second line
    that is not blank (to tell a JSON array from JSONL whose first record is an array)."""
    head = f.read(4096)
    while _lines_after_bracket(head) < 2:
        more = f.readline()
        if not more:
            break
        head += more
    return head


def _lines_after_bracket(head: bytes) -> int:
    body = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not body.startswith(b"["):
        return 2  # nothing to look at
    return sum(1 for line in body.split(b"\n")[:-1] if line.strip())


def _format(p: Path, head: bytes) -> str:
    """``parquet``, ``array`` or ``jsonl``, by extension and structure, not the first byte alone."""
    if p.suffix.lower() in (".parquet", ".pq") or head.startswith(b"PAR1"):
        return "parquet"
    body = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not body.startswith(b"["):
        return "jsonl"
    lines = [line for line in body.split(b"\n") if line.strip()]
    if len(lines) >= 2 and _whole_json(lines[0]) and _whole_json(lines[1]):
        return "jsonl"  # a JSONL file whose first record is an array
    return "array"


def _whole_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except (ValueError, RecursionError):
        return False
    return True


def _read_jsonl(f: Any, max_bytes: int, sniff: bool = True, first_line: int = 1) -> Iterator[RawItem]:
    """Records of the binary line stream ``f`` (whose first line is line ``first_line`` of the
    file); while ``sniff``, a first record that is an incomplete object makes the whole input one
    pretty-printed JSON object."""
    blank: list[bytes] = []  # the blank lines before the first record
    for lineno, raw in enumerate(f, first_line):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if len(raw) > max_bytes:
            sniff = False
            yield lineno, _preview(raw), _too_large(len(raw), max_bytes)
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            sniff = False
            yield lineno, raw.decode("utf-8", "backslashreplace").rstrip("\r\n"), RecordError(
                "invalid_utf8", f"invalid UTF-8 at byte {e.start} of the line; expected UTF-8 "
                "text; fix: re-encode the file as UTF-8")
            continue
        if not text or text.isspace():
            if sniff:
                blank.append(raw)
            continue
        if sniff and _opens_an_object(text):
            # Perhaps a .json file holding one pretty-printed object, not JSONL.
            yield from _read_single_object(b"".join(blank) + raw + f.read(), max_bytes)
            return
        sniff = False
        yield _parse_line(lineno, text)


_ASCII_SPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"  # the ASCII characters str.isspace() accepts


def jsonl_starts(p: Path, max_bytes: int, every: int) -> list[tuple[int, int, int]] | None:
    """For a plain JSONL file: ``(byte offset, line, items)`` of each run of ``every`` items (the
    last may be shorter), found by scanning lines without parsing them, so that
    ``read_jsonl_at(p, offset, line, max_bytes)`` gives exactly the items ``sources`` gives from
    there. ``None`` where ``p`` is anything else (a pipe, a dataset, Parquet, a JSON array, one
    pretty-printed object): those are read as a stream. The items are counted as
    ``_read_jsonl`` yields them: every line but the blank ones (a line too large, not UTF-8 or
    not JSON is an item, with its problem)."""
    try:
        if not stat.S_ISREG(os.stat(p).st_mode):
            return None
    except OSError:
        return None
    with open_input(p) as f:
        if _format(p, _head(f)) != "jsonl":
            return None
        f.seek(0)
        out: list[tuple[int, int, int]] = []
        pos, sniff, count, start = 0, True, 0, (0, 1)
        for lineno, raw in enumerate(f, 1):
            at, pos = pos, pos + len(raw)
            body = raw[3:] if lineno == 1 and raw.startswith(b"\xef\xbb\xbf") else raw
            if len(body) <= max_bytes:
                head = body.lstrip(_ASCII_SPACE)[:1]
                if sniff or not head or head >= b"\x80":  # could be blank: decide as _read_jsonl does
                    try:
                        text = body.decode("utf-8")
                    except UnicodeDecodeError:
                        text = None
                    if text is not None and (not text or text.isspace()):
                        continue
                    if sniff and text is not None and _opens_an_object(text):
                        return None  # one pretty-printed object, not JSONL
            sniff = False
            if count == 0:
                start = (at, lineno)
            count += 1
            if count == every:
                out.append((*start, count))
                count = 0
        if count:
            out.append((*start, count))
        return out


def read_jsonl_at(p: Path, offset: int, line: int, max_bytes: int) -> Iterator[RawItem]:
    """The items of the JSONL file ``p`` from byte ``offset``, where line ``line`` starts (an
    offset from ``jsonl_starts``); a generator that keeps its file open while it is read."""
    with open_input(p) as f:
        f.seek(offset)
        yield from _read_jsonl(f, max_bytes, sniff=False, first_line=line)


def open_input(p: Path):
    """A data input opened for reading bytes (``sftlab.files.open_input`` with ``stream``: a
    regular file, read up to the size it had when opened, or a FIFO or pipe), or a
    ``UsageError`` that names the file and why it cannot be read."""
    from sftlab.files import open_input as open_file

    return open_file(p, stream=True)


def _parse_line(lineno: int, text: str) -> RawItem:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return lineno, text.rstrip("\r\n"), RecordError(
            "bad_json", f"not valid JSON: {e.msg} at column {e.colno}; expected one JSON object "
            "per line; fix: repair the line (multi-line objects belong in a JSON array file)")
    except ValueError:  # Python refuses integers of more than 4,300 digits
        return lineno, _preview(text), _huge_number_error()
    except RecursionError:
        return lineno, _preview(text), _too_deep_error()
    # More brackets than the depth limit is necessary for too deep a record, and cheap to count.
    if text.count("{") + text.count("[") > MAX_DEPTH and _too_deep(obj):
        return lineno, obj, _too_deep_error()
    return lineno, obj, None


def _opens_an_object(text: str) -> bool:
    """A first line that starts an object it does not close: the input is one pretty-printed
    object, not JSONL (``_read_jsonl`` and ``jsonl_starts`` decide it alike)."""
    return text.lstrip().startswith("{") and not _complete_json(text)


def _complete_json(text: str) -> bool:
    try:
        json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return text.rstrip().endswith("}")  # a whole line that is just malformed
    return True


def _read_single_object(data: bytes, max_bytes: int) -> Iterator[RawItem]:
    text, bad_utf8 = _decode(data)
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):  # not one object after all: read it line by line
        yield from _read_jsonl(io.BytesIO(data), max_bytes, sniff=False)
        return
    size = len(text.encode("utf-8", "surrogateescape"))
    if size > max_bytes:
        yield 1, _preview(text), _too_large(size, max_bytes)
        return
    problem = _shape_problem(obj, bad_utf8)
    yield 1, _escape_surrogates(obj) if problem and bad_utf8 else obj, problem


def _read_json_array(p: Path, data: bytes, max_bytes: int) -> Iterator[RawItem]:
    text, bad_utf8 = _decode(data)
    file_line, counted, ints = 1, 0, _IntGuard()  # one guard per file: nothing carries over
    try:
        for i, (obj, start, end) in enumerate(_array_elements(text, ints), 1):
            file_line += text.count("\n", counted, start)  # the line the record starts on
            counted = start
            huge, size = ints.take(), len(text[start:end].encode("utf-8", "surrogateescape"))
            if size > max_bytes:
                yield i, _preview(text[start:end]), _too_large(size, max_bytes), file_line
                continue
            if huge:
                yield i, _preview(text[start:end]), _huge_number_error(), file_line
                continue
            # Bracket counting (in C) rules out deep nesting for almost every record.
            maybe_deep = text.count("{", start, end) + text.count("[", start, end) > MAX_DEPTH
            problem = _shape_problem(obj, bad_utf8) if maybe_deep or bad_utf8 else None
            if problem is not None and problem.code == "invalid_utf8":
                obj = _escape_surrogates(obj)
            yield i, obj, problem, file_line
    except json.JSONDecodeError as e:
        raise UsageError(f"{p}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}; fix "
                         "the file, or write one record per line (JSONL) so that bad records are "
                         "quarantined one by one") from None
    except RecursionError:
        raise UsageError(f"{p}: nested more than {MAX_DEPTH} levels deep") from None


def _array_elements(text: str, ints: Any = int) -> Iterator[tuple[Any, int, int]]:
    """``(element, start, end)`` for each element of the JSON array ``text``.

    Decoding element by element gives each record's extent, so its size and nesting can be
    checked on the text instead of serialising the record again.
    """
    decoder, skip = json.JSONDecoder(parse_int=ints), _WHITESPACE.match
    i = skip(text, 0).end()
    if text[i:i + 1] != "[":
        raise json.JSONDecodeError("Expecting '['", text, i)
    i = skip(text, i + 1).end()
    if text[i:i + 1] == "]":
        return
    while True:
        obj, end = decoder.raw_decode(text, i)
        yield obj, i, end
        i = skip(text, end).end()
        c = text[i:i + 1]
        if c == "]":
            break
        if c != ",":
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        i = skip(text, i + 1).end()
    if skip(text, i + 1).end() != len(text):
        raise json.JSONDecodeError("Extra data", text, skip(text, i + 1).end())


def _text_of(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


class _IntGuard:
    """``parse_int`` for the JSON array decoder: integers Python refuses to convert (more than
    4,300 digits) become a marker, so one record is quarantined instead of the whole file."""

    def __init__(self):
        self.seen = False

    def __call__(self, digits: str) -> Any:
        try:
            return int(digits)
        except ValueError:
            self.seen = True
            return 0

    def take(self) -> bool:
        """Whether the element decoded since the last call held such an integer (and reset)."""
        seen, self.seen = self.seen, False
        return seen


def _huge_number_error() -> RecordError:
    return RecordError("bad_json", "a number with more than 4,300 digits, which Python does not "
                       "convert; expected ordinary numbers; fix: write it as a string or drop the record")


def _decode(data: bytes) -> tuple[str, bool]:
    """The text of ``data``, and whether it held invalid UTF-8 (kept as surrogates, found later)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape"), True


def _read_parquet(p: Path, stream: Any, max_bytes: int) -> Iterator[RawItem]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    regular = p.is_file()
    data = None if regular else stream.read()  # a pipe: Parquet needs to seek, so keep it in memory
    check_columnar(p, "parquet", data)
    try:
        batches = pq.ParquetFile(str(p) if regular else pa.BufferReader(data),
                                 page_checksum_verification=True).iter_batches(batch_size=_BATCH_ROWS)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UsageError(f"{p}: not a readable Parquet file ({_first_line(e)})") from None
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
            raise UsageError(f"{p}: damaged {kind} data after row {n} ({_first_line(e)}); "
                             "repair or re-export the file") from None
        n += batch.num_rows
        yield batch


def _first_line(e: BaseException) -> str:
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


def _read_batches(batches: Iterable[Any], max_bytes: int) -> Iterator[RawItem]:
    row = 0
    for batch in batches:
        # Arrow bounds both checks for a whole batch: its byte size bounds each row's, and the
        # schema bounds every row's nesting depth.
        check_size = batch.nbytes > max_bytes
        check_depth = 1 + max((_type_depth(f.type) for f in batch.schema), default=0) > MAX_DEPTH
        for obj in batch.to_pylist():
            row += 1
            if check_size:
                size = len(_text_of(obj).encode("utf-8", "replace"))
                if size > max_bytes:
                    yield row, _preview(_text_of(obj)), _too_large(size, max_bytes)
                    continue
            yield row, obj, _shape_problem(obj, False) if check_depth else None


def _type_depth(t: Any) -> int:
    """Nesting depth of an Arrow type: 0 for a scalar, +1 per list, struct or map level."""
    import pyarrow as pa

    if pa.types.is_struct(t):
        return 1 + max((_type_depth(t.field(i).type) for i in range(t.num_fields)), default=0)
    if pa.types.is_map(t):
        return 1 + max(_type_depth(t.key_type), _type_depth(t.item_type))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return 1 + _type_depth(t.value_type)
    return 0


def _read_saved_dataset(p: Path, max_bytes: int) -> Iterator[tuple[str, Iterator[RawItem]]]:
    import datasets

    check_columnar(p, "arrow")
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:  # datasets raises several types for a damaged directory
        raise UsageError(f"{p}: not a loadable saved dataset ({_first_line(e)})") from None
    splits = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    for split, d in splits:
        name = str(p) if split is None else f"{p}[{split}]"
        batches = d.with_format("arrow").iter(batch_size=_BATCH_ROWS)
        yield name, _read_batches(_guarded(batches, p, "Arrow"), max_bytes)


def _load_dataset(p: Path):
    """A dataset named ``name[:config[:split]]``, from the local Hugging Face cache when offline."""
    import datasets

    name, config, split = hub_dataset(p)
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as e:  # datasets raises several types for a damaged or unknown dataset
        raise UsageError(f"{p}: not a loadable dataset ({_first_line(e)})") from None


def _read_dataset(p: Path, max_bytes: int) -> Iterator[tuple[str, Iterator[RawItem]]]:
    import datasets

    ds = _load_dataset(p)
    splits = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    for split, d in splits:
        name = str(p) if split is None else f"{p}[{split}]"
        batches = d.with_format("arrow").iter(batch_size=_BATCH_ROWS)
        yield name, _read_batches(_guarded(batches, p, "Arrow"), max_bytes)


def input_digest(p: Path) -> str:
    """sha256 of what an input's records are read from: a file's bytes, every file of a
    directory (with its relative path), or a named dataset's fingerprint in the local cache.
    Equal digests, equal records: it lets a prepared store be found without reading them."""
    import hashlib

    h = hashlib.sha256()
    if hub_dataset(p) is not None:
        import datasets

        ds = _load_dataset(p)
        parts = ds.values() if isinstance(ds, datasets.DatasetDict) else [ds]
        h.update(repr([getattr(d, "_fingerprint", None) for d in parts]).encode())
        return h.hexdigest()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else "").encode() + b"\0")
        with open_input(f) as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------- record shape

def _shape_problem(obj: Any, bad_utf8: bool) -> RecordError | None:
    if bad_utf8 and _has_surrogates(obj):
        return RecordError("invalid_utf8", "the record holds invalid UTF-8 bytes (shown "
                           "backslash-escaped); expected UTF-8 text; fix: re-encode the file")
    if _too_deep(obj):
        return _too_deep_error()
    return None


def _too_deep(obj: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if type(node) is dict else node if type(node) is list else ()
        for child in children:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


def _too_deep_error() -> RecordError:
    return RecordError("too_deep", f"the record is nested more than {MAX_DEPTH} levels deep; "
                       "expected a flat conversation record; fix: flatten or drop it")


def _too_large(size: int, max_bytes: int) -> RecordError:
    return RecordError("too_large", f"the record is {size:,} bytes, over the limit of "
                       f"{max_bytes:,}; the quarantined 'record' keeps its first {_PREVIEW_CHARS:,} "
                       "characters; fix: shorten it or raise the limit (--max-record-mb)")


def _preview(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        raw = raw[:_PREVIEW_CHARS * 4].decode("utf-8", "backslashreplace")
    return raw[:_PREVIEW_CHARS]


def _has_surrogates(obj: Any) -> bool:
    if isinstance(obj, str):
        return any("\udc80" <= ch <= "\udcff" for ch in obj)
    if isinstance(obj, dict):
        return any(_has_surrogates(k) or _has_surrogates(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_has_surrogates(v) for v in obj)
    return False


def _escape_surrogates(obj: Any) -> Any:
    """Invalid bytes (kept as surrogates) -> ``\\xNN`` text, so the record can be written."""
    if isinstance(obj, str):
        return obj.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(obj, dict):
        return {_escape_surrogates(k): _escape_surrogates(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_escape_surrogates(v) for v in obj]
    return obj
