"""The evaluation section: tuned vs reference per slice, robustness, gates and failures.

Reads ``eval/eval.json`` (layout in docs/INTERFACES.md) and ``eval/outputs.jsonl``.
"""
from __future__ import annotations

from typing import Any

from sftlab.report import plots
from sftlab.report.benchmark import benchmark_part, ood_part
from sftlab.report.inputs import RunFiles
from sftlab.report.markup import (Markup, badge, esc, image, join, kv_table, not_recorded,
                                  section, table, tag)
from sftlab.report.render import render

PRIMARY = "training_template"
METRIC_ORDER = ("harmful_refusal_rate", "benign_refusal_rate", "benign_full_refusal_rate",
                "benign_partial_refusal_rate", "task_accuracy", "eval_loss")
REFUSED = {"refuse", "refusal", "partial", "partial_refusal", "full", "full_refusal"}
COMPLIED = {"comply", "complied", "compliance", "answer", "none"}
FAILURES_SHOWN = 5


def _bound(bound: Any) -> str:
    if isinstance(bound, dict):
        return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in bound.items())
    return "—" if bound is None else str(bound)


def gates_table(ev: dict[str, Any]) -> Markup:
    gates = [g for g in ev.get("gates") or [] if isinstance(g, dict)]
    if not gates:
        return not_recorded("gates")
    rows = [[badge(g.get("passed")), g.get("metric"), g.get("slice"), _bound(g.get("bound")),
             g.get("value"), _interval(g), g.get("reference"), g.get("message")] for g in gates]
    return table(["result", "metric", "slice", "bound", "value", "95% interval", "reference", "message"], rows)


def _interval(g: dict[str, Any]) -> str:
    low, high = g.get("low"), g.get("high")
    ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (low, high))
    return f"{low:.3g}-{high:.3g}" if ok else "-"


def gates_verdict(ev: dict[str, Any]) -> Markup:
    """PASS / FAIL over the gates, or NO GATES where none was checked (nothing passed)."""
    gates = [g for g in ev.get("gates") or [] if isinstance(g, dict)]
    if not gates:
        return join([badge(None, "NO GATES"),
                     tag("span", " no policy gate was checked (pass --policy with gates to sftlab eval)",
                         class_="note")])
    verdict = ev.get("passed")
    return badge(verdict if isinstance(verdict, bool) else None)


def skipped_rows(ev: dict[str, Any]) -> Markup:
    """The prompt rows ``sftlab eval`` could not use, with file, line and reason."""
    rows = [[b.get("file"), b.get("line"), b.get("reason")] for s in ev.get("prompt_sets") or [] if isinstance(s, dict)
            if isinstance(s.get("bad_rows"), list) for b in s["bad_rows"] if isinstance(b, dict)]
    if not rows:
        return Markup("")
    return join([tag("h3", f"Skipped prompt rows ({len(rows)})", id="skipped-prompts"),
                 table(["file", "line", "reason"], rows[:50]),
                 tag("p", f"first 50 of {len(rows)}", class_="note") if len(rows) > 50 else Markup("")])


def estimate(m: Any) -> Markup:
    """``0.95  19/20  [0.75, 0.99]`` from ``{"value", "k", "n", "low", "high"}``."""
    if not isinstance(m, dict):
        return esc(m)
    parts = [tag("b", m.get("value"))]
    if m.get("n") is not None:  # a rate shows k/n; a loss has no k, only what it averages over
        parts.append(esc(f"  {m['k']}/{m['n']}" if m.get("k") is not None
                         else f"  over {m['n']:,} {m.get('unit') or 'tokens'}"))
        if isinstance(m.get("n_eff"), (int, float)):  # several samples per prompt: the interval's size
            parts.append(esc(f"  (effective n {m['n_eff']:.3g})"))
    if m.get("low") is not None and m.get("high") is not None:
        parts.append(tag("span", f"  [{m['low']:.3g}, {m['high']:.3g}]", class_="note"))
    return join(parts)


def _metric_names(by_slice: dict[str, Any]) -> list[str]:
    names = {m for metrics in by_slice.values() if isinstance(metrics, dict) for m in metrics}
    return sorted(names, key=lambda m: (METRIC_ORDER.index(m) if m in METRIC_ORDER else 99, m))


def _slice_order(names) -> list[str]:
    return sorted(names, key=lambda s: (s != "all", s))


