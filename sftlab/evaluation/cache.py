"""A disk cache of generated responses, so rerunning an evaluation (above all the reference
model's half) costs nothing.

The key is the sha256 of (model fingerprint, the prompts' token ids, decoder settings, eos ids
and stop strings, condition name): change any of them and the responses are generated again.
One JSON file per key under ``CACHE/ab/abcdef....json``, written atomically.

The default directory is ``$SFTLAB_CACHE/generations`` when that variable is set, else
``~/.cache/sftlab/generations``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from sftlab.errors import UsageError
from sftlab.files import write_atomic

_WEIGHT_SUFFIXES = (".safetensors", ".json")
_CHUNK = 8 << 20


def default_cache_dir() -> Path:
    root = os.environ.get("SFTLAB_CACHE")
    return Path(root) / "generations" if root else Path.home() / ".cache" / "sftlab" / "generations"


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """sha256 over the names and bytes of a model directory's ``.safetensors`` and ``.json``
    files (weights, config, generation config, tokenizer), sorted by name; for a LoRA adapter
    directory also over its base model's (what it generates depends on both)."""
    from sftlab.model.adapters import is_adapter_dir
    from sftlab.model.loading import resolve_base

    h = hashlib.sha256()
    root = Path(model_dir)
    if is_adapter_dir(root):
        base = resolve_base(root)
        h.update(b"base\0" + (model_fingerprint(base) if Path(base).is_dir() else base).encode("utf-8") + b"\0")
    for p in sorted(q for q in root.iterdir() if q.is_file() and q.suffix in _WEIGHT_SUFFIXES):
        h.update(p.name.encode("utf-8") + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def cache_key(model_fp: str, prompt_ids: list[list[int]], settings: dict, condition: str,
              eos_ids: list[int], stop_strings: list[str]) -> str:
    blob = json.dumps({"model": model_fp, "prompts": prompt_ids, "settings": settings,
                       "condition": condition, "eos": eos_ids, "stop": stop_strings},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class GenerationCache:
    """``get(key) -> responses | None`` and ``put(key, responses)``; ``directory=None`` disables it."""

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = Path(directory) if directory is not None else None
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> list[list[str]] | None:
        if self.directory is None:
            return None
        try:
            data = json.loads(self._path(key).read_text(encoding="utf-8"))
            responses = data["responses"]
        except (OSError, ValueError, KeyError, TypeError):
            self.misses += 1
            return None
        self.hits += 1
        return responses

    def put(self, key: str, responses: list[list[str]]) -> None:
        if self.directory is None:
            return
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps({"responses": responses}, ensure_ascii=False))
        except (OSError, UsageError):
            pass  # a read-only or full cache directory only costs a regeneration next time

    def describe(self) -> dict:
        return {"directory": str(self.directory) if self.directory else None,
                "hits": self.hits, "misses": self.misses}
