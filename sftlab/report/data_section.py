"""The data section: records per split (run.json) and ``data/stats.json`` (``sftlab.data.stats``).

Each topic of stats.json (diversity, slices, lengths, refusals and contrasts, duplicates,
leakage, quarantine) has its own view; a topic whose key is absent says "not recorded",
and keys this page does not know are shown generically at the end, so a newer stats.json
never breaks an older report.
"""
from __future__ import annotations

from typing import Any

from sftlab.report.inputs import RunFiles
from sftlab.report.markup import Markup, badge, join, kv_table, not_recorded, section, table, tag
from sftlab.report.render import render

DIST_COLUMNS = ("n", "min", "p50", "p90", "p99", "max", "mean")
SHOWN_COUNTS = 12
KNOWN = {"schema_version", "records", "policy", "counts", "tasks", "turns", "lengths", "refusals",
         "duplicates", "leakage", "warnings", "checks", "passed", "files", "quarantined", "tools"}


def _counts_table(counts: dict[str, Any], name: str, total: Any) -> Markup:
    items = list(counts.items())
    rows = [[k, n, (n / total) if isinstance(n, int) and isinstance(total, int) and total else None]
            for k, n in items[:SHOWN_COUNTS]]
    more = tag("p", f"{len(items) - SHOWN_COUNTS} more not shown", class_="note") \
        if len(items) > SHOWN_COUNTS else ""
    return join([table([name, "records", "share"], rows), more])


def _ref(r: Any) -> str:
    if not isinstance(r, dict):
        return str(r)
    return f"{r.get('where', '?')}" + (f" (id {r['id']})" if r.get("id") else "")


def _pairs(examples: Any, left: str, right: str, headers: tuple[str, ...],
           extra: str | None = None) -> Markup:
    rows = [[_ref(e.get(left)), _ref(e.get(right)), *([e.get(extra)] if extra else [])]
            for e in examples or [] if isinstance(e, dict)]
    if not rows:
        return Markup("")
    return table([*headers, *([extra] if extra else [])], rows)


def checks(stats: dict[str, Any]) -> Markup:
    out = []
    rows = [[badge(None, "skipped") if c.get("skipped") else badge(c.get("passed")), c.get("name"), c.get("message")]
            for c in stats.get("checks") or [] if isinstance(c, dict)]
    if rows:
        out.append(table(["", "check", "message"], rows))
    warnings = [w for w in stats.get("warnings") or [] if isinstance(w, dict)]
    if warnings:
        out.append(Markup("<ul>" + "".join(tag("li", join([tag("b", w.get("code")), ": ",
                                                           w.get("message")])) for w in warnings)
                          + "</ul>"))
    return join(out) if out else not_recorded("data checks")


def diversity(stats: dict[str, Any]) -> Markup:
    tasks, counts = stats.get("tasks"), (stats.get("counts") or {}).get("task")
    if not isinstance(tasks, dict) and not counts:
        return not_recorded("task diversity")
    out = []
    if isinstance(tasks, dict):
        largest = tasks.get("largest") or {}
        out.append(kv_table({"records": stats.get("records"), "distinct tasks": tasks.get("distinct"),
                             "effective tasks (exp entropy)": tasks.get("effective_tasks"),
                             "entropy (nats)": tasks.get("entropy_nats"),
                             "largest task": f"{largest.get('task')} ({largest.get('share', 0):.0%})"
                             if isinstance(largest, dict) and largest else None}))
    if isinstance(counts, dict):
        out.append(_counts_table(counts, "task", stats.get("records")))
    return join(out)


def slices(stats: dict[str, Any]) -> Markup:
    counts = stats.get("counts") or {}
    if not isinstance(counts.get("slice"), dict):
        return not_recorded("slices")
    out = [_counts_table(counts["slice"], "slice", stats.get("records"))]
    others = {k: v for k, v in counts.items() if k not in ("slice", "task") and isinstance(v, dict)}
    if others:
        out.append(kv_table([(k, ", ".join(f"{name}: {n}" for name, n in list(v.items())[:SHOWN_COUNTS]))
                             for k, v in others.items()]))
    return join(out)


def lengths(stats: dict[str, Any]) -> Markup:
    ln, turns = stats.get("lengths"), stats.get("turns")
    rows = []
    if isinstance(ln, dict):
        for part in ("prompt", "response"):
            if isinstance(ln.get(part), dict):
                rows.append([f"{part} ({ln.get('unit', '?')})", *[ln[part].get(c) for c in DIST_COLUMNS]])
    if isinstance(turns, dict):
        rows.append(["assistant turns", *[turns.get(c) for c in DIST_COLUMNS]])
    return table(["", *DIST_COLUMNS], rows) if rows else not_recorded("lengths")


def refusals(stats: dict[str, Any]) -> Markup:
    r = stats.get("refusals")
    if not isinstance(r, dict):
        return not_recorded("refusal share")
    out = [kv_table({"refusal demonstrations": r.get("refuse"), "benign contrasts": r.get("comply"),
                     "refusal share": r.get("share"), "uncategorised refusals": r.get("uncategorised")})]
    rows = [[c.get("name"), c.get("refusals"), c.get("contrasts"),
             ", ".join(map(str, c.get("benign_contrast") or [])) or "—",
             badge(c.get("has_contrast"), "covered" if c.get("has_contrast") else "no contrast")]
            for c in r.get("categories") or [] if isinstance(c, dict)]
    if rows:
        out.append(table(["category", "refusals", "contrasts", "contrast categories", "coverage"], rows))
    return join(out)