def _value(m: Any) -> float | None:
    v = m.get("value") if isinstance(m, dict) else m
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def slice_tables(ev: dict[str, Any]) -> Markup:
    results = ev.get("results") or {}
    tuned_all, ref_all = results.get("tuned") or {}, results.get("reference") or {}
    cond = PRIMARY if PRIMARY in tuned_all else next(iter(tuned_all), None)
    if cond is None:
        return not_recorded("results")
    tuned, ref = tuned_all.get(cond) or {}, (ref_all or {}).get(cond) or {}
    flags = {(c.get("slice"), c.get("metric")): c for c in ev.get("comparison") or []
             if isinstance(c, dict)}
    out = [tag("p", f"Condition: {cond}. Values with k/n and Wilson 95 % intervals; a flag marks "
                    "a tuned value worse than the reference beyond its interval.", class_="note")]
    uri = plots.comparison((tuned.get("all") or {}), (ref.get("all") or {}),
                           _metric_names({"all": tuned.get("all") or {}}))
    if uri:
        out.append(image(uri, "tuned vs reference, all prompts"))
    for name in _slice_order(set(tuned) | set(ref)):
        rows = []
        for metric in _metric_names({name: tuned.get(name) or {}, "r": ref.get(name) or {}}):
            t, r = (tuned.get(name) or {}).get(metric), (ref.get(name) or {}).get(metric)
            comp = flags.get((name, metric), {})
            delta = comp.get("delta")
            if delta is None and _value(t) is not None and _value(r) is not None:
                delta = _value(t) - _value(r)
            flag = (tag("span", "worse", class_="flag") if comp.get("worse")
                    else tag("span", "ok", class_="ok") if comp else "")
            rows.append([metric, estimate(r) if r is not None else "—",
                         estimate(t) if t is not None else "—",
                         f"{delta:+.3g}" if isinstance(delta, (int, float)) else "—", flag])
        out.append(tag("h3", f"slice: {name}"))
        out.append(table(["metric", "reference", "tuned", "Δ", "flag"], rows))
    return join(out)


def robustness_table(ev: dict[str, Any]) -> Markup:
    rob = ev.get("robustness") or {}
    if not isinstance(rob, dict) or not rob:
        return not_recorded("template robustness")
    conds = list(dict.fromkeys(c for r in rob.values() if isinstance(r, dict)
                               for c in (r.get("by_condition") or {})))
    rows = []
    for metric, r in rob.items():
        if not isinstance(r, dict):
            continue
        by = r.get("by_condition") or {}
        flagged = r.get("flagged")
        measured = sum(1 for v in by.values() if v is not None)
        verdict = (badge(None, "one condition: not measured") if measured < 2 and not flagged else
                   badge(None if flagged is None else not flagged,
                         "FLAGGED" if flagged else "stable" if flagged is False else None))
        rows.append([metric, *[_value(by.get(c)) if _value(by.get(c)) is not None else by.get(c)
                               for c in conds],
                     r.get("spread"), r.get("threshold"), verdict])
    return table(["metric", *conds, "spread", "threshold", ""], rows)


def _text(value: Any) -> str:
    """A prompt or response as text: message lists become ``role: content`` lines."""
    if isinstance(value, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict)
                         else str(m) for m in value)
    return "" if value is None else str(value)


def _is_reference(row: dict[str, Any]) -> bool:
    return "reference" in {row.get("model"), row.get("policy"), row.get("variant")}


def failure_groups(outputs: list[dict[str, Any]]) -> dict[str, tuple[str, list[dict[str, Any]], int]]:
    """Over-refusals, missed refusals and wrong answers of the tuned model (training template)."""
    rows = [r for r in outputs if not _is_reference(r)]
    if any(r.get("condition") == PRIMARY for r in rows):
        rows = [r for r in rows if r.get("condition") in (PRIMARY, None)]
    label = lambda r: str(r.get("label", "")).lower()  # noqa: E731
    benign = [r for r in rows if r.get("expected") == "comply"]
    harmful = [r for r in rows if r.get("expected") == "refuse"]
    checked = [r for r in rows if isinstance(r.get("correct"), bool)]
    return {
        "over_refusals": ("Over-refusals (expected comply, refused or partly refused)",
                          [r for r in benign if label(r) in REFUSED], len(benign)),
        "missed_refusals": ("Missed refusals (expected refuse, complied)",
                            [r for r in harmful if label(r) in COMPLIED], len(harmful)),
        "wrong_answers": ("Wrong answers (checkable tasks)",
                          [r for r in checked if r["correct"] is False], len(checked)),
    }


def failures(outputs: list[dict[str, Any]]) -> Markup:
    if not outputs:
        return not_recorded("model outputs (eval/outputs.jsonl)")
    out = []
    for key, (title, rows, total) in failure_groups(outputs).items():
        out.append(tag("h3", f"{title}: {len(rows)} of {total}", id=f"failures-{key}"))
        if not rows:
            out.append(tag("p", "none", class_="note"))
            continue
        body = [[Markup(f"{esc(r.get('id') or '—')}<br>{tag('span', r.get('slice'), class_='note')}"),
                 tag("pre", _text(r.get("prompt")), class_="sample"),
                 tag("pre", _text(r.get("response")), class_="sample"),
                 r.get("label")] for r in rows[:FAILURES_SHOWN]]
        out.append(table(["id / slice", "prompt", "response", "label"], body, class_="wide",
                         widths=[12, 38, 40, 10]))
        if len(rows) > FAILURES_SHOWN:
            out.append(tag("p", f"showing {FAILURES_SHOWN} of {len(rows)}", class_="note"))
    return join(out)


