"""The external benchmark beside the held-out set: XSTest per type, reference vs tuned, refusal
margins on its paired prompts, and how varied the tuned model's refusals are.

Reads ``RUN/eval_xstest/eval.json`` (``sftlab eval --prompts xstest``, written by ``sftlab demo``);
the held-out numbers come from ``RUN/eval/eval.json``.
"""
from __future__ import annotations

from typing import Any

from sftlab.report import plots
from sftlab.report.markup import Markup, badge, image, join, not_recorded, table, tag

PRIMARY = "training_template"
RATES = ("harmful_refusal_rate", "benign_refusal_rate")


def _primary(ev: dict | None, kind: str) -> dict:
    return (((ev or {}).get("results") or {}).get(kind) or {}).get(PRIMARY) or {}


def _rate(e: Any) -> str:
    if not isinstance(e, dict) or e.get("value") is None:
        return "—"
    return f"{e['value']:.2f} ({e.get('k')}/{e.get('n')})"


def side_by_side(heldout: dict | None, xstest: dict | None) -> Markup:
    """Harmful and benign refusal rates of both models on both prompt sets."""
    rows = []
    for metric in RATES:
        row: list[Any] = [metric]
        for ev in (heldout, xstest):
            for kind in ("reference", "tuned"):
                row.append(_rate(_primary(ev, kind).get("all", {}).get(metric)))
        rows.append(row)
    return table(["metric", "held-out: reference", "held-out: tuned", "XSTest: reference", "XSTest: tuned"], rows)


def by_detector(heldout: dict | None, xstest: dict | None) -> Markup:
    """The refusal rates every detector gives the same responses (``sftlab eval --detector A
    --detector B``): how much of a rate is the instrument."""
    rows = []
    for title, ev in (("held-out", heldout), ("XSTest", xstest)):
        by = (ev or {}).get("rates_by_detector") or {}
        names = [d.get("name") for d in [(ev or {}).get("detector") or {}, *((ev or {}).get("extra_detectors") or [])]]
        if len(names) < 2:
            continue
        for name in names:
            rows.append([title, name] + [_rate(((by.get(kind) or {}).get(PRIMARY) or {}).get(name, {}).get(metric))
                                         for metric in RATES for kind in ("reference", "tuned")])
    if not rows:
        return Markup("")
    return join([tag("h3", "Refusal rates by detector (training template)", id="by-detector"),
                 table(["prompts", "detector", "harmful: reference", "harmful: tuned",
                        "benign: reference", "benign: tuned"], rows)])


def per_type(xstest: dict, header: str = "XSTest type") -> Markup:
    """One row per XSTest type (or per category of another set): the rate that slice
    measures, reference vs tuned."""
    tuned, ref = _primary(xstest, "tuned"), _primary(xstest, "reference")
    rows = []
    for name in sorted(set(tuned) - {"all"}, key=lambda s: (s.startswith("contrast_"), s)):
        metric = "harmful_refusal_rate" if "harmful_refusal_rate" in tuned[name] else "benign_refusal_rate"
        rows.append([name, "unsafe: refusal" if metric.startswith("harmful") else "safe: over-refusal",
                     _rate(ref.get(name, {}).get(metric)), _rate(tuned[name].get(metric))])
    return table([header, "measures", "reference", "tuned"], rows)


def diversity(ev: dict) -> Markup:
    rows = []
    for kind, d in (ev.get("refusal_diversity") or {}).items():
        if not isinstance(d, dict) or not d.get("n"):
            continue
        top = (d.get("top_sentences") or [{}])[0]
        offers = d.get("offers") or {}
        reason = d.get("reasons") or {}
        rtop = (reason.get("top") or [{}])[0]
        related = d.get("reasons_related") or {}
        rows.append([kind, d["n"], d.get("distinct_2"), f"{top.get('count')} ({top.get('share', 0):.0%})",
                     top.get("sentence"),
                     f"{rtop.get('count')} ({reason.get('share', 0):.0%}): {rtop.get('clause')}" if rtop else "-",
                     f"{related.get('unrelated')}/{related.get('with_reason')}" if related else "-",
                     (d.get("largest_group") or {}).get("size"),
                     f"{offers.get('unrelated')}/{offers.get('offers')}",
                     badge(not d.get("flagged") and not offers.get("flagged"),
                           "collapsed" if d.get("flagged") else "unrelated offers" if offers.get("flagged") else "varied")])
    if not rows:
        return not_recorded("refusal diversity")
    return table(["model", "refusals", "distinct bigrams", "top sentence in", "top sentence",
                  "top reason clause in", "reasons unrelated to the request",
                  "largest near-identical group", "unrelated offers", ""], rows)


def margins(ev: dict) -> Markup:
    m = ev.get("margins")
    if not isinstance(m, dict) or not m.get("pairs"):
        return not_recorded("refusal margins (sftlab eval --margin-pairs N)")
    out = [tag("p", "Margin = log P(refusal opening) - log P(compliant opening) of the first tokens "
                    f"(refusal: {', '.join(m.get('refusal_openings') or [])}; compliant: "
                    f"{', '.join(m.get('compliant_openings') or [])}), per XSTest pair.", class_="note")]
    uri = plots.margins(m["pairs"])
    if uri:
        out.append(image(uri, "refusal margins, reference to tuned, per pair"))
    rows = [[k, s.get("pairs"), s.get("harmful_mean"), s.get("benign_mean"), s.get("gap_mean"),
             s.get("separated_share")] for k, s in (m.get("summary") or {}).items() if s]
    out.append(table(["model", "pairs", "harmful mean", "benign mean", "gap", "harmful above benign"], rows))
    return join(out)


def ood_part(ood: dict | None) -> Markup:
    """The out-of-distribution sets (``RUN/eval_ood``, ``sftlab demo``): per category, gates, diversity."""
    if ood is None:
        return Markup("")
    names = ", ".join(s.get("name") or s.get("path", "?") for s in ood.get("prompt_sets") or [])
    gates = [g for g in ood.get("gates") or [] if isinstance(g, dict)]
    return join([
        tag("h3", f"Public sets the suite was not built from ({names}), per category", id="ood"),
        per_type(ood, "category"),
        table(["result", "gate"], [[badge(g.get("passed")), g.get("message")] for g in gates]) if gates else Markup(""),
        tag("h3", "Refusal diversity (public sets, training template)"), diversity(ood)])


def benchmark_part(heldout: dict | None, xstest: dict | None) -> Markup:
    """Refusal diversity of the held-out evaluation and, when XSTest was evaluated beside it,
    the side-by-side table, XSTest per type, its gates, diversity and margins."""
    parts: list[Any] = []
    if heldout and heldout.get("refusal_diversity"):
        parts += [tag("h3", "Refusal diversity (held-out, training template)", id="refusal-diversity"),
                  diversity(heldout)]
    if xstest is None:
        return join(parts)
    gates = [g for g in xstest.get("gates") or [] if isinstance(g, dict)]
    return join(parts + [
        tag("h3", "Held-out set and XSTest, side by side", id="xstest"), side_by_side(heldout, xstest),
        by_detector(heldout, xstest),
        tag("h3", "XSTest per type"), per_type(xstest),
        table(["result", "gate"], [[badge(g.get("passed")), g.get("message")] for g in gates]) if gates else Markup(""),
        tag("h3", "Refusal diversity (XSTest, training template)"), diversity(xstest),
        tag("h3", "Refusal margins on paired prompts", id="margins"), margins(xstest)])
