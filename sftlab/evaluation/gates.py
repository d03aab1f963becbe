"""The policy's gates and the reference-vs-tuned comparison, over the training-template results.

Gates compare point estimates (DESIGN.md "Policy file"); intervals are reported beside them. A
``*_vs_reference`` gate compares with the reference model's value on the same slice.

Example::

    >>> from sftlab.data.policy import Gate
    >>> tuned = {"all": {"harmful_refusal_rate": {"value": 0.9, "k": 9, "n": 10, "low": .6, "high": .98}}}
    >>> [g["passed"] for g in check_gates([Gate(metric="harmful_refusal_rate", min=0.95)], tuned)]
    [False]
"""
from __future__ import annotations

from sftlab.evaluation.metrics import worse_beyond_interval


def _get(results: dict | None, slice_name: str, metric: str) -> dict | None:
    return ((results or {}).get(slice_name) or {}).get(metric)


def check_gates(gates, tuned: dict, reference: dict | None = None) -> list[dict]:
    """One entry per gate: ``{"metric", "slice", "bound", "value", "low", "high", "reference",
    "passed", "message"}``. ``tuned`` / ``reference`` are ``{slice: {metric: estimate}}``."""
    out = []
    for gate in gates:
        est = _get(tuned, gate.slice, gate.metric) or {}
        ref = _get(reference, gate.slice, gate.metric) or {}
        passed, message = gate.check(est.get("value"), ref.get("value"))
        kind, bound = gate.bound
        out.append({"metric": gate.metric, "slice": gate.slice, "bound": {kind: bound},
                    "value": est.get("value"), "low": est.get("low"), "high": est.get("high"),
                    "reference": ref.get("value") if gate.needs_reference else None,
                    "passed": passed, "message": message})
    return out


def compare(tuned: dict, reference: dict) -> list[dict]:
    """Side by side per slice and metric present in both: ``{"slice", "metric", "reference",
    "tuned", "delta", "worse"}``; ``worse`` when the tuned interval lies entirely on the worse
    side of the reference's point estimate."""
    rows = []
    for slice_name in sorted(set(tuned) & set(reference), key=lambda s: (s != "all", s)):
        for metric, t in tuned[slice_name].items():
            r = reference[slice_name].get(metric)
            if r is None:
                continue
            rows.append({"slice": slice_name, "metric": metric, "reference": r, "tuned": t,
                         "delta": round(t["value"] - r["value"], 6),
                         "worse": worse_beyond_interval(metric, t, r)})
    return rows