DISAGREEMENTS_SHOWN = 20


def corrected_table(ev: dict[str, Any]) -> Markup:
    """Each refusal rate as detected and corrected for the detector's measured error."""
    corrected = (ev.get("corrected") or {}).get("tuned")
    check = ev.get("detector_check")
    if not corrected or not isinstance(check, dict):
        return tag("p", "No labelled data was given for the detector (sftlab eval --labelled), so the "
                        "rates are as detected, uncorrected for its error.", class_="note")
    rows = []
    for slice_name in _slice_order(corrected):
        for metric, c in (corrected.get(slice_name) or {}).items():
            if not isinstance(c, dict):
                continue
            value = ("not possible: " + str(c.get("reason")) if c.get("corrected") is None
                     else f"{c['corrected']:.3f}  [{c['low']:.3g}, {c['high']:.3g}]"
                     + (f" ({c['reason']})" if c.get("reason") else ""))
            rows.append([slice_name, metric, c.get("detected"), value, c.get("sensitivity"),
                         c.get("specificity"), c.get("error_from")])
    labelled = check.get("labelled") or {}
    note = tag("p", f"Sensitivity and specificity measured on {labelled.get('path')} "
                    f"({labelled.get('n')} labelled responses; {check.get('how')}).", class_="note")
    return join([table(["slice", "metric", "detected", "corrected [95%]", "sensitivity",
                        "specificity", "measured on prompts"], rows), note])


def disagreements(ev: dict[str, Any]) -> Markup:
    """Responses where the detectors disagree or a margin is small: for a person to label."""
    dis = ev.get("disagreements")
    if not isinstance(dis, dict):
        return not_recorded("detector disagreements")
    rows = [r for r in dis.get("rows") or [] if isinstance(r, dict)]
    head = tag("p", f"{dis.get('count', 0)} responses where the detectors "
                    f"({', '.join(map(str, dis.get('detectors') or []))}) disagree or p_refusal is within "
                    f"{dis.get('margin')} of the threshold. Label them with `sftlab label eval/outputs.jsonl`.",
               class_="note")
    if not rows:
        return head
    body = []
    for r in rows[:DISAGREEMENTS_SHOWN]:
        labels = "; ".join(f"{n}: {d.get('label')}" + (f" ({d['p_refusal']:.2f})" if d.get("p_refusal") is not None else "")
                           for n, d in (r.get("detectors") or {}).items())
        why = ", ".join(w for w, on in (("disagree", r.get("disagree")), ("small margin", r.get("uncertain"))) if on)
        body.append([f"{r.get('id')} ({r.get('model')}, {r.get('condition')})",
                     tag("pre", _text(r.get("response")), class_="sample"), labels, why])
    out = [head, table(["id", "response", "detectors", "why"], body, class_="wide", widths=[16, 50, 24, 10])]
    if len(rows) > DISAGREEMENTS_SHOWN:
        out.append(tag("p", f"showing {DISAGREEMENTS_SHOWN} of {dis.get('count')}", class_="note"))
    return join(out)


def _settings(ev: dict[str, Any]) -> Markup:
    items = []
    for key in ("model", "reference", "decoder", "system_prompt", "policy", "detector"):
        if key in ev:
            items.append((key, render(ev[key])))
    if ev.get("prompt_sets"):
        items.append(("prompt sets", render(ev["prompt_sets"])))
    if ev.get("conditions"):
        items.append(("conditions", ", ".join(map(str, ev["conditions"]))))
    return kv_table(items) if items else Markup("")


def evaluation_section(files: RunFiles) -> Markup:
    ev = files.eval
    if ev is None:
        return section("evaluation", "Evaluation", not_recorded("evaluation (eval/eval.json)"))
    return section(
        "evaluation", "Evaluation",
        tag("p", join([Markup("Gates: "), gates_verdict(ev)])), skipped_rows(ev),
        tag("h3", "Tuned vs reference, per slice"), slice_tables(ev),
        benchmark_part(ev, files.xstest), ood_part(files.ood),
        tag("h3", "Template robustness", id="robustness"), robustness_table(ev),
        tag("h3", "Rates corrected for detector error", id="corrected"), corrected_table(ev),
        tag("h3", "Detector disagreements", id="disagreements"), disagreements(ev),
        tag("h3", "Failures (a sample)", id="failures"), failures(files.outputs),
        tag("h3", "Evaluation settings"), _settings(ev))
