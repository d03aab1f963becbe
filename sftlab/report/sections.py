"""The report's sections other than evaluation, in page order: summary, data, masks,
packing, training, manifest. Each returns one ``<section id=...>``; missing inputs show
"not recorded" instead of failing."""
from __future__ import annotations

import json
from statistics import median
from typing import Any

from sftlab.report import plots
from sftlab.report.evaluation import gates_table, gates_verdict
from sftlab.report.inputs import RunFiles
from sftlab.report.markup import (Markup, badge, esc, image, join, kv_table, not_recorded,
                                  section, table, tag)
from sftlab.manifest import flatten
from sftlab.report.render import cell

MASK_EXAMPLES = 4
MASK_TOKENS = 500


def _card(key: str, value: Any) -> Markup:
    return Markup(f'<div class="card"><div class="k">{esc(key)}</div>'
                  f'<div class="v">{esc(value)}</div></div>')


def _last(rows: list[dict[str, Any]], key: str) -> Any:
    return next((r[key] for r in reversed(rows) if r.get(key) is not None), None)


def _data_checks(stats: dict[str, Any] | None) -> Markup:
    checks = [c for c in (stats or {}).get("checks") or [] if isinstance(c, dict)]
    if not checks:
        return tag("p", Markup(f"Data checks: {badge(None, 'NOT RECORDED')}"), class_="verdict")
    failed = [str(c.get("name")) for c in checks if c.get("passed") is False]
    detail = f" {len(failed)} of {len(checks)} failed: {', '.join(failed)}" if failed else ""
    return tag("p", join([Markup("Data checks: "), badge(not failed), tag("span", detail, class_="note")]),
               class_="verdict")


def _base_model(model: dict[str, Any]) -> Any:
    """The base model as loaded (``model.source.path``: absolute, so it names the same model
    wherever the run was moved), else as the config gave it."""
    source = model.get("source") if isinstance(model.get("source"), dict) else {}
    return source.get("path") or model.get("base")


def _tuning(model: dict[str, Any]) -> str | None:
    """``LoRA r=R, alpha=A`` (``DoRA``...; ``merged at save`` where it was) or ``full``; ``None`` when not recorded.

    >>> _tuning({"lora": {"enabled": True, "r": 4, "alpha": 16.0}}), _tuning({"lora": {"enabled": False}})
    ('LoRA r=4, alpha=16 (adapter in final/)', 'full')
    """
    lora = model.get("lora")
    if not isinstance(lora, dict):
        return None
    if not lora.get("enabled"):
        return "full"
    kind = "DoRA" if lora.get("use_dora") else "LoRA"
    saved = "merged at save" if lora.get("merge_on_save") else "adapter in final/"
    alpha = lora.get("alpha")
    alpha = f"{alpha:g}" if isinstance(alpha, (int, float)) else alpha
    return f"{kind} r={lora.get('r')}, alpha={alpha} ({saved})"


def summary_section(files: RunFiles) -> Markup:
    ev, m = files.eval, files.manifest or {}
    verdict = (tag("p", join([Markup("Policy gates: "), gates_verdict(ev)]), class_="verdict") if ev is not None
               else Markup(f'<p class="verdict">Policy gates: {badge(None, "NOT EVALUATED")}</p>'))
    splits = (m.get("data") or {}).get("splits") or {}
    train = splits.get("train") or next(iter(splits.values()), {}) if splits else {}
    last_eval = _last(files.eval_rows, "eval_loss") or {}
    model = m.get("model") if isinstance(m.get("model"), dict) else {}
    cards = [("kind", m.get("kind")), ("base model", _base_model(model)), ("fine-tuning", _tuning(model)),
             ("policy", (m.get("policy") or {}).get("version")),
             ("template", (m.get("template") or {}).get("name")),
             ("training records", train.get("accepted")), ("quarantined", files.quarantined),
             ("trained-token share", (m.get("masking") or {}).get("trained_token_share")),
             ("reasoning", (m.get("masking") or {}).get("reasoning")),
             ("packing efficiency", (m.get("packing") or {}).get("efficiency")),
             ("steps", _last(files.train_rows, "step")),
             ("final train loss", _last(files.train_rows, "loss")),
             ("final eval loss (all)", last_eval.get("all")), ("seed", m.get("seed"))]
    parts = [verdict, gates_table(ev) if ev is not None else not_recorded("gates (no eval/eval.json)"),
             _data_checks(files.stats),
             Markup('<div class="cards">' + "".join(_card(k, v) for k, v in cards if v is not None)
                    + "</div>")]
    if files.problems:
        parts.append(tag("h3", "Problems reading the run"))
        parts.append(Markup("<ul>" + "".join(tag("li", p) for p in files.problems) + "</ul>"))
    return section("summary", "Summary", *parts)


