"""Readers: the records of JSONL, JSON, Parquet, CSV/TSV and saved ``datasets`` inputs, with their lines.
Here: which reader an input gets, JSONL, JSON arrays and CSV; gzip, bz2 and xz compressed files
are read through the standard library's decoders (found by their first bytes, not their name).
Parquet and datasets are
``sftlab.data.columnar``, the limits on one record ``sftlab.data.record_shape``.

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sftlab.data.columnar import first_line, hub_dataset, load_dataset, read_dataset, read_parquet, read_saved_dataset
from sftlab.data.compressed import (MAX_COMPRESSED_ARRAY, BoundedLines, Decompressed, compression, decompressed,
                                    inner_name)
from sftlab.data.record_errors import RecordError
from sftlab.data.record_shape import (DEFAULT_MAX_RECORD_BYTES, MAX_DEPTH, decode, escape_surrogates, preview,
                                      shape_problem, too_deep, too_deep_error, too_large)
from sftlab.data.tables import read_csv
from sftlab.errors import UsageError
from sftlab.fingerprints import files_digest, json_sha256, stream_sha256
from sftlab.files import open_input as open_file

__all__ = ["RawItem", "DEFAULT_MAX_RECORD_BYTES", "MAX_DEPTH", "check_readable", "folder_files", "hub_dataset",
           "sources", "whole_input", "read_json_array", "jsonl_starts", "read_jsonl_at", "open_input", "input_digest"]

_WHITESPACE = re.compile(r"[ \t\n\r]*")

# (line, raw record or raw text, problem found while reading or None[, file line of a JSON array element])
RawItem = tuple




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


SPLIT_WORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev"),
               "test": ("test", "testing", "eval", "evaluation")}
"""The words by which the Hugging Face hub's layout names a file's split (datasets' data-files
patterns: the word between delimiters in a file's or folder's name, ``data/train-00000-of-00002.parquet``,
``test.jsonl``, ``validation/0.parquet``)."""
_SPLIT_WORD = re.compile(r"(?:^|[-._ ])(" + "|".join(w for ws in SPLIT_WORDS.values() for w in ws) + r")(?=$|[-._ 0-9])")


def _named_splits(p: Path, files: list[Path]) -> dict[str, list[str]]:
    """The splits the files of folder ``p`` name, each with its files (relative paths): a file
    names the split of the first word of ``SPLIT_WORDS`` in its path below ``p``.

        >>> _named_splits(Path("d"), [Path("d/data/train-00000-of-00001.parquet"), Path("d/data/test-00000-of-00001.parquet"),
        ...                           Path("d/notes.jsonl"), Path("d/retrained.jsonl")])
        {'train': ['data/train-00000-of-00001.parquet'], 'test': ['data/test-00000-of-00001.parquet']}
    """
    out: dict[str, list[str]] = {}
    for f in files:
        rel = f.relative_to(p)
        for part in rel.parts:
            m = _SPLIT_WORD.search(part.lower())
            if m:
                name = next(k for k, ws in SPLIT_WORDS.items() if m.group(1) in ws)
                out.setdefault(name, []).append(rel.as_posix())
                break
    return out


def _is_saved_dataset(p: Path) -> bool:
    return (p / "dataset_dict.json").is_file() or (p / "dataset_info.json").is_file()


_FOLDER_READS = (".jsonl", ".json", ".parquet", ".pq", ".csv", ".tsv")
_FOLDER_SKIPS = re.compile(r"^(readme|license|licence|notice|copying)(\.[\w.-]*)?$|\.md$|^dataset_infos\.json$",
                           re.IGNORECASE)


def folder_files(p: Path) -> list[Path]:
    """The data files of the folder ``p``, each read by its own reader, in the order of their
    paths: every ``.jsonl``, ``.json`` and ``.parquet`` file below it. Documentation (README,
    LICENSE, ``*.md``) and hidden files and folders are skipped; any other file (CSV, text,
    Arrow, a pipe, ...) makes the folder a ``UsageError`` naming it, since a file that is not
    read would be data lost without a word, as would a linked folder (not followed: pass it
    itself). A hub card's ``dataset_infos.json`` is metadata, skipped too. File names are never
    read as split names, but a folder whose files name two splits or more by the hub's naming
