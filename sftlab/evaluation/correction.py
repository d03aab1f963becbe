"""Refusal rates corrected for the detector's own error (Rogan-Gladen), with honest intervals.

A detector with sensitivity ``Se`` (share of true refusals it calls refusals) and specificity
``Sp`` (share of compliances it calls compliance) turns a true refusal rate ``pi`` into an expected
detected rate ``p = Se * pi + (1 - Sp) * (1 - pi)``. Inverting (Rogan and Gladen, 1978)::

    pi = (p + Sp - 1) / (Se + Sp - 1)        clipped to [0, 1]

which needs ``Se + Sp > 1``: a detector no better than chance cannot be corrected for, and the
result says so (``corrected`` is ``None`` with a ``reason``).

The 95 % interval carries both uncertainties. It is the union of two intervals:

* **Lang and Reiczigel (2014)**, "Confidence limits for prevalence of disease adjusted for
  estimated sensitivity and specificity", Preventive Veterinary Medicine 113:13-22: Rogan and
  Gladen's delta-method variance over ``p``, ``Se`` and ``Sp``, each estimate first adjusted
  (``z^2/2`` pseudo-successes and -failures for ``p``, Agresti and Coull's one of each for ``Se``
  and ``Sp``), and a shift of the centre (their eq. 17) that restores coverage near 0 and 1::

      p' = (k + z^2/2) / (n + z^2)    Se' = (tp + 1) / (n_pos + 2)    Sp' = (tn + 1) / (n_neg + 2)
      pi' = (p' + Sp' - 1) / (Se' + Sp' - 1)
      var = [p'(1-p')/(n+z^2) + pi'^2 Se'(1-Se')/(n_pos+2) + (1-pi')^2 Sp'(1-Sp')/(n_neg+2)]
            / (Se' + Sp' - 1)^2
      d = 2 z^2 [pi' Se'(1-Se')/(n_pos+2) - (1-pi') Sp'(1-Sp')/(n_neg+2)]
      interval = pi' + d -/+ z sqrt(var), clipped to [0, 1]

  (the same formulas as R's ``asht::prevSeSp``, which implements that paper).
* **The sample's Wilson interval mapped through the correction** (Reiczigel, Foldi and Ozsvari
  (2010), Epidemiology and Infection 138:1674-1678, who map a binomial interval through the
  Rogan-Gladen formula for a detector whose Se and Sp are known): what the sample alone allows,
  so the corrected interval is never narrower than that, at ``k = 0`` and ``k = n`` too, where a
  delta method's sampling term vanishes. With a perfect detector it is the Wilson interval.

Where the sample's whole Wilson interval lies below the detector's false-refusal rate ``1 - Sp``
(or above ``Se``), both intervals above collapse to a point (0 to 0, or 1 to 1) once clipped: the
sample contradicts the measured error (a detector that flagged 0 of 1,000 responses cannot have
the 10 % false-refusal rate 18 of 20 labelled compliances suggest). The correction then cannot
narrow what the sample alone allows, and that end of the interval is the sample's own Wilson
bound; ``reason`` says so.

``Se`` and ``Sp`` are measured out of sample on a labelled file (``sftlab eval --labelled``),
on the prompt slice that matches the rate when the file has one (unsafe prompts for the harmful
refusal rate, safe prompts for the benign one) and on the whole file otherwise. An error given
as ``{"sensitivity", "specificity"}`` without counts is taken as known exactly: the interval is
then the mapped Wilson interval alone.

Example (hand-computed: 30 of 100 detected, Se = 0.9, Sp = 0.95 -> (0.3 + 0.95 - 1) / 0.85)::

    >>> round(rogan_gladen(0.3, 0.9, 0.95), 4)
    0.2941
"""
from __future__ import annotations

import math

from sftlab.evaluation.metrics import Z95, wilson

CORRECTED_RATES = {"harmful_refusal_rate": "unsafe", "benign_refusal_rate": "safe"}
"""Rates that are corrected, and the labelled prompt slice whose Se/Sp they use."""
CONTRADICTED = ("the detected rate's whole interval lies beyond what the detector's measured error allows "
                "(below 1 - specificity or above sensitivity): the sample contradicts the labelled data, so "
                "the interval keeps the sample's own Wilson bound there")
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