ROLE_COLOURS = {"system": "#7c3aed", "user": "#2563eb", "assistant": "#059669", "tool": "#b45309",
                "tool_call": "#db2777", "reasoning": "#0891b2"}


def _token_spans(tokens: list[dict[str, Any]]) -> str:
    """Coloured spans as in ``sftlab inspect``: trained tokens green (stronger = larger weight),
    template scaffolding grey, a role label where a message starts."""
    weights = [t.get("weight") for t in tokens]
    top = max([w for w in weights if isinstance(w, (int, float)) and w > 0] or [1.0])
    out, last = [], None
    for tok in tokens:
        role, weight = str(tok.get("role", "?")), tok.get("weight")
        weight = weight if isinstance(weight, (int, float)) else 0.0
        message = tok.get("message", role)  # the message index when recorded, else the role
        if role != "template" and message != last:
            label = f"{role} #{message}" if isinstance(message, int) else role
            out.append(tag("span", label, class_="role",
                           style=f"background:{ROLE_COLOURS.get(role, '#444')}"))
            last = message
        text = str(tok.get("text", "")).replace("\n", "\u21b5\n")
        title = f"{role} · weight {weight:g}"
        if weight > 0:  # alpha is a number computed here, safe inside a style attribute
            alpha = 0.25 + 0.6 * min(weight / top, 1.0)
            rgb = {"tool_call": "219,39,119", "reasoning": "8,145,178"}.get(role, "16,185,129")
            out.append(tag("span", text, class_="tok trained", title=title,
                           style=f"background:rgba({rgb},{alpha:.2f})"))
        elif role in ("tool", "tool_call", "reasoning"):  # results and masked reasoning in their colour
            out.append(tag("span", text, class_="tok", title=title, style=f"color:{ROLE_COLOURS[role]}"))
        else:
            out.append(tag("span", text, class_="tok scaffold" if role == "template" else "tok",
                           title=title))
    return "".join(out)


def masks_section(files: RunFiles) -> Markup:
    preview = files.mask_preview
    if not preview:
        return section("masks", "Loss masks", not_recorded("mask preview (data/mask_preview.json)"))
    legend = Markup('<p class="legend"><span class="tok trained" style="background:rgba(16,185,129,.85)">'
                    'trained</span><span class="tok trained" style="background:rgba(16,185,129,.35)">'
                    'trained, lower weight</span><span class="tok">not trained</span>'
                    '<span class="tok scaffold">template scaffolding</span>'
                    '<span class="note">hover a token for its role and weight; \u21b5 marks a newline</span></p>')
    parts: list[Any] = [legend]
    for ex in preview[:MASK_EXAMPLES]:
        tokens = [t for t in ex.get("tokens") or [] if isinstance(t, dict)]
        trained = sum(1 for t in tokens if isinstance(t.get("weight"), (int, float)) and t["weight"] > 0)
        parts.append(tag("h3", f"{ex.get('id') or 'example'}: {trained} of {len(tokens)} tokens trained"))
        spans = _token_spans(tokens[:MASK_TOKENS])
        parts.append(Markup(f'<div class="mask">{spans}</div>'))
        if len(tokens) > MASK_TOKENS:
            parts.append(tag("p", f"first {MASK_TOKENS} of {len(tokens)} tokens", class_="note"))
    if len(preview) > MASK_EXAMPLES:
        parts.append(tag("p", f"{MASK_EXAMPLES} of {len(preview)} examples shown", class_="note"))
    return section("masks", "Loss masks", *parts)


