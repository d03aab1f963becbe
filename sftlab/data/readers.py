"""Readers: the records of JSONL, JSON, Parquet and saved ``datasets`` inputs, with their lines.

Each reader yields ``(line, raw record or raw text, problem or None)`` (a JSON array adds a fourth
item, the file line where the record starts, its ``line`` being the record number) and never raises for a
bad record: a line that is not JSON, is not valid UTF-8, or is absurdly large or deep comes out
with its problem, so ``sftlab.data.loading`` can quarantine it and keep reading. An input that cannot
be read at all raises ``UsageError``.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sftlab.errors import UsageError
from sftlab.data.formats import RecordError

DEFAULT_MAX_RECORD_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 64
_PREVIEW_CHARS = 2000
_BATCH_ROWS = 4096
_WHITESPACE = re.compile(r"[ \t\n\r]*")

# (line, raw record or raw text, problem found while reading or None[, file line of a JSON array element])
RawItem = tuple


def check_readable(p: Path) -> None:
    if not p.exists():
        raise UsageError(f"{p}: no such file or directory")
    if p.is_dir():
        if not _is_saved_dataset(p):
            raise UsageError(f"{p}: is a directory but not a saved datasets directory (expected "
                             "dataset_info.json or dataset_dict.json from save_to_disk); pass "
                             "the data files instead")
        return
    try:
        with open(p, "rb"):
            pass
    except OSError as e:
        raise UsageError(f"{p}: cannot read: {e.strerror or e}") from None


def _is_saved_dataset(p: Path) -> bool:
    return (p / "dataset_dict.json").is_file() or (p / "dataset_info.json").is_file()


def sources(p: Path, max_bytes: int) -> Iterator[tuple[str, Iterator[RawItem]]]:
    """(name, items) for each input inside ``p``: one for a file, one per split for a dataset."""
    if p.is_dir():
        yield from _read_saved_dataset(p, max_bytes)
        return
    with open(p, "rb") as f:
        head = f.read(4096)
    name = str(p)
    if p.suffix.lower() in (".parquet", ".pq") or head.startswith(b"PAR1"):
        yield name, _read_parquet(p, max_bytes)
    elif head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        yield name, _read_json_array(p, max_bytes)
    else:
        yield name, _read_jsonl(p, max_bytes)


def _read_jsonl(p: Path, max_bytes: int, sniff: bool = True) -> Iterator[RawItem]:
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if len(raw) > max_bytes:
                yield lineno, _preview(raw), _too_large(len(raw), max_bytes)
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, raw.decode("utf-8", "backslashreplace").rstrip("\r\n"), RecordError(
                    "invalid_utf8", f"invalid UTF-8 at byte {e.start} of the line; expected UTF-8 "
                    "text; fix: re-encode the file as UTF-8")
                continue
            if not text or text.isspace():
                continue
            if sniff and text.lstrip().startswith("{") and not _complete_json(text):
                # Perhaps a .json file holding one pretty-printed object, not JSONL.
                yield from _read_single_object(p, max_bytes)
                return
            sniff = False
            yield _parse_line(lineno, text)


def _parse_line(lineno: int, text: str) -> RawItem:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return lineno, text.rstrip("\r\n"), RecordError(
            "bad_json", f"not valid JSON: {e.msg} at column {e.colno}; expected one JSON object "
            "per line; fix: repair the line (multi-line objects belong in a JSON array file)")
    except RecursionError:
        return lineno, _preview(text), _too_deep_error()
    # More brackets than the depth limit is necessary for too deep a record, and cheap to count.
    if text.count("{") + text.count("[") > MAX_DEPTH and _too_deep(obj):
        return lineno, obj, _too_deep_error()
    return lineno, obj, None


def _complete_json(text: str) -> bool:
    try:
        json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return text.rstrip().endswith("}")  # a whole line that is just malformed
    return True


def _read_single_object(p: Path, max_bytes: int) -> Iterator[RawItem]:
    text, bad_utf8 = _read_text(p)
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        obj = None
    if not isinstance(obj, dict):  # not one object after all: read it line by line
        yield from _read_jsonl(p, max_bytes, sniff=False)
        return
    size = len(text.encode("utf-8", "surrogateescape"))
    if size > max_bytes:
        yield 1, _preview(text), _too_large(size, max_bytes)
        return
    problem = _shape_problem(obj, bad_utf8)
    yield 1, _escape_surrogates(obj) if problem and bad_utf8 else obj, problem


def _read_json_array(p: Path, max_bytes: int) -> Iterator[RawItem]:
    text, bad_utf8 = _read_text(p)
    file_line, counted = 1, 0
    try:
        for i, (obj, start, end) in enumerate(_array_elements(text), 1):
            file_line += text.count("\n", counted, start)  # the line the record starts on
            counted = start
            size = len(text[start:end].encode("utf-8", "surrogateescape"))
            if size > max_bytes:
                yield i, _preview(text[start:end]), _too_large(size, max_bytes), file_line
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


def _array_elements(text: str) -> Iterator[tuple[Any, int, int]]:
    """``(element, start, end)`` for each element of the JSON array ``text``.

    Decoding element by element gives each record's extent, so its size and nesting can be
    checked on the text instead of serialising the record again.
    """
    decoder, skip = json.JSONDecoder(), _WHITESPACE.match
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


def _read_text(p: Path) -> tuple[str, bool]:
    """The file's text, and whether it held invalid UTF-8 (kept as surrogates, found later)."""
    data = p.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape"), True


def _read_parquet(p: Path, max_bytes: int) -> Iterator[RawItem]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(p).iter_batches(batch_size=_BATCH_ROWS)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UsageError(f"{p}: not a readable Parquet file ({e})") from None
    yield from _read_batches(batches, max_bytes)


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

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:  # datasets raises several types for a damaged directory
        raise UsageError(f"{p}: not a loadable saved dataset ({e})") from None
    splits = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    for split, d in splits:
        name = str(p) if split is None else f"{p}[{split}]"
        batches = d.with_format("arrow").iter(batch_size=_BATCH_ROWS)
        yield name, _read_batches(batches, max_bytes)


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
