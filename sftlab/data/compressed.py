"""Compressed inputs: gzip, bz2 and xz files found by their first bytes (not their name: a
``.jsonl`` may be gzipped) and decompressed as they are read, with the standard library's decoders;
what sftlab cannot stream (zstd, zip, 7z) is a ``UsageError`` naming how to unpack it. A
compressed file can hold a line far larger than itself: ``BoundedLines`` reads lines without
holding more than the record limit of one.

Example::

    >>> import gzip
    >>> data = gzip.compress(b'{"a": 1}')
    >>> compression(Path("t.jsonl.gz"), data), decompressed(Path("t.jsonl.gz"), "gzip", data)
    ('gzip', b'{"a": 1}')
    >>> inner_name(Path("train.jsonl.gz")).name
    'train.jsonl'
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
from pathlib import Path
from typing import Any

from sftlab.data.columnar import first_line
from sftlab.errors import UsageError

__all__ = ["MAX_COMPRESSED_ARRAY", "compression", "decompressed", "inner_name", "Decompressed", "BoundedLines"]

_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"))
_UNREAD = ((b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first (zstd -d FILE)"),
           (b"PK\x03\x04", "a zip archive", "unpack it and pass the data files (or their folder)"),
           (b"7z\xbc\xaf\x27\x1c", "a 7z archive", "unpack it and pass the data files (or their folder)"))
_COMPRESSED_SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}
MAX_COMPRESSED_ARRAY = 4 << 30
"""The most a compressed JSON array may decompress to (it is parsed whole; JSONL is streamed)."""


def compression(p: Path, head: bytes) -> str | None:
    """``gzip``, ``bz2`` or ``xz`` where the input's first bytes say it is compressed so (its
    name is not asked: a ``.jsonl`` may be gzipped), ``None`` where it is not; a ``UsageError``
    for a compressed or archived input sftlab cannot stream (zstd, zip, 7z).

    >>> compression(Path("a.jsonl"), b'{"a": 1}') is None
    True
    """
    for magic, codec in _MAGIC:
        if head.startswith(magic):
            return codec
    if head.startswith(b"BZh") and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):  # a block, or the end
        return "bz2"
    for magic, what, fix in _UNREAD:
        if head.startswith(magic):
            raise UsageError(f"{p}: is {what}, which sftlab does not read; {fix}")
    return None


def decompressed(p: Path, codec: str, data: bytes) -> bytes:
    """The decompressed bytes of a whole compressed input held in memory (small files: prompt sets)."""
    return Decompressed(p, codec, io.BytesIO(data)).read()


def inner_name(p: Path) -> Path:
    """The name without a compression suffix: ``train.jsonl.gz`` -> ``train.jsonl``."""
    return p.with_suffix("") if p.suffix.lower() in _COMPRESSED_SUFFIXES else p


class Decompressed(io.RawIOBase):
    """The decompressed bytes of the binary stream ``raw`` (``gzip``, ``bz2`` or ``xz``, the
    standard library's decoders, multi-member files included); damaged or truncated compressed
    data is a ``UsageError`` naming the file and how far it was read."""

    def __init__(self, p: Path, codec: str, raw: Any):
        self._p, self._codec, self._out = p, codec, 0
        opener = {"gzip": gzip.GzipFile, "bz2": bz2.BZ2File, "xz": lzma.LZMAFile}[codec]
        self._f = opener(fileobj=raw, mode="rb") if codec == "gzip" else opener(raw, mode="rb")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            n = self._f.readinto(b)
        except (OSError, EOFError, ValueError) as e:  # BadGzipFile, LZMAError, a truncated stream ...
            raise UsageError(f"{self._p}: damaged {self._codec} data after {self._out:,} decompressed "
                             f"bytes ({first_line(e)}); repair or re-download the file") from None
        self._out += n
        return n


class BoundedLines:
    """The lines of the binary stream ``f`` with none held in memory beyond ``max_bytes`` (a
    compressed input can hold a line far larger than the file itself): a longer line is read on
    to its end in pieces and comes out as its first bytes with the whole line's size as its
    length (``_SizedLine``), which ``_read_jsonl`` refuses as too large. ``read()`` gives the rest
    of the stream (``_read_jsonl``'s one pretty-printed object)."""

    def __init__(self, f: Any, max_bytes: int):
        self._f, self._max, self._first = f, max_bytes, True

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        line = self._f.readline(self._max + 1)
        if not line:
            raise StopIteration
        if self._first:
            self._first, line = False, line.removeprefix(b"\xef\xbb\xbf")
        if len(line) > self._max and not line.endswith(b"\n"):
            size = len(line)
            while True:
                more = self._f.readline(1 << 20)
                size += len(more)
                if not more or more.endswith(b"\n"):
                    break
            return _SizedLine(line, size)
        return line

    def read(self) -> bytes:
        return self._f.read()


class _SizedLine(bytes):
    """The start of a line too large to keep, with the line's whole size as its ``len``."""

    def __new__(cls, start: bytes, size: int):
        self = super().__new__(cls, start)
        self.size = size
        return self

    def __len__(self) -> int:
        return self.size
