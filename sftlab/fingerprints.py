"""Content hashes: the one place every sftlab fingerprint is computed.

Configs, records, tokenizers and policies are hashed as sha256 over their canonical JSON
(sorted keys, compact separators, UTF-8), so key order, comments and whitespace never change
a hash, and the same object hashes the same wherever it is recorded (checkpoint state,
``run.json``, template fingerprints, cache keys)::

    >>> config_hash({"b": 1, "a": 2}) == config_hash({"a": 2, "b": 1})
    True
    >>> canonical_json({"b": [1, 2], "a": "é"})
    '{"a":"é","b":[1,2]}'
"""
from __future__ import annotations

import hashlib
import json
import os
import weakref
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

__all__ = ["canonical_json", "canonical_bytes", "data_bytes", "json_sha256", "chained_sha256", "config_hash", "sha256_hex",
           "file_sha256", "stream_sha256", "file_prefix_sha256", "tokenizer_sha256", "tokenizer_fingerprint",
           "weights_sha256"]

_BLOCK = 1 << 22


_ENCODERS = {None: json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False),
             str: json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)}


def canonical_json(value: Any, default: Callable[[Any], Any] | None = None) -> str:
    """Key-sorted, compact JSON: the form every sftlab hash is taken over. ``default`` is called
    for a value JSON has no form for (``str`` for records read from Parquet or a dataset, which
    may hold dates or bytes); ``None`` raises ``TypeError`` for one.

        >>> import datetime
        >>> canonical_json({"at": datetime.date(2026, 12, 7)}, default=str)
        '{"at":"2026-12-07"}'
    """
    encoder = _ENCODERS.get(default)
    if encoder is None:
        encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=default)
    return encoder.encode(value)


_DATA_OPTIONS = None  # orjson's options for data_bytes, set on first use


