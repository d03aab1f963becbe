"""A disk cache of generated responses, so rerunning an evaluation (above all the reference
model's half) costs nothing.

The key is the sha256 of (model fingerprint, the prompts' token ids, decoder settings, eos ids
and stop strings, condition name): change any of them and the responses are generated again.
One JSON file per key under ``CACHE/ab/abcdef....json``, written atomically.

The directory is ``sftlab.files.cache_dir("generations")`` unless ``--cache-dir`` names another.
Every hash here is ``sftlab.fingerprints``'.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from sftlab.errors import UsageError
from sftlab.files import write_atomic
from sftlab.fingerprints import file_sha256, json_sha256
from sftlab.model.adapters import is_adapter_dir

_WEIGHT_SUFFIXES = (".safetensors", ".json")


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """sha256 over the names and byte hashes of a model directory's ``.safetensors`` and ``.json``
    files (weights, config, generation config, tokenizer), sorted by name; for a LoRA adapter
    directory also over its base model's (what it generates depends on both)."""
    # lazy: the loader (Jinja, the tokens stage) would cost `sftlab --help`
    from sftlab.model.loading import resolve_base

    root = Path(model_dir)
    base = None
    if is_adapter_dir(root):
        base = resolve_base(root)
        base = model_fingerprint(base) if Path(base).is_dir() else base
    files = [[p.name, file_sha256(p)]
             for p in sorted(q for q in root.iterdir() if q.is_file() and q.suffix in _WEIGHT_SUFFIXES)]
    return json_sha256({"base": base, "files": files})


def cache_key(model_fp: str, prompt_ids: list[list[int]], settings: dict, condition: str,
              eos_ids: list[int], stop_strings: list[str]) -> str:
    """The key of one batch of generations: ``json_sha256`` of everything that decides them."""
    return json_sha256({"model": model_fp, "prompts": prompt_ids, "settings": settings,
                           "condition": condition, "eos": eos_ids, "stop": stop_strings})


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
