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


def gates_for(gates, set_names) -> list:
    """The gates that apply to an evaluation of prompt sets named ``set_names`` (``None`` for
    a user's own file): a gate with ``prompts: xstest`` when ``xstest`` is evaluated, a gate
    without ``prompts`` when a user's own file is.

    >>> from sftlab.data.policy import Gate
    >>> gs = [Gate(metric="harmful_refusal_rate", min=0.9),
    ...       Gate(metric="harmful_refusal_rate", min=0.8, prompts="xstest")]
    >>> [g.describe() for g in gates_for(gs, ["xstest"])]
    ['harmful_refusal_rate [xstest:all] >= 0.8']
    >>> len(gates_for(gs, [None])), len(gates_for(gs, [None, "xstest"]))
    (1, 2)
    """
    names = set(set_names) or {None}
    return [g for g in gates if g.prompts in names]


GATE_MODES = ("detected", "corrected", "corrected-bound")


def _corrected_value(entry: dict | None, kind: str, mode: str) -> float | None:
    if not entry or entry.get("corrected") is None:
        return None
    if mode == "corrected":
        return entry["corrected"]
    return entry["low"] if kind.startswith("min") else entry["high"]


def check_gates(gates, tuned: dict, reference: dict | None = None, corrected: dict | None = None,
                mode: str = "detected") -> list[dict]:
    """One entry per gate: ``{"metric", "slice", "bound", "value", "low", "high", "reference",
    "passed", "message", "on"}``. ``tuned`` / ``reference`` are ``{slice: {metric: estimate}}``;
    ``low`` and ``high`` are the 95 % interval of what the gate reads (the corrected interval when
    it reads a corrected rate), and the message ends with it.

    ``mode`` (``GATE_MODES``): ``detected`` checks the detected rates; ``corrected`` the rates
    corrected for detector error (``corrected``: ``{"tuned": {slice: {metric: correct_rate}},
    "reference": ...}``), ``corrected-bound`` the corrected interval's end on the failing side (low
    for a ``min`` bound, high for a ``max`` bound). A metric without a correction (task accuracy,
    eval loss) is checked as detected; a rate whose correction is impossible fails the gate."""
    if mode not in GATE_MODES:
        raise ValueError(f"gate mode {mode!r} is not one of {GATE_MODES}")
    out = []
    for gate in gates:
        est = _get(tuned, gate.slice, gate.metric) or {}
        ref = _get(reference, gate.slice, gate.metric) or {}
        kind, bound = gate.bound
        value, ref_value, on = est.get("value"), ref.get("value"), "detected"
        low, high = est.get("low"), est.get("high")
        c_t = _get((corrected or {}).get("tuned"), gate.slice, gate.metric)
        if mode != "detected" and c_t is not None:
            on = mode
            value = _corrected_value(c_t, kind, mode)
            low, high = c_t.get("low"), c_t.get("high")  # the interval of the value the gate reads
            if gate.needs_reference:
                c_r = _get((corrected or {}).get("reference"), gate.slice, gate.metric)
                ref_value = c_r.get("corrected") if c_r else None
        if mode != "detected" and c_t is not None and value is None:
            passed, message = False, f"{gate.metric}: {c_t.get('reason') or 'no corrected value'}"
        else:
            passed, message = gate.check(value, ref_value)
            if on != "detected":
                message = f"{on} for detector error: {message}"
        if low is not None and high is not None:
            message = f"{message} (95 % interval {low:.3g}-{high:.3g})"
        out.append({"metric": gate.metric, "slice": gate.slice, "prompts": gate.prompts, "bound": {kind: bound},
                    "value": value, "low": low, "high": high,
                    "reference": ref_value if gate.needs_reference else None,
                    "passed": passed, "message": message, "on": on})
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
