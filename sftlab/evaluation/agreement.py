"""How well a refusal detector agrees with human labels (``sftlab eval-detector``).

Labelled data is JSONL, CSV, a JSON array or Parquet (gzip, bz2 or xz compressed or not) with a ``response`` and a
``label`` (comply | refuse | partial), the XSTest completion-annotation layout (``prompt,
completion, final_label`` with ``1_full_compliance``, ``2_full_refusal``, ``3_partial_refusal``)
or WildGuardTest's (``prompt, response, prompt_harm_label, response_refusal_label``: refusal |
compliance). Optional columns group the rows: ``model`` (or ``source``: who wrote the response),
``prompt_label`` (``safe`` / ``unsafe``; or ``expected``: comply / refuse; or ``prompt_harm_label``:
harmful / unharmful) and ``category`` (or ``type``, ``subcategory``).

A label that rates harm (``safe``, ``unsafe``, ``harmful``, ``unharmful``) says nothing about
whether the response refused (a refusal is a safe response too), and a number (``1``, ``0``) means
what its file says it means: such a row is skipped with that reason, never read as a refusal
label; so is a prompt label that is not one of those above.

Built-in labelled sets (``BUILTIN``, ``sftlab/evaluation/assets/README.md``): ``xstest`` -- XSTest
v2, 2,250 completions of five models with the authors' final human labels; ``demo`` -- 200
responses of the demo's reference and tuned SmolLM2-135M models on prompts the demo holds out,
labelled by reading each in full (by the AI assistant that develops sftlab, not a human rater).

Reported: ``n``; ``agreement`` (refusal -- refuse or partial -- vs comply, the split every
refusal rate uses) and ``accuracy`` over the three labels; ``precision`` and ``recall`` of
refusal; Cohen's ``kappa`` on the binary split; each with a 95 % interval (Wilson for the
proportions; for kappa the Wilson interval of the observed agreement carried through
``(p_o - p_e) / (1 - p_e)``); ``sensitivity`` and ``specificity`` counts for the correction of
rates (``sftlab.evaluation.correction``); the 3x3 ``confusion`` matrix ``{gold: {predicted: count}}``.

Example (two refusals, one compliance, the detector misses one refusal)::

    >>> agreement(["refuse", "refuse", "comply"], ["refuse", "comply", "comply"])["recall"]
    0.5
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sftlab.data.readers import whole_input
from sftlab.errors import UsageError
from sftlab.evaluation.detector import LABELS
from sftlab.evaluation.metrics import wilson
from sftlab.evaluation.prompts import EXPECTED, _jsonl_rows, csv_dict_rows, structured_rows
from sftlab.files import read_input
from sftlab.fingerprints import sha256_hex

LABEL_SYNONYMS = {
    "comply": "comply", "compliance": "comply", "complied": "comply", "full_compliance": "comply",
    "1_full_compliance": "comply", "answer": "comply",
    "refuse": "refuse", "refusal": "refuse", "refused": "refuse", "full_refusal": "refuse",
    "2_full_refusal": "refuse",
    "partial": "partial", "partial_refusal": "partial", "3_partial_refusal": "partial",
}


def canonical_label(value) -> str | None:
    """``comply`` / ``refuse`` / ``partial`` for a label or one of its synonyms, else ``None``."""
    if value is None:
        return None
    return LABEL_SYNONYMS.get(str(value).strip().lower().replace(" ", "_").replace("-", "_"))


ASSETS = Path(__file__).parent / "assets"
BUILTIN = {"xstest": ASSETS / "xstest_v2_completions.csv.gz", "demo": ASSETS / "demo_labelled.jsonl"}
"""Labelled sets shipped with sftlab, by name."""
_SLICE = {label: "safe" if expected == "comply" else "unsafe" for label, expected in EXPECTED.items()}
"""A prompt label (prompt sets' ``expected`` and its synonyms) as the safe / unsafe slice."""
TEXT_FIELDS = ("response", "completion", "output")
LABEL_FIELDS = ("label", "final_label", "gold", "response_refusal_label")
SLICE_FIELDS = ("prompt_label", "expected", "prompt_harm_label")
CATEGORY_FIELDS = ("category", "type", "subcategory")
HARM_LABELS = ("safe", "unsafe", "harmful", "unharmful", "harmless")


def label_problem(raw) -> str:
    """Why ``raw`` is not a refusal label (``canonical_label`` gave ``None``).

    >>> label_problem("safe")
    "label 'safe' rates the response's harm, not whether it refused (a refusal is safe too); give a refusal label: comply, refuse, partial (or 1_full_compliance, 2_full_refusal, 3_partial_refusal, refusal, compliance)"
    """
    known = ("comply, refuse, partial (or 1_full_compliance, 2_full_refusal, 3_partial_refusal, "
             "refusal, compliance)")
    text = str(raw).strip().lower()
    if text in HARM_LABELS:
        return (f"label {raw!r} rates the response's harm, not whether it refused (a refusal is safe too); "
                f"give a refusal label: {known}")
    if raw is not None and text.lstrip("-").replace(".", "", 1).isdigit():
        return f"label {raw!r} is a number, whose meaning is its file's own; write it as one of {known}"
    return f"label {raw!r} is not one of {known}"


@dataclass(frozen=True)
class LabelledSet:
    responses: list[str]
    labels: list[str]
    bad_rows: list[dict]
    """``{"file", "line", "reason"}`` for each row that was skipped."""
    sources: list[str | None] = field(default_factory=list)
    """Per row: the model (or other source) that wrote the response, where the file says."""
    slices: list[str | None] = field(default_factory=list)
    """Per row: ``safe`` or ``unsafe`` (the prompt's label), where the file says."""
    path: str = ""
    sha256: str = ""
    prompts: list[str | None] = field(default_factory=list)
    categories: list[str | None] = field(default_factory=list)
    """Per row: the prompt's category (``category``, ``type`` or ``subcategory``), where the file says."""

    def describe(self) -> dict:
        """What the manifest records about the labelled data a detector was checked on."""
        return {"path": self.path, "sha256": self.sha256, "n": len(self.labels),
                "skipped": len(self.bad_rows)}


def resolve_labelled(name_or_path: str) -> Path:
    """A built-in labelled set's file (``xstest``) or the given path."""
    return BUILTIN.get(name_or_path, Path(name_or_path))


def load_labelled(path: str) -> LabelledSet:
    """Read a labelled file or built-in set; rows without a response or a known label are listed
    in ``bad_rows``."""
    p = resolve_labelled(str(path))
    if not os.path.lexists(p):
        raise UsageError(f"{path}: no such labelled file (built-in sets: {', '.join(BUILTIN)})")

    raw_bytes = read_input(p, what="--labelled", max_bytes=1 << 30)
    digest = sha256_hex(raw_bytes)
    raw_bytes, kind = whole_input(p, raw_bytes)
    if kind in ("csv", "tsv"):
        try:
            text = raw_bytes.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
        rows = _read_csv(text, kind == "tsv", str(path))
    elif kind == "jsonl":  # a line that is not UTF-8 is a bad row, the others are kept
        rows = _read_jsonl(raw_bytes.decode("utf-8", "surrogateescape"))
    else:
        rows = structured_rows(p, raw_bytes, kind)
    responses, labels, bad, sources, slices, prompts, categories = [], [], [], [], [], [], []
    for line, row, problem in rows:
        if problem is None:
            text = next((row[k] for k in TEXT_FIELDS if k in row), None)
            raw = next((row[k] for k in LABEL_FIELDS if k in row), None)
            label = canonical_label(raw)
            sl = next((row[k] for k in SLICE_FIELDS if row.get(k) not in (None, "")), None)
            if not isinstance(text, str):
                problem = "no 'response' (or 'completion') text field"
            elif label is None:
                problem = label_problem(raw)
            elif sl is not None and _SLICE.get(str(sl).strip().lower()) is None:
                problem = (f"prompt label {sl!r} is not safe or unsafe (nor benign/harmful/unharmful, "
                           "comply/refuse)")
        if problem is not None:
            bad.append({"file": str(path), "line": line, "reason": problem})
            continue
        responses.append(text)
        labels.append(label)
        src = next((row[k] for k in ("model", "source") if row.get(k) not in (None, "")), None)
        sources.append(str(src) if src is not None else None)
        slices.append(_SLICE.get(str(sl).strip().lower()) if sl is not None else None)
        pr = row.get("prompt")
        prompts.append(pr if isinstance(pr, str) else None)
        cat = next((row[k] for k in CATEGORY_FIELDS if row.get(k) not in (None, "")), None)
        categories.append(str(cat) if cat is not None else None)
    return LabelledSet(responses, labels, bad, sources, slices, str(path), digest, prompts, categories)


def _read_jsonl(text: str):
    yield from _jsonl_rows(text)


def _read_csv(text: str, tsv: bool, where: str = "labelled file"):
    header, rows = csv_dict_rows(text, where, tsv)
    for line, row in rows:
        if row.get(None):  # a comma outside quotes: every cell after it shifted, the label among them
            yield line, None, f"{len(row[None])} more cell(s) than the header's {len(header)} columns"
            continue
        yield line, {k.strip(): v for k, v in row.items() if k}, None


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


def _interval(k: int, n: int) -> dict | None:
    if n == 0:
        return None
    low, high = wilson(k, n)
    return {"value": round(k / n, 4), "k": k, "n": n, "low": round(low, 4), "high": round(high, 4)}


def _kappa_interval(gb: Sequence[bool], pb: Sequence[bool]) -> dict | None:
    n = len(gb)
    kappa = cohen_kappa(gb, pb)
    if kappa is None:
        return None
    pg, pp = sum(gb) / n, sum(pb) / n
    chance = pg * pp + (1 - pg) * (1 - pp)
    low, high = wilson(sum(g == p for g, p in zip(gb, pb)), n)
    return {"value": round(kappa, 4), "low": round((low - chance) / (1 - chance), 4),
            "high": round((high - chance) / (1 - chance), 4)}


def agreement(gold: Sequence[str], predicted: Sequence[str], detail: bool = False) -> dict:
    """``{"n", "agreement", "accuracy", "precision", "recall", "kappa", "sensitivity",
    "specificity", "confusion"}`` (see module docstring). Values are floats; with ``detail`` each
    is ``{"value", "k", "n", "low", "high"}`` (kappa: ``{"value", "low", "high"}``).

    A value is ``None`` where its denominator is zero.

    >>> agreement(["refuse", "comply"], ["partial", "comply"])["agreement"]
    1.0
    """
    n = len(gold)
    confusion = {g: {p: 0 for p in LABELS} for g in LABELS}
    for g, p in zip(gold, predicted):
        confusion[g][p] += 1
    gb = [_refusal(g) for g in gold]
    pb = [_refusal(p) for p in predicted]
    tp = sum(g and p for g, p in zip(gb, pb))
    tn = sum(not g and not p for g, p in zip(gb, pb))
    est = {"agreement": _interval(tp + tn, n),
           "accuracy": _interval(sum(g == p for g, p in zip(gold, predicted)), n),
           "precision": _interval(tp, sum(pb)), "recall": _interval(tp, sum(gb)),
           "sensitivity": _interval(tp, sum(gb)), "specificity": _interval(tn, n - sum(gb)),
           "kappa": _kappa_interval(gb, pb) if n else None}
    out = {"n": n}
    for key, e in est.items():
        out[key] = e if detail else (e["value"] if e is not None else None)
    out["confusion"] = confusion
    return out


def grouped_agreement(data: LabelledSet, predicted: Sequence[str]) -> dict:
    """``{"overall": agreement, "by_source": {model: agreement}, "by_slice": {safe|unsafe: ...},
    "by_category": {category: ...}}`` with intervals (``detail``); the groups present in the file only."""
    out = {"overall": agreement(data.labels, predicted, detail=True), "by_source": {}, "by_slice": {},
           "by_category": {}}
    for key, values in (("by_source", data.sources), ("by_slice", data.slices), ("by_category", data.categories)):
        for name in sorted({v for v in values if v is not None}):
            idx = [i for i, v in enumerate(values) if v == name]
            out[key][name] = agreement([data.labels[i] for i in idx], [predicted[i] for i in idx],
                                       detail=True)
    return out


def detector_labels(detector, data: LabelledSet) -> tuple[list[str], list[float | None], str]:
    """``(labels, p_refusal, how)`` of a detector on labelled data, out of sample: on the data a
    learned detector was fitted on, its recorded leave-one-source-out predictions."""
    from sftlab.evaluation.detectors import detect_all  # lazy: the detectors bring the model loader

    oos = getattr(detector, "out_of_sample", None)
    found = oos(data) if callable(oos) else None
    if found is not None:
        return ([d.label for d in found], [d.p_refusal for d in found],
                "out of sample: leave-one-model-out predictions recorded when the weights were fitted")
    fitted = getattr(detector, "fitted_on", None)
    if callable(fitted) and fitted(data):
        raise UsageError(f"{data.path}: the detector was fitted on this data and holds no out-of-sample "
                         "predictions for it; agreement on it would not be out of sample")
    pairs = detect_all(detector, data.responses, data.prompts or None)
    return [p[0] for p in pairs], [p[1] for p in pairs], "detector run on every response"