def lang_reiczigel(k: int, n: int, tp: int, n_pos: int, tn: int, n_neg: int,
                   z: float = Z95) -> tuple[float, float] | None:
    """Lang and Reiczigel's (2014) interval for the true rate behind ``k`` of ``n`` detected,
    with ``Se = tp / n_pos`` and ``Sp = tn / n_neg`` estimated on labelled data; ``None`` when the
    adjusted ``Se' + Sp' <= 1``. Hand-computed: 30 of 100 detected, Se 90/100, Sp 95/100 gives
    ``p' = 0.3074``, ``Se' = 0.8922``, ``Sp' = 0.9412``, ``pi' = 0.2983``, ``d = -0.0008`` and
    ``sqrt(var) = 0.0588``, so ``0.2975 -/+ 1.96 x 0.0588``:

    >>> [round(x, 4) for x in lang_reiczigel(30, 100, 90, 100, 95, 100)]
    [0.1823, 0.4128]
    """
    z2 = z * z
    p = (k + z2 / 2) / (n + z2)
    se, sp = (tp + 1) / (n_pos + 2), (tn + 1) / (n_neg + 2)
    j = se + sp - 1.0
    if j <= 0:
        return None
    pi = (p + sp - 1.0) / j
    v_se, v_sp = se * (1 - se) / (n_pos + 2), sp * (1 - sp) / (n_neg + 2)
    var = (p * (1 - p) / (n + z2) + pi ** 2 * v_se + (1 - pi) ** 2 * v_sp) / j ** 2
    centre = pi + 2 * z2 * (pi * v_se - (1 - pi) * v_sp)
    half = z * math.sqrt(var)
    # clipped to [0, 1] at both ends: an interval wholly outside is a point there, never low > high
    return min(1.0, max(0.0, centre - half)), min(1.0, max(0.0, centre + half))


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
    """A detected rate ``k / n`` corrected for ``error`` (from ``detector_error``, or
    ``{"sensitivity", "specificity"}`` known exactly):
    ``{"detected", "corrected", "low", "high", "sensitivity", "specificity", "reason"}``; the
    interval is the union of Lang and Reiczigel's and the mapped Wilson interval, never a point
    where the sample contradicts the measured error (module doc; ``reason`` then says so).

    0 of 3 refused, detector Se 190/200, Sp 245/250: Wilson's 0-0.561 mapped through the
    correction is 0-0.582 ((0.561 + 0.98 - 1) / 0.93), a floor; Lang and Reiczigel's reaches higher,
    the union is taken:

    >>> r = correct_rate(0, 3, detector_error(["refuse"] * 200 + ["comply"] * 250,
    ...                  ["refuse"] * 190 + ["comply"] * 10 + ["comply"] * 245 + ["refuse"] * 5))
    >>> r["corrected"], r["low"], round(r["high"], 3)
    (0.0, 0.0, 0.645)
    """
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
    # what the sample alone allows, mapped through the correction (monotone: ends map to ends)
    low, high = (rogan_gladen(x, se, sp) for x in wilson(k, n, z))
    if error.get("n_pos") and error.get("n_neg"):  # Se and Sp measured: their uncertainty too
        lr = lang_reiczigel(k, n, error["tp"], error["n_pos"], error["tn"], error["n_neg"], z)
        if lr is not None:
            low, high = min(low, lr[0]), max(high, lr[1])
    sample_low, sample_high = wilson(k, n, z)
    if high <= 0.0 < sample_high or low >= 1.0 > sample_low:  # the sample contradicts the measured error
        low, high = (0.0, sample_high) if high <= 0.0 else (sample_low, 1.0)
        out["reason"] = CONTRADICTED
    out.update(corrected=round(pi, 6), low=round(low, 6), high=round(high, 6))
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
            n = est.get("n_eff") or est["n"]  # responses to one prompt are not independent: see metrics
            out.setdefault(slice_name, {})[metric] = {
                **correct_rate(est["k"] * n / est["n"], n, error),
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