def _shares(item: dict[str, Any]) -> dict[str, Any]:
    for key in ("slices", "shares", "mixture", "realised", "realised_mixture"):
        if isinstance(item.get(key), dict):
            return item[key]
    return {k: v for k, v in item.items() if k not in ("epoch", "step")}


def realised_by_epoch(files: RunFiles) -> dict[str, dict[str, Any]]:
    """Realised mixture per epoch from run.json (``mixture.realised``) and metrics.jsonl.

    Accepts ``[{"epoch": 0, "slices": {...}}]``, ``{"0": {...}}`` or one ``{slice: share}``.
    """
    out: dict[str, dict[str, Any]] = {}
    realised = ((files.manifest or {}).get("mixture") or {}).get("realised")
    if isinstance(realised, list):
        for i, item in enumerate(realised):
            if isinstance(item, dict):
                out[f"epoch {item.get('epoch', i)}"] = _shares(item)
    elif isinstance(realised, dict):
        if realised and all(isinstance(v, dict) for v in realised.values()):
            out.update({f"epoch {k}": v for k, v in realised.items()})
        elif realised:
            out["all epochs"] = realised
    for row in files.metrics:
        for key in ("realised_mixture", "mixture"):
            if isinstance(row.get(key), dict):
                out.setdefault(f"epoch {row.get('epoch', '?')}", row[key])
    return out


def _share(v: Any) -> Any:
    return v.get("share", v.get("fraction", cell(v))) if isinstance(v, dict) else v


def _numeric(d: Any) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} \
        if isinstance(d, dict) else {}


def _mixture_table(mixture: dict[str, Any], realised: dict[str, dict[str, Any]]) -> Markup:
    """Per slice: sampling weight, requested share, loss weight, realised share per epoch.

    ``mixture.sampling`` is either ``{slice: weight}`` or ``{"weights": {...}, "temperature": t}``.
    """
    raw = mixture.get("sampling") or {}
    if "weights" in raw:  # the training config's form
        weights = raw["weights"] if isinstance(raw["weights"], dict) else {}
    else:
        weights = mixture.get("sampling_weights") or _numeric(raw)
    settings = {k: v for k, v in raw.items() if k != "weights" and k not in weights}
    settings.update({k: mixture[k] for k in ("mode", "temperature") if k in mixture})
    requested = mixture.get("requested_shares") or {}
    loss_w = mixture.get("loss_weights") or {}
    slices = list(dict.fromkeys([*weights, *requested, *loss_w,
                                 *(s for r in realised.values() for s in r)]))
    if not slices:
        return not_recorded("mixture")
    columns = [("sampling weight", weights), ("requested share", requested), ("loss weight", loss_w)]
    columns = [(name, d) for name, d in columns if d] + [(f"realised, {e}", r) for e, r in realised.items()]
    rows = [[s, *[_share(d.get(s)) for _, d in columns]] for s in slices]
    out = table(["slice", *[name for name, _ in columns]], rows)
    if settings:
        out = Markup(out + kv_table({k: cell(v) for k, v in settings.items()}))
    return out


def packing_section(files: RunFiles) -> Markup:
    m = files.manifest or {}
    parts: list[Any] = []
    for key, title in (("packing", "Packing"), ("masking", "Loss mask")):
        parts.append(tag("h3", title))
        parts.append(kv_table({k: cell(v) for k, v in m[key].items()}) if m.get(key)
                     else not_recorded(key))
    eff = [(r.get("epoch"), r["packing_efficiency"]) for r in files.metrics
           if isinstance(r.get("packing_efficiency"), (int, float))]
    if eff:
        parts.append(table(["epoch", "packing efficiency"], [list(e) for e in eff]))
    parts.append(tag("h3", "Mixture per slice"))
    parts.append(_mixture_table(m.get("mixture") or {}, realised_by_epoch(files)))
    return section("packing", "Packing and mixture", *parts)