(``train.jsonl`` beside ``validation.jsonl``, ``data/train-*.parquet`` beside ``data/test-*.parquet``:
``SPLIT_WORDS``) is a ``UsageError`` naming them, since reading it whole would train its held-out
split without a word.

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
        if inner_name(f).suffix.lower() not in _FOLDER_READS:
            raise UsageError(f"{p}: holds {rel}, which sftlab does not read (expected JSONL, JSON, Parquet, "
                             "CSV or TSV files, also gzip, bz2 or xz compressed; README, LICENSE, *.md and "
                             "hidden files are skipped); convert or move it out, or pass the data files themselves")
        out.append(f)
    splits = _named_splits(p, out)
    if len(splits) > 1:
        shown = "; ".join(f"{name}: {', '.join(files[:2])}{' ...' if len(files) > 2 else ''}"
                          for name, files in splits.items())
        raise UsageError(f"{p}: holds the files of several splits by their names ({shown}); a folder is read "
                         "whole, which would train every split; give each split's files as inputs of their own "
                         "(training files in data.train, held-out ones in data.eval)")
    if not out:
        raise UsageError(f"{p}: is a directory but neither a saved datasets directory (expected "
                         "dataset_info.json or dataset_dict.json from save_to_disk) nor a folder of "
                         "data files (JSONL, JSON, Parquet, CSV, TSV); pass the data files instead")
    return out


def sources(p: Path, max_bytes: int) -> Iterator[tuple[str, Iterator[RawItem]]]:
    """(name, items) for each input inside ``p``: one for a file, one per split for a dataset
    (a ``save_to_disk`` directory, read with ``datasets.load_from_disk``, which copies nothing;
    a dataset name, read with ``datasets.load_dataset`` from the local Hugging Face cache), one
    per data file of a folder (``folder_files``: each read as that file alone is, record by
    record, named by its path)."""
    if p.is_dir() and _is_saved_dataset(p):
        yield from read_saved_dataset(p, max_bytes)
        return
    if p.is_dir():
        for f in folder_files(p):
            yield from sources(f, max_bytes)
        return
    if hub_dataset(p) is not None:
        yield from read_dataset(p, max_bytes)
        return
    name = str(p)
    with open_input(p) as f:
        head = _head(f)
        stream = io.BufferedReader(_Prefixed(head, f), buffer_size=1 << 16)
        codec = compression(p, head)
        if codec is not None:
            stream = io.BufferedReader(Decompressed(p, codec, stream), buffer_size=1 << 16)
            head = _head(stream)
            stream = io.BufferedReader(_Prefixed(head, stream), buffer_size=1 << 16)
        kind = _format(inner_name(p) if codec else p, head)
        if kind == "parquet":
            _no_compressed_parquet(p, codec)
            yield name, read_parquet(p, stream, max_bytes)
        elif kind == "csv":
            yield name, read_csv(p, stream, max_bytes, "\t" if inner_name(p).suffix.lower() == ".tsv" else ",")
        elif kind == "array":
            data = stream.read() if codec is None else stream.read(MAX_COMPRESSED_ARRAY + 1)
            if len(data) > MAX_COMPRESSED_ARRAY:
                raise UsageError(f"{p}: a {codec}-compressed JSON array of more than "
                                 f"{MAX_COMPRESSED_ARRAY >> 30} GiB decompressed, which is read whole; "
                                 "write it as JSONL (one record per line), which is read as a stream")
            yield name, read_json_array(p, data, max_bytes)
        elif codec is not None:
            yield name, _read_jsonl(BoundedLines(stream, max_bytes), max_bytes)
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


def whole_input(p: Path, data: bytes) -> tuple[bytes, str]:
    """A small input read whole (a prompt or labelled file): its bytes, decompressed, and its format
    (``csv``, ``tsv``, ``parquet``, ``array`` or ``jsonl``), decided as ``sources`` decides it."""
    codec = compression(p, data[:16])
    name = p
    if codec is not None:
        data, name = decompressed(p, codec, data), inner_name(p)
    kind = _format(name, _head(io.BytesIO(data)))
    if kind == "parquet":
        _no_compressed_parquet(p, codec)
    return data, "tsv" if kind == "csv" and name.suffix.lower() == ".tsv" else kind


def _no_compressed_parquet(p: Path, codec: str | None) -> None:
    if codec is not None:
        raise UsageError(f"{p}: Parquet compressed as a whole file ({codec}); Parquet compresses its own "
                         "pages: decompress the file and pass the .parquet file")


def _format(p: Path, head: bytes) -> str:
    """``parquet``, ``csv``, ``array`` or ``jsonl``, by extension and structure, not the first byte alone."""
    if p.suffix.lower() in (".parquet", ".pq") or head.startswith(b"PAR1"):
        return "parquet"
    if p.suffix.lower() in (".csv", ".tsv"):
        return "csv"
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
            yield lineno, preview(raw), too_large(len(raw), max_bytes)
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
        head = _head(f)
        if compression(p, head) is not None or _format(p, head) != "jsonl":
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
    return open_file(p, stream=True)


