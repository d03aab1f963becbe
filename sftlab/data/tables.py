"""Tables: CSV and TSV files with a header line, read with the standard library's csv module
(every cell text as written, quoted cells spanning lines, each row named by the file line it
starts on). ``read_csv`` gives the data readers' items; ``table_rows`` the rows alone, which the
evaluation's prompt and labelled files read too."""
from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sftlab.data.record_errors import RecordError
from sftlab.data.record_shape import decode, escape_surrogates, preview, shape_problem, too_large
from sftlab.errors import UsageError

__all__ = ["table_rows", "read_csv"]

def table_rows(text: str, where: str, delimiter: str = ",") -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """``(header, (file line, cells) of each row)`` of the CSV (or TSV) ``text``: the line a row
    starts on (quoted cells may span lines), blank lines skipped, cells as long as the text (the
    csv module's default stops at 128 KiB); a malformed file is a one-line ``UsageError`` naming
    ``where`` and the line.

    >>> header, rows = table_rows('a,b\\n"x\\ny",1\\n\\n2\\n', "t.csv")
    >>> header, list(rows)
    (['a', 'b'], [(2, ['x\\ny', '1']), (5, ['2'])])
    """
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)

    def refuse(e: csv.Error) -> UsageError:
        return UsageError(f"{where}: line {reader.line_num}: not readable {'TSV' if delimiter == chr(9) else 'CSV'} ({e})")

    try:
        header = next(reader, [])
    except csv.Error as e:
        raise refuse(e) from None

    def rows() -> Iterator[tuple[int, list[str]]]:
        start = reader.line_num + 1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise refuse(e) from None
            line, start = start, reader.line_num + 1
            if cells:
                yield line, cells

    return header, rows()


def read_csv(p: Path, stream: Any, max_bytes: int, delimiter: str) -> Iterator[tuple]:
    """The rows of a CSV (or, with a tab ``delimiter``, TSV) file under a header line, each a
    record of its columns. Every cell is text as written (an empty cell is ``""``; a column of
    numbers stays text, so "012" stays "012"), so Alpaca or prompt/completion columns read as
    they do from JSONL. A record is named by its row (the first under the header is 1) and the
    file line it starts on (``table_rows``); a row with more or fewer cells than the header is
    quarantined naming both counts.

    >>> import io
    >>> rows = read_csv(Path("t.csv"), io.BytesIO(b'instruction,output\\n"a, b","x\\ny"\\nc\\n'), 10**6, ",")
    >>> [(row, record, problem and problem.code, line) for row, record, problem, line in rows]
    [(1, {'instruction': 'a, b', 'output': 'x\\ny'}, None, 2), (2, 'c', 'bad_row', 4)]
    """
    text, bad_utf8 = decode(stream.read())
    header, rows = table_rows(text, str(p), delimiter)
    if not any(header):
        raise UsageError(f"{p}: empty, or no header line; expected a header naming the columns "
                         "(e.g. instruction,input,output) and one record per row")
    if len(set(header)) != len(header):
        raise UsageError(f"{p}: the header names a column twice ({header}); give each column its own name")
    for n, (line, cells) in enumerate(rows, 1):
        obj = dict(zip(header, cells))
        size = sum(len(c.encode("utf-8", "surrogateescape")) for c in cells)
        if size > max_bytes:
            yield n, preview(delimiter.join(cells)), too_large(size, max_bytes), line
        elif len(cells) != len(header):  # quarantined as its cells, every one (a dict would drop extra ones)
            yield n, preview(delimiter.join(cells)), RecordError("bad_row", f"{len(cells)} cells under a header of {len(header)} "
                                      "columns; fix: quote cells that hold the delimiter, or fill the row"), line
        else:
            problem = shape_problem(obj, bad_utf8) if bad_utf8 else None
            yield n, escape_surrogates(obj) if problem else obj, problem, line
