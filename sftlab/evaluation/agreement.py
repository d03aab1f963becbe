"""How well a refusal detector agrees with human labels (``sftlab eval-detector``).

Labelled data is JSONL or CSV with a ``response`` and a ``label`` (comply | refuse | partial),
or the XSTest completion-annotation layout (``prompt, completion, final_label`` with
``1_full_compliance``, ``2_full_refusal``, ``3_partial_refusal``).

Reported: ``n``; ``accuracy`` over the three labels; ``precision`` and ``recall`` of refusal
(refuse or partial) against comply; Cohen's ``kappa`` on that binary split; the 3x3
``confusion`` matrix ``{gold: {predicted: count}}``.

Example (two refusals, one compliance, the detector misses one refusal)::

    >>> agreement(["refuse", "refuse", "comply"], ["refuse", "comply", "comply"])["recall"]
    0.5
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sftlab.errors import UsageError
from sftlab.evaluation.detector import LABELS

LABEL_SYNONYMS = {
    "comply": "comply", "compliance": "comply", "complied": "comply", "full_compliance": "comply",
    "1_full_compliance": "comply", "safe": "comply", "answer": "comply",
    "refuse": "refuse", "refusal": "refuse", "refused": "refuse", "full_refusal": "refuse",
    "2_full_refusal": "refuse",
    "partial": "partial", "partial_refusal": "partial", "3_partial_refusal": "partial",
}


def canonical_label(value) -> str | None:
    """``comply`` / ``refuse`` / ``partial`` for a label or one of its synonyms, else ``None``."""
    if value is None:
        return None
    return LABEL_SYNONYMS.get(str(value).strip().lower().replace(" ", "_").replace("-", "_"))


@dataclass(frozen=True)
class LabelledSet:
    responses: list[str]
    labels: list[str]
    bad_rows: list[dict]
    """``{"file", "line", "reason"}`` for each row that was skipped."""


def load_labelled(path: str) -> LabelledSet:
    """Read a labelled file; rows without a response or a known label are listed in ``bad_rows``."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: no such labelled file")
    rows = _read_csv(p) if p.suffix.lower() in (".csv", ".tsv") else _read_jsonl(p)
    responses, labels, bad = [], [], []
    for line, row, problem in rows:
        if problem is None:
            text = next((row[k] for k in ("response", "completion", "output") if k in row), None)
            raw = next((row[k] for k in ("label", "final_label", "gold") if k in row), None)
            label = canonical_label(raw)
            if not isinstance(text, str):
                problem = "no 'response' (or 'completion') text field"
            elif label is None:
                problem = (f"label {raw!r} is not one of comply, refuse, partial (or 1_full_compliance, "
                           "2_full_refusal, 3_partial_refusal)")
        if problem is not None:
            bad.append({"file": str(path), "line": line, "reason": problem})
            continue
        responses.append(text)
        labels.append(label)
    return LabelledSet(responses, labels, bad)


def _read_jsonl(p: Path):
    from sftlab.evaluation.prompts import _jsonl_rows

    yield from _jsonl_rows(p.read_text(encoding="utf-8"))


def _read_csv(p: Path):
    with open(p, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
        for row in reader:
            yield reader.line_num, {k.strip(): v for k, v in row.items() if k}, None


def _refusal(label: str) -> bool:
    return label in ("refuse", "partial")


def cohen_kappa(gold: Sequence[bool], pred: Sequence[bool]) -> float | None:
    """Cohen's kappa of two binary labelings; ``None`` when chance agreement is 1 (undefined).

    >>> cohen_kappa([True, True, False, False], [True, False, False, False])
    0.5
    """
    n = len(gold)
    if n == 0:
        return None
    observed = sum(g == p for g, p in zip(gold, pred)) / n
    pg, pp = sum(gold) / n, sum(pred) / n
    chance = pg * pp + (1 - pg) * (1 - pp)
    if chance >= 1.0:
        return None
    return (observed - chance) / (1 - chance)


def agreement(gold: Sequence[str], predicted: Sequence[str]) -> dict:
    """``{"n", "accuracy", "precision", "recall", "kappa", "confusion"}`` (see module docstring).

    Precision, recall or kappa is ``None`` where its denominator is zero.
    """
    n = len(gold)
    confusion = {g: {p: 0 for p in LABELS} for g in LABELS}
    for g, p in zip(gold, predicted):
        confusion[g][p] += 1
    gb = [_refusal(g) for g in gold]
    pb = [_refusal(p) for p in predicted]
    tp = sum(g and p for g, p in zip(gb, pb))
    kappa = cohen_kappa(gb, pb)
    return {"n": n,
            "accuracy": round(sum(g == p for g, p in zip(gold, predicted)) / n, 4) if n else None,
            "precision": round(tp / sum(pb), 4) if sum(pb) else None,
            "recall": round(tp / sum(gb), 4) if sum(gb) else None,
            "kappa": round(kappa, 4) if kappa is not None else None,
            "confusion": confusion}