def _parse_line(lineno: int, text: str) -> RawItem:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return lineno, text.rstrip("\r\n"), RecordError(
            "bad_json", f"not valid JSON: {e.msg} at column {e.colno}; expected one JSON object "
            "per line; fix: repair the line (multi-line objects belong in a JSON array file)")
    except ValueError:  # Python refuses integers of more than 4,300 digits
        return lineno, preview(text), _huge_number_error()
    except RecursionError:
        return lineno, preview(text), too_deep_error()
    # More brackets than the depth limit is necessary for too deep a record, and cheap to count.
    if text.count("{") + text.count("[") > MAX_DEPTH and too_deep(obj):
        return lineno, obj, too_deep_error()
    return lineno, obj, None


def _opens_an_object(text: str) -> bool:
    """A first line that starts an object it does not close, or one whose only key holds the records
    (``{"data": [...]}``): the input is one object, not JSONL (``_read_jsonl`` and ``jsonl_starts``
    decide it alike)."""
    return text.lstrip().startswith("{") and (_RECORD_LIST.match(text) is not None or not _complete_json(text))


_RECORD_LISTS = ("data", "train", "test", "validation", "records", "examples", "rows", "items", "samples")
"""The names under which a file may hold its records as the one key of one JSON object."""
_RECORD_LIST = re.compile(r'\s*\{\s*"(' + "|".join(_RECORD_LISTS) + r')"\s*:\s*\[')


def _complete_json(text: str) -> bool:
    try:
        json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return text.rstrip().endswith("}")  # a whole line that is just malformed
    return True


def _read_single_object(data: bytes, max_bytes: int) -> Iterator[RawItem]:
    text, bad_utf8 = decode(data)
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):  # not one object after all: read it line by line
        yield from _read_jsonl(io.BytesIO(data), max_bytes, sniff=False)
        return
    if len(obj) == 1 and next(iter(obj)) in _RECORD_LISTS and type(next(iter(obj.values()))) is list:
        yield from _listed_records(text, max_bytes)
        return
    size = len(text.encode("utf-8", "surrogateescape"))
    if size > max_bytes:
        yield 1, preview(text), too_large(size, max_bytes)
        return
    problem = shape_problem(obj, bad_utf8)
    yield 1, escape_surrogates(obj) if problem and bad_utf8 else obj, problem


def _listed_records(text: str, max_bytes: int) -> Iterator[RawItem]:
    """The records of an object whose one key holds them (``{"data": [...]}``), numbered and placed
    on their file lines as a JSON array's are.

    >>> [item[1:] for item in _listed_records('{"train": [\\n {"a": 1},\\n {"b": 2}]}', 100)]
    [({'a': 1}, None, 2), ({'b': 2}, None, 3)]
    """
    start = text.index("[")
    end = text.rindex("]") + 1
    skipped = text.count("\n", 0, start)
    for i, obj, problem, line in read_json_array(Path("-"), text[start:end].encode("utf-8", "surrogateescape"),
                                                  max_bytes):
        yield i, obj, problem, line + skipped


def read_json_array(p: Path, data: bytes, max_bytes: int) -> Iterator[RawItem]:
    text, bad_utf8 = decode(data)
    file_line, counted, ints = 1, 0, _IntGuard()  # one guard per file: nothing carries over
    try:
        for i, (obj, start, end) in enumerate(_array_elements(text, ints), 1):
            file_line += text.count("\n", counted, start)  # the line the record starts on
            counted = start
            huge, size = ints.take(), len(text[start:end].encode("utf-8", "surrogateescape"))
            if size > max_bytes:
                yield i, preview(text[start:end]), too_large(size, max_bytes), file_line
                continue
            if huge:
                yield i, preview(text[start:end]), _huge_number_error(), file_line
                continue
            # Bracket counting (in C) rules out deep nesting for almost every record.
            maybe_deep = text.count("{", start, end) + text.count("[", start, end) > MAX_DEPTH
            problem = shape_problem(obj, bad_utf8) if maybe_deep or bad_utf8 else None
            if problem is not None and problem.code == "invalid_utf8":
                obj = escape_surrogates(obj)
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


def input_digest(p: Path) -> str:
    """sha256 of what an input's records are read from: a file's bytes, every file of a
    directory (with its relative path), or a named dataset's fingerprint in the local cache.
    Equal digests, equal records: it lets a prepared store be found without reading them."""
    if hub_dataset(p) is not None:
        import datasets  # for start-up time

        ds = load_dataset(p)
        parts = ds.values() if isinstance(ds, datasets.DatasetDict) else [ds]
        return json_sha256({"dataset": [getattr(d, "_fingerprint", None) for d in parts]})
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    digests = []
    for f in files:
        with open_input(f) as fh:
            digests.append((str(f.relative_to(p) if p.is_dir() else ""), stream_sha256(fh)))
    return files_digest(digests)