def duplicates(stats: dict[str, Any]) -> Markup:
    d = stats.get("duplicates")
    if not isinstance(d, dict):
        return not_recorded("duplicates")
    exact, near = d.get("exact") or {}, d.get("near") or {}
    out = [table(["kind", "records", "detail"],
                 [["exact", exact.get("records"), f"{exact.get('groups', '?')} group(s)"],
                  ["near", near.get("records"), f"Jaccard >= {near.get('threshold', '?')}"]])]
    out.append(_pairs(exact.get("examples"), "b", "a", ("record", "repeats (exactly)")))
    out.append(_pairs(near.get("examples"), "b", "a", ("record", "is close to"), "jaccard"))
    return join(out)


def leakage(stats: dict[str, Any]) -> Markup:
    if "leakage" not in stats:
        return not_recorded("leakage")
    lk = stats["leakage"]
    if not isinstance(lk, dict):
        return tag("p", "no held-out data was given, so leakage was not measured", class_="missing")
    exact, near = lk.get("exact") or {}, lk.get("near") or {}
    out = [kv_table({"held-out records": lk.get("heldout_records"), "leaked": lk.get("leaked"),
                     "share": lk.get("share"), "exact prompt matches": exact.get("records"),
                     "near prompt matches": near.get("records")})]
    out.append(_pairs(exact.get("examples"), "heldout", "train", ("held-out record", "same prompt in training")))
    out.append(_pairs(near.get("examples"), "heldout", "train", ("held-out record", "close prompt in training"),
                      "jaccard"))
    return join(out)


def quarantine(stats: dict[str, Any] | None, splits: dict[str, Any]) -> Markup:
    out = []
    if splits:
        rows = [[name, s.get("records"), s.get("accepted"), s.get("quarantined"),
                 (s.get("records_sha256") or "")[:16] or None] for name, s in splits.items() if isinstance(s, dict)]
        out.append(table(["split", "records", "accepted", "quarantined", "data version"], rows))
    files = (stats or {}).get("files") or [{"split": name, **f} for name, s in splits.items()
                                           if isinstance(s, dict) for f in s.get("files") or []
                                           if isinstance(f, dict)]
    rows = [[f.get("path"), f.get("split"), f.get("records"), f.get("accepted"), f.get("quarantined")]
            for f in files if isinstance(f, dict)]
    if rows:
        out.append(table(["file", "split", "records", "accepted", "quarantined"], rows))
    return join(out) if out else not_recorded("record counts and quarantine")


def tools(stats: dict[str, Any]) -> Markup:
    """Tool use and reasoning per slice (``data.stats.tool_stats``): one row per slice."""
    t = stats.get("tools")
    per_slice = t.get("slices") if isinstance(t, dict) else None
    if not isinstance(per_slice, dict) or not per_slice:
        return not_recorded("tool use")
    rows = []
    for name, r in per_slice.items():
        if not isinstance(r, dict):
            continue
        calls = r.get("calls") if isinstance(r.get("calls"), dict) else {}
        rows.append([name, r.get("records"), r.get("with_tools"), _share(r.get("share")), calls.get("mean"),
                     calls.get("max"), _share(r.get("reasoning_share"))])
    unit = t.get("unit", "?")
    return table(["slice", "records", "with tools", "share", "calls per record (mean)", "most calls",
                  f"reasoning share ({unit})"], rows)


def _share(value: Any) -> Any:
    return f"{value:.1%}" if isinstance(value, (int, float)) and not isinstance(value, bool) else value


TOPICS = (("checks", "Data checks", checks), ("diversity", "Task diversity", diversity),
          ("slices", "Slices", slices), ("lengths", "Lengths and turns", lengths),
          ("refusals", "Refusal share and contrast coverage", refusals),
          ("duplicates", "Duplicates", duplicates), ("leakage", "Train / held-out leakage", leakage),
          ("tools", "Tool use and reasoning", tools))


def data_section(files: RunFiles) -> Markup:
    splits = ((files.manifest or {}).get("data") or {}).get("splits") or {}
    stats = files.stats
    parts: list[Any] = [tag("h3", "Records and quarantine", id="data-quarantine"), quarantine(stats, splits)]
    if stats is None:
        parts.append(not_recorded("data statistics (data/stats.json)"))
        return section("data", "Data", *parts)
    if files.quarantined is not None:
        parts.append(tag("p", f"{files.quarantined} record(s) quarantined in all", class_="note"))
    key, title, view = TOPICS[0]
    parts += [tag("h3", title, id=f"data-{key}"), view(stats)]
    blocks = [f"<div>{tag('h3', title, id=f'data-{key}')}{view(stats)}</div>" for key, title, view in TOPICS[1:]]
    parts.append(Markup('<div class="grid">' + "".join(blocks) + "</div>"))
    unknown = {k: v for k, v in stats.items() if k not in KNOWN}
    if unknown:
        parts += [tag("h3", "Other statistics"), render(unknown)]
    return section("data", "Data", *parts)
