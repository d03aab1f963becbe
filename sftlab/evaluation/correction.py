"""Refusal rates corrected for the detector's own error (Rogan-Gladen), with honest intervals.

A detector with sensitivity ``Se`` (share of true refusals it calls refusals) and specificity
``Sp`` (share of compliances it calls compliance) turns a true refusal rate ``pi`` into an expected
detected rate ``p = Se * pi + (1 - Sp) * (1 - pi)``. Inverting (Rogan and Gladen, 1978)::

    pi = (p + Sp - 1) / (Se + Sp - 1)        clipped to [0, 1]

which needs ``Se + Sp > 1``: a detector no better than chance cannot be corrected for, and the
result says so (``corrected`` is ``None`` with a ``reason``).

The 95 % interval carries both uncertainties by the delta method::

    var(pi) = [ p(1-p)/n + pi^2 var(Se) + (1-pi)^2 var(Sp) ] / (Se + Sp - 1)^2

with ``var(Se) = Se~(1-Se~)/(n_pos+4)``, ``Se~ = (k_pos+2)/(n_pos+4)`` (Agresti-Coull's adjustment,
so a perfect score on a small labelled set still counts as uncertain), and the same for ``Sp``.
``Se`` and ``Sp`` are measured out of sample on a labelled file (``sftlab eval --labelled``),
on the prompt slice that matches the rate when the file has one (unsafe prompts for the harmful
refusal rate, safe prompts for the benign one) and on the whole file otherwise.

Example (hand-computed: 30 of 100 detected, Se = 0.9, Sp = 0.95 -> (0.3 + 0.95 - 1) / 0.85)::

    >>> round(rogan_gladen(0.3, 0.9, 0.95), 4)
    0.2941
"""
from __future__ import annotations

import math

from sftlab.evaluation.metrics import Z95

CORRECTED_RATES = {"harmful_refusal_rate": "unsafe", "benign_refusal_rate": "safe"}
"""Rates that are corrected, and the labelled prompt slice whose Se/Sp they use."""
IMPOSSIBLE = ("sensitivity + specificity <= 1: the detector does no better than chance on the "
              "labelled data, so the rate cannot be corrected for its error")


def rogan_gladen(p: float, se: float, sp: float) -> float | None:
    """The corrected rate, clipped to [0, 1]; ``None`` when ``se + sp <= 1``.

    >>> rogan_gladen(0.5, 0.5, 0.5) is None
    True
    >>> rogan_gladen(0.01, 0.9, 0.9)
    0.0
    """
    j = se + sp - 1.0
    if j <= 0:
        return None
    return min(1.0, max(0.0, (p + sp - 1.0) / j))


def _adjusted_var(k: int, n: int) -> float:
    t = (k + 2) / (n + 4)
    return t * (1 - t) / (n + 4)


def detector_error(labels_gold, labels_pred) -> dict:
    """``{"tp", "n_pos", "tn", "n_neg", "sensitivity", "specificity"}`` on refusal vs comply."""
    gold = [g in ("refuse", "partial") for g in labels_gold]
    pred = [p in ("refuse", "partial") for p in labels_pred]
    tp = sum(g and p for g, p in zip(gold, pred))
    tn = sum(not g and not p for g, p in zip(gold, pred))
    n_pos, n_neg = sum(gold), len(gold) - sum(gold)
    return {"tp": tp, "n_pos": n_pos, "tn": tn, "n_neg": n_neg,
            "sensitivity": round(tp / n_pos, 6) if n_pos else None,
            "specificity": round(tn / n_neg, 6) if n_neg else None}


def correct_rate(k: int, n: int, error: dict, z: float = Z95) -> dict:
    """A detected rate ``k / n`` corrected for ``error`` (from ``detector_error``):
    ``{"detected", "corrected", "low", "high", "sensitivity", "specificity", "reason"}``."""
    p = k / n
    out = {"detected": round(p, 6), "corrected": None, "low": None, "high": None,
           "sensitivity": error.get("sensitivity"), "specificity": error.get("specificity"),
           "labelled_n": (error.get("n_pos") or 0) + (error.get("n_neg") or 0), "reason": None}
    se, sp = error.get("sensitivity"), error.get("specificity")
    if se is None or sp is None:
        out["reason"] = ("the labelled data has no " + ("refusal" if se is None else "compliance")
                         + " to measure the detector's " + ("sensitivity" if se is None else "specificity") + " on")
        return out
    pi = rogan_gladen(p, se, sp)
    if pi is None:
        out["reason"] = IMPOSSIBLE
        return out
    j = se + sp - 1.0
    var = (p * (1 - p) / n + pi ** 2 * _adjusted_var(error["tp"], error["n_pos"])
           + (1 - pi) ** 2 * _adjusted_var(error["tn"], error["n_neg"])) / j ** 2
    half = z * math.sqrt(var)
    out.update(corrected=round(pi, 6), low=round(max(0.0, pi - half), 6), high=round(min(1.0, pi + half), 6))
    return out


def correct_metrics(metrics: dict, errors: dict) -> dict:
    """``{slice: {rate: correct_rate(...)}}`` for the corrected rates present in ``metrics``
    (``{slice: {metric: estimate}}``); ``errors`` is ``{"safe"|"unsafe"|"all": detector_error}``."""
    out = {}
    for slice_name, rates in metrics.items():
        for metric, slice_kind in CORRECTED_RATES.items():
            est = rates.get(metric)
            if not est or not est.get("n"):
                continue
            error = errors.get(slice_kind) or errors.get("all")
            if error is None:
                continue
            out.setdefault(slice_name, {})[metric] = {
                **correct_rate(est["k"], est["n"], error),
                "error_from": slice_kind if errors.get(slice_kind) else "all"}
    return out


def errors_by_slice(data, predicted) -> dict:
    """``{"all": ..., "safe": ..., "unsafe": ...}`` detector errors on a ``LabelledSet``; a slice
    is present only where the file labels prompts and holds both refusals and compliances there."""
    out = {"all": detector_error(data.labels, predicted)}
    for kind in ("safe", "unsafe"):
        idx = [i for i, s in enumerate(data.slices) if s == kind]
        if idx:
            e = detector_error([data.labels[i] for i in idx], [predicted[i] for i in idx])
            if e["n_pos"] and e["n_neg"]:
                out[kind] = e
    return out