def data_bytes(value: Any) -> bytes:
    """``canonical_bytes(value, default=str)`` of a record's data (what JSON, Parquet or a dataset
    gives: dicts with string keys, lists, strings, numbers, booleans, None, dates, bytes), the same
    bytes, made by orjson's compiled encoder where it writes what ``json`` writes and by ``json``
    elsewhere. orjson writes every string, key order and integer as ``json`` does (a test checks
    each code point and random floats); it writes a float below 1e-4 without the exponent
    ``json`` gives it (``0.00005`` for ``5e-05``) and NaN or infinity as ``null``, so a text with
    ``0.0000`` or ``e-`` anywhere, one with ``null`` that does not read back as the value (NaN
    reads back as None), or one orjson refuses (an unpaired surrogate, an integer beyond 64 bits,
    a key that is no string), is written by ``json``. Dates, times and
    dataclasses go to ``str`` as ``json``'s ``default=str`` sends them (an ``Enum``, which orjson
    writes as its value, is no record data).

        >>> data_bytes({"b": [1, 0.5, None], "a": "é"}) == canonical_bytes({"b": [1, 0.5, None], "a": "é"})
        True
        >>> data_bytes([5e-05, "\\ud800"]) == canonical_bytes([5e-05, "\\ud800"])
        True
    """
    global _DATA_OPTIONS
    import orjson  # lazy: only a store build hashes records in bulk

    if _DATA_OPTIONS is None:
        _DATA_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
    try:
        out = orjson.dumps(value, default=str, option=_DATA_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError: what json may still write (or refuse with its own message)
        return canonical_bytes(value, default=str)
    if b"0.0000" in out or b"e-" in out or (b"null" in out and orjson.loads(out) != value):
        return canonical_bytes(value, default=str)  # a float json writes otherwise, or NaN (read back: None)
    return out


def canonical_bytes(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """``canonical_json(value, default)`` as UTF-8, the bytes a hash reads; an unpaired surrogate
    (a JSON escape such as ``"\\ud800"`` that no UTF-8 text holds) is kept, not refused.

        >>> canonical_bytes(["\\ud800"])
        b'["\\xed\\xa0\\x80"]'
    """
    return canonical_json(value, default).encode("utf-8", "surrogatepass")


def json_sha256(value: Any, default: Callable[[Any], Any] | None = None) -> str:
    """sha256 hex of ``canonical_bytes(value, default)``: the hash of a JSON value, whatever its
    key order (a config, a cache key's parts).

        >>> json_sha256({"b": 1, "a": 2}) == json_sha256({"a": 2, "b": 1})
        True
    """
    return hashlib.sha256(canonical_bytes(value, default)).hexdigest()


def chained_sha256(digests: Iterable[str]) -> str:
    """sha256 hex of hex digests written one after another: one hash over parts hashed apart
    (the chunks of an input, the inputs of a store), in their order.

        >>> chained_sha256(["ab", "cd"]) == chained_sha256(["abcd"]) != chained_sha256(["cd", "ab"])
        True
    """
    h = hashlib.sha256()
    for d in digests:
        h.update(d.encode("ascii"))
    return h.hexdigest()


def sha256_hex(data: str | bytes) -> str:
    """sha256 hex of bytes, or of text as UTF-8 (lone surrogates kept, so no text fails to hash).

    >>> sha256_hex("abc") == sha256_hex(b"abc") == "ba7816bf" + sha256_hex(b"abc")[8:]
    True
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


def config_hash(config: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of a config dict (key order does not matter)."""
    return json_sha256(config)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex of a file's bytes, read a block at a time: the one way sftlab hashes a file.

        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile(delete=False) as f:
        ...     _ = f.write(b"abc")
        >>> file_sha256(f.name)[:16]
        'ba7816bf8f01cfea'
        >>> os.unlink(f.name)
    """
    with open(path, "rb") as f:
        return stream_sha256(f)


def stream_sha256(stream: BinaryIO) -> str:
    """sha256 hex of what is left to read in a binary stream (an input opened with
    ``sftlab.files.open_input``), read a block at a time."""
    h = hashlib.sha256()
    for block in iter(lambda: stream.read(_BLOCK), b""):
        h.update(block)
    return h.hexdigest()


def copy_sha256(src: BinaryIO, dest: BinaryIO) -> str:
    """Copy what is left to read in ``src`` to ``dest``, a block at a time; the sha256 hex of the
    bytes copied (``stream_sha256`` of the same bytes)."""
    h = hashlib.sha256()
    for block in iter(lambda: src.read(_BLOCK), b""):
        h.update(block)
        dest.write(block)
    return h.hexdigest()


def files_digest(files: Iterable[tuple[str, str]]) -> str:
    """The digest of an input read from files: its ``(path relative to the input, sha256 of the
    file's bytes)`` pairs in order (one file: path ``""``). A pipe copied while read and the file
    it was copied to have the same digest.

        >>> files_digest([("", sha256_hex(b"x"))]) == files_digest((("", sha256_hex(b"x")),))
        True
    """
    return json_sha256({"files": [[name, digest] for name, digest in files]})


def file_prefix_sha256(path: str | os.PathLike, limit: int) -> str:
    """sha256 hex of a file's size in bytes (decimal), a NUL, and its first ``limit`` bytes: a
    cheap fingerprint of a file too large to read whole (a GGUF model)."""
    h = hashlib.sha256(str(os.stat(path).st_size).encode() + b"\0")
    with open(path, "rb") as f:
        h.update(f.read(limit))
    return h.hexdigest()


_BACKEND_SHA: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def tokenizer_sha256(tokenizer: Any) -> str | None:
    """sha256 of everything that decides how a tokenizer encodes and renders: the backend
    tokenizer's full JSON (vocabulary, merges, normaliser, pre-tokeniser, added tokens), the
    special tokens map and the chat template; ``None`` for no tokenizer. Two tokenizers with the
    same hash encode and render identically. The backend's JSON (the costly part) is hashed once
    per tokenizer object and per number of added tokens; the rest is hashed on every call, so
    setting ``chat_template`` afterwards changes the hash."""
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    size = len(tokenizer)
    try:
        body = _BACKEND_SHA.get(tokenizer)
    except TypeError:
        body = None
    if body is None or body[0] != size:
        text = backend.to_str() if backend is not None else canonical_json(sorted(tokenizer.get_vocab().items()))
        body = (size, sha256_hex(text))
        try:
            _BACKEND_SHA[tokenizer] = body
        except TypeError:
            pass
    specials = {"map": getattr(tokenizer, "special_tokens_map", {}),
                "all": sorted(getattr(tokenizer, "all_special_tokens", []) or [])}
    return sha256_hex(canonical_json({"backend": body[1], "special_tokens": specials,
                                   "chat_template": getattr(tokenizer, "chat_template", None)}))


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """The manifest's ``tokenizer`` section: name, sha256, vocabulary size and added tokens."""
    return {"name_or_path": str(getattr(tokenizer, "name_or_path", "") or "") or None,
            "sha256": tokenizer_sha256(tokenizer),
            "vocab_size": len(tokenizer),
            "added_tokens": dict(sorted(tokenizer.get_added_vocab().items(), key=lambda kv: kv[1]))}


_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def weights_sha256(path: Any, known: dict | None = None) -> tuple[str | None, dict]:
    """``(sha256, files)`` of a local model's weights: the weight files of the directory ``path``
    (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.gguf``, by name) or the one file ``path``, and
    ``{name: [bytes, mtime_ns, ctime_ns, inode, sha256]}`` per file. A file whose stat equals its
    entry in ``known`` (the ``files`` of an earlier call) is not read again: any write moves its
    ctime, which no user call sets back, so the hash is read once per change of the file.
    ``(None, {})`` for a path that is no local file or directory (a hub name).

        >>> import tempfile, os
        >>> d = tempfile.mkdtemp(); _ = open(os.path.join(d, "model.safetensors"), "wb").write(b"w")
        >>> digest, files = weights_sha256(d)
        >>> weights_sha256(d, known=files)[0] == digest, files["model.safetensors"][0]
        (True, 1)
    """
    root = Path(path)
    if root.is_file():
        found = [root]
    elif root.is_dir():
        found = sorted(p for p in root.iterdir() if p.suffix in _WEIGHT_FILES and p.is_file())
    else:
        return None, {}
    known = known if isinstance(known, dict) else {}
    files, h = {}, hashlib.sha256()
    for p in found:
        st = os.stat(p)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = known.get(p.name)
        if isinstance(entry, list) and entry[:4] == stamp and isinstance(entry[-1], str):
            digest = entry[-1]
        else:
            digest = file_sha256(p)
        files[p.name] = [*stamp, digest]
        h.update(p.name.encode("utf-8") + b"\0" + digest.encode() + b"\0")
    return h.hexdigest(), files
