"""What finds a prepared store: its key, the raw digests of its inputs that index the key, and the
stat stamps that spare hashing files which did not change.

The key is the sha256 (``sftlab.fingerprints.json_sha256``) of the key parts: everything but the
records that decides what the store holds (``key_parts``), plus the normalised records' digest per
input once they are read. The normalised records are only known after reading, so the raw content
of each input (``sftlab.data.readers.input_digest``: file bytes, or a dataset's fingerprint) with
the other parts indexes the key: ``CACHE/index/<json_sha256(parts + raw digests)>.json`` holds
``{"key", "raw", "store_sha256"}`` (``write_index``, ``read_index``), so a run on unchanged files
finds its store without reading a record.

Stat stamps, as git's index keeps them for a work tree: a file whose content was hashed is
remembered by its ``stat`` (size, mtime, ctime, inode, device); while those are unchanged the
content is the one hashed. Any write changes the ctime (which no user call can set back), a
replaced file has another inode, so a truncated or altered file is hashed again and caught. A
file changed within ``RACY_NS`` of being hashed could change again within the same clock tick, so
such a stamp is not kept (it is hashed again next time), which is git's "racy clean" rule.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import sftlab
from sftlab import fingerprints
from sftlab.data.readers import input_digest
from sftlab.errors import UsageError
from sftlab.files import write_atomic

FORMAT = 6
# 2: the statistics summaries keep word 3-shingles (near duplicates confirmed exactly);
# 3: a record whose untrained turn's reasoning the template does not write is refused
#    (reasoning_not_written), so a store of format 2 may hold records that format 3 quarantines.
# 4: a record whose template rewrites an untrained message's text and loses part of it is refused
#    (content_rewritten), and a tool-call string spelling a special token that a template writes bare
#    is encoded as text: a store of format 3 may hold such records encoded otherwise.
# 5: Glaive v2, xLAM, Nemotron, XTuner/Capybara exchange and LIMA records are read (they were quarantined as
#    unknown_format or bad_message), and a JSON object whose one key holds the records is read as those records:
#    and columns naming only system, tools, chosen, rejected or metadata keep each record's own layout (they made
#    every record an Alpaca one): a store of format 4 made from the same files and entry holds fewer records.
# 6: reasoning written inline in an answer is read in every known convention (and DeepSeek-R1's text
#    before a lone </think>), masked with its markers under reasoning: mask, and an answer whose
#    reasoning cannot be read is refused under mask/drop (reasoning_unread, reasoning_trained): a store
#    of format 5 may hold such records trained otherwise.
"""The store format: its files and their layout (a store of another format is rebuilt)."""
RACY_NS = 2_000_000_000
SAMPLE_BYTES = 128 << 20
"""Bytes of stamped files hashed anyway on every open (drawn at random), and the size up to
which an input file is hashed on every run instead of trusted by its stamp."""
KEY = re.compile(r"^[0-9a-f]{64}$")


def key_parts(inputs: list[str], tokenizer, template, options: dict, policy: Any = None,
              max_record_bytes: int | None = None) -> dict:
    """Everything but the records that decides what the store holds (the records are added as
    ``inputs[i].records_sha256`` once read, or as the inputs' raw digests for the index)."""
    return {"format": FORMAT, "sftlab_version": sftlab.__version__,
            "inputs": [str(p) for p in inputs],
            "template": {"name": template.name, "fingerprint": template.fingerprint,
                         "control_tokens": list(template.control_tokens)},
            "tokenizer": fingerprints.tokenizer_fingerprint(tokenizer)["sha256"],
            "encoding": dict(sorted(options.items())),
            "policy": policy.manifest_entry()["sha256"] if policy is not None else None,
            "max_record_bytes": max_record_bytes}


def store_key(parts: dict) -> str:
    """The key of a store whose key parts (records included) are ``parts``."""
    return fingerprints.json_sha256(parts, default=str)


# ------------------------------------------------------------------------ stat-verified files

def stamp(st: os.stat_result) -> list[int]:
    """A file's stat stamp: size, mtime, ctime, inode, device."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def settled(st: os.stat_result) -> bool:
    """Unchanged for ``RACY_NS``: a stamp of it can be trusted later."""
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS


def read_stamps(path: Path) -> dict:
    try:
        stamps = json.loads(path.read_text(encoding="utf-8"))
        return stamps if isinstance(stamps, dict) else {}
    except (OSError, ValueError):
        return {}


def write_stamps(path: Path, stamps: dict) -> None:
    """Best effort: a cache folder that cannot be written only costs the hashing next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(stamps, sort_keys=True) + "\n")
    except (OSError, UsageError):
        pass


def hashed(path: Path) -> tuple[str, list[int] | None]:
    """``(sha256, stamp or None)``: the stamp when the file did not change while it was hashed
    and had settled before."""
    before = os.stat(path)
    digest = fingerprints.file_sha256(path)
    after = os.stat(path)
    return digest, stamp(after) if stamp(before) == stamp(after) and settled(after) else None


def stamps_path(store_dir: Path) -> Path:
    """``CACHE/index/KEY.stamps.json``: beside the index, so a store's own files stay what was built."""
    return store_dir.parent / "index" / f"{store_dir.name}.stamps.json"


def raw_digest(p: Path, cache: Path) -> str:
    """``sftlab.data.readers.input_digest(p)``, remembered by the file's stamp in
    ``CACHE/index/inputs.stamps.json`` for a plain file over ``SAMPLE_BYTES`` (a folder or a
    dataset is digested every time)."""
    try:
        st = os.stat(p)
    except OSError:
        return input_digest(p)
    if not Path(p).is_file():
        return input_digest(p)
    where = cache / "index" / "inputs.stamps.json"
    name = str(Path(p).resolve())
    stamps = read_stamps(where)
    entry = stamps.get(name)
    if isinstance(entry, list) and len(entry) == 2 and entry[0] == stamp(st) and st.st_size > SAMPLE_BYTES:
        return entry[1]  # a large file, unchanged since it was hashed: its content is not read again
    digest = input_digest(p)
    after = os.stat(p)
    if stamp(after) == stamp(st) and settled(after) and st.st_size > SAMPLE_BYTES:
        stamps = read_stamps(where)  # another process may have added its own inputs meanwhile
        stamps[name] = [stamp(after), digest]
        write_stamps(where, stamps)
    return digest


# ------------------------------------------------------------------------------ index entries

def index_path(cache: Path, parts: dict, raw: list[str]) -> Path:
    """``CACHE/index/<hash of the key parts and the inputs' raw digests>.json``."""
    return cache / "index" / (store_key({**parts, "raw": raw}) + ".json")


def read_index(index: Path, raw: list[str]) -> tuple[str, str] | None:
    """``(key, sha256 of its store.json)`` of an index entry written for these raw digests;
    ``None`` for no entry, an unreadable one, or one of other inputs or an older sftlab."""
    if not index.is_file():
        return None
    try:
        entry = json.loads(index.read_text(encoding="utf-8"))
        key, sha = entry["key"], entry["store_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if entry.get("raw") != raw or not isinstance(key, str) or not KEY.match(key):
        return None
    return key, sha


def write_index(index: Path, key: str, raw: list[str], store_json: Path) -> None:
    """The index entry of the store ``key`` (its ``store.json``) for inputs of these raw digests."""
    index.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(index, json.dumps({"key": key, "raw": raw,
                                    "store_sha256": fingerprints.file_sha256(store_json)}) + "\n")
