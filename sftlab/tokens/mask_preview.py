"""``RUN/data/mask_preview.json``: a few encoded examples, token by token, for the report.

Written at training time (the tokenizer and the data are at hand then) with
``sftlab.tokens.masks.annotate``, so the preview is exactly what ``sftlab inspect`` shows and
what the loss saw. One example per slice first, so every slice is represented::

    [{"id": "math-1", "slice": "math", "trained_tokens": 5,
      "tokens": [{"text": "<|im_start|>", "weight": 0.0, "role": "template", "message": null}, ...]}]
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from sftlab.files import write_atomic
from sftlab.tokens.encoding import EncodingError
from sftlab.tokens.masks import annotate

PREVIEW_PATH = Path("data") / "mask_preview.json"


def _pick(conversations: Sequence[Any], n: int) -> list[Any]:
    """Up to ``n`` conversations: the first of each slice, then the rest in order."""
    firsts, seen = [], set()
    for conv in conversations:
        key = getattr(conv, "slice", None)
        if key not in seen:
            seen.add(key)
            firsts.append(conv)
    rest = [c for c in conversations if not any(c is f for f in firsts)]
    return (firsts + rest)[:n]


def mask_preview(conversations: Sequence[Any], tokenizer, template=None, *, n: int = 4,
                 max_length: int | None = None, last_turn_only: bool = False,
                 reasoning: str = "keep", inline_reasoning: bool = True,
                 mask_source: str = "contract") -> list[dict[str, Any]]:
    """Token views of up to ``n`` conversations (ones that cannot be encoded are skipped)."""
    out = []
    for conv in _pick(list(conversations), n * 2):
        try:
            ex, views = annotate(conv, tokenizer, template, max_length=max_length,
                                 last_turn_only=last_turn_only, reasoning=reasoning,
                                 inline_reasoning=inline_reasoning, mask_source=mask_source)
        except EncodingError:
            continue
        out.append({"id": ex.id, "slice": ex.slice, "trained_tokens": ex.trained_tokens,
                    "tokens": [{"text": v.text, "weight": v.weight, "role": v.role,
                                "message": v.message_index} for v in views]})
        if len(out) == n:
            break
    return out


def write_mask_preview(run_dir: str | os.PathLike, conversations: Sequence[Any], tokenizer,
                       template=None, **options: Any) -> Path:
    """Write ``RUN/data/mask_preview.json`` atomically; ``options`` as for :func:`mask_preview`."""
    path = Path(run_dir) / PREVIEW_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    preview = mask_preview(conversations, tokenizer, template, **options)
    write_atomic(path, json.dumps(preview, ensure_ascii=False) + "\n")
    return path