def training_section(files: RunFiles) -> Markup:
    train, evals, gen = files.train_rows, files.eval_rows, files.gen_rows
    if not (train or evals or gen):
        return section("training", "Training", not_recorded("training metrics (metrics.jsonl)"))
    tps = [r["tokens_per_s"] for r in train if isinstance(r.get("tokens_per_s"), (int, float))]
    trained = [r["trained_tokens"] for r in train if isinstance(r.get("trained_tokens"), (int, float))]
    mfu = [r["mfu"] for r in train if isinstance(r.get("mfu"), (int, float))]
    cards = [("logged steps", len(train)), ("last step", _last(train, "step")),
             ("first loss", train[0].get("loss") if train else None),
             ("final loss", _last(train, "loss")),
             ("median tokens/s", median(tps) if tps else None),
             ("median MFU", f"{median(mfu):.2%}" if mfu else None),
             ("trained tokens", sum(trained) if trained else None)]
    parts: list[Any] = [Markup('<div class="cards">' + "".join(
        _card(k, v) for k, v in cards if v is not None) + "</div>")]
    parts.extend(_time_and_peak((files.manifest or {})))
    loss = plots.loss_curves(train, evals)
    if loss:
        parts.append(image(loss, "training and validation loss"))
    small = [image(uri, alt) for uri, alt in ((plots.refusal_curves(gen), "refusal rates during training"),
                                              (plots.lr_curve(train), "learning rate")) if uri]
    parts.append(Markup('<div class="plots">' + "".join(small) + "</div>"))
    if evals:
        slices = sorted({s for r in evals for s in r["eval_loss"]}, key=lambda s: (s != "all", s))
        first, last = evals[0]["eval_loss"], evals[-1]["eval_loss"]
        best = {s: min((r["eval_loss"][s] for r in evals
                        if isinstance(r["eval_loss"].get(s), (int, float))), default=None)
                for s in slices}
        parts.append(tag("h3", "Validation loss per slice"))
        parts.append(table(["slice", f"step {evals[0].get('step')}", "best",
                            f"step {evals[-1].get('step')}"],
                           [[s, first.get(s), best[s], last.get(s)] for s in slices]))
    if not gen:
        parts.append(tag("p", "Generation-based refusal curves: not recorded", class_="missing"))
    return section("training", "Training", *parts)


def _time_and_peak(m: dict[str, Any]) -> list[Markup]:
    """Wall-clock seconds per phase and what the MFU is measured against, from run.json."""
    out = []
    phases = ((m.get("timing") or {}).get("phases_s")) or {}
    if isinstance(phases, dict) and phases:
        total = sum(v for v in phases.values() if isinstance(v, (int, float)))
        out.append(tag("h3", "Wall-clock time per phase"))
        out.append(table(["phase", "seconds", "share"],
                         [[k, v, f"{v / total:.1%}" if total and isinstance(v, (int, float)) else None]
                          for k, v in phases.items()]))
    peak = m.get("throughput") or {}
    if isinstance(peak, dict) and peak.get("peak_source"):
        flops = peak.get("peak_flops_per_s")
        shown = f"{flops / 1e12:.3g} TFLOP/s" if isinstance(flops, (int, float)) else "unknown"
        out.append(tag("p", f"MFU = model FLOPs per second / peak {shown} ({peak['peak_source']}); "
                            f"{peak.get('flops', '')}", class_="note"))
    return out


def manifest_section(files: RunFiles) -> Markup:
    m = files.manifest
    if m is None:
        return section("manifest", "Run manifest", not_recorded("run manifest (run.json)"))

    scalars = {k: v for k, v in m.items() if not isinstance(v, (dict, list))}
    blocks = [Markup(f"<div>{tag('h3', 'run')}{kv_table(scalars)}</div>")]
    for key, value in m.items():
        if key not in scalars:
            rows = kv_table({p or "(empty)": v for p, v in flatten(value).items()})
            blocks.append(Markup(f"<div>{tag('h3', key)}{rows}</div>"))
    parts: list[Any] = [Markup('<div class="grid wide-kv">' + "".join(blocks) + "</div>")]
    raw = json.dumps(m, indent=2, ensure_ascii=False)
    parts.append(Markup(f"<details><summary>run.json as written</summary>{tag('pre', raw)}</details>"))
    return section("manifest", "Run manifest", *parts)
