"""Plots for the report, drawn with matplotlib's object API (no pyplot state) as inline PNGs.

Each function takes plain lists parsed from ``metrics.jsonl`` and returns a
``data:image/png;base64,...`` URI, or ``None`` when there is nothing to draw.
"""
from __future__ import annotations

import base64
import io
from typing import Any

COLOURS = ("#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#1b7c83", "#e16f24", "#6e7781")


def _figure(width: float = 11.0, height: float = 3.6, ncols: int = 1, steps: bool = True):
    """A figure whose x axes count optimizer steps (whole numbers: no tick at step 2.5)."""
    # lazy: matplotlib takes a second to import and only the report draws
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, color="#e5e7eb", linewidth=0.8)
        ax.spines[["top", "right"]].set_visible(False)
        if steps:
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, axes


def _to_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows
           if isinstance(r.get("step"), (int, float)) and isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _smooth(values: list[float], span: int) -> list[float]:
    """Trailing mean over ``span`` points, so the trend shows through step-to-step noise."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= span:
            total -= values[i - span]
        out.append(total / min(i + 1, span))
    return out


def loss_curves(train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> str | None:
    """Training loss (raw and smoothed) beside validation loss per slice."""
    steps, loss = _series(train, "loss")
    slices = sorted({s for r in evals for s in (r.get("eval_loss") or {})}, key=lambda s: (s != "all", s))
    if not steps and not slices:
        return None
    fig, axes = _figure(ncols=2 if slices else 1, width=11.0 if slices else 5.6)
    ax_train, ax_eval = axes[0], axes[1] if slices else None  # no held-out data: no empty validation panel
    if steps:
        smooth = len(loss) >= 8  # with few points the raw curve is the curve
        ax_train.plot(steps, loss, color=COLOURS[0], alpha=0.35 if smooth else 1.0,
                      linewidth=1 if smooth else 2, marker=None if smooth else "o", markersize=3,
                      label="loss")
        if smooth:
            ax_train.plot(steps, _smooth(loss, max(2, len(loss) // 20)), color=COLOURS[0],
                          linewidth=2, label="smoothed")
        ax_train.legend(frameon=False)
    ax_train.set_title("training loss (response tokens)")
    for i, name in enumerate(slices):
        pts = [(r["step"], r["eval_loss"][name]) for r in evals
               if isinstance(r.get("eval_loss", {}).get(name), (int, float))]
        ax_eval.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                     color=COLOURS[i % len(COLOURS)], linewidth=2.4 if name == "all" else 1.4,
                     label=name)
    if slices:
        ax_eval.legend(frameon=False, fontsize=8, ncols=2)
        ax_eval.set_title("validation loss per slice")
    return _to_uri(fig)


def refusal_curves(gen: list[dict[str, Any]]) -> str | None:
    """Generation-based metrics during training (harmful / benign refusal rate)."""
    metrics = sorted({m for r in gen for m in (r.get("gen_eval") or {})})
    if not metrics:
        return None
    fig, (ax,) = _figure(width=5.6, height=3.2)
    for i, name in enumerate(metrics):
        pts = [(r["step"], r["gen_eval"][name]) for r in gen
               if isinstance(r.get("gen_eval", {}).get(name), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                color=COLOURS[i % len(COLOURS)], linewidth=1.8, label=name)
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("generation-based refusal rates during training")
    ax.legend(frameon=False, fontsize=8)
    return _to_uri(fig)


def lr_curve(train: list[dict[str, Any]]) -> str | None:
    steps, lr = _series(train, "lr")
    if len(steps) < 2:
        return None
    fig, (ax,) = _figure(width=4.2, height=3.2)
    ax.plot(steps, lr, color=COLOURS[3], linewidth=1.6)
    ax.set_title("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return _to_uri(fig)


def comparison(tuned: dict[str, Any], reference: dict[str, Any], metrics: list[str]) -> str | None:
    """Tuned vs reference point estimates with their Wilson 95 % intervals, one row per metric."""
    rows = [m for m in metrics if isinstance(tuned.get(m), dict) and tuned[m].get("low") is not None]
    if not rows:
        return None
    fig, (ax,) = _figure(width=7.5, height=0.55 * len(rows) + 1.1, steps=False)
    ax.set_xlabel("rate (point estimate, Wilson 95 % interval)")
    for offset, (name, results, colour) in enumerate((("reference", reference, COLOURS[7]),
                                                      ("tuned", tuned, COLOURS[0]))):
        ys, xs, lo, hi = [], [], [], []
        for i, m in enumerate(rows):
            e = results.get(m) if isinstance(results, dict) else None
            if isinstance(e, dict) and isinstance(e.get("value"), (int, float)):
                ys.append(len(rows) - 1 - i + (0.15 if offset else -0.15))
                xs.append(e["value"])
                lo.append(e["value"] - e.get("low", e["value"]))
                hi.append(e.get("high", e["value"]) - e["value"])
        if xs:
            ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", color=colour, capsize=3, label=name)
    ax.set_yticks(range(len(rows)), list(reversed(rows)))
    ax.set_xlim(-0.02, 1.02)
    ax.grid(True, axis="x", color="#e5e7eb")
    handles, labels = ax.get_legend_handles_labels()  # tuned first, outside the data
    fig.legend(handles[::-1], labels[::-1], frameon=False, fontsize=8, loc="outside right upper")
    return _to_uri(fig)


def margins(pairs: list[dict[str, Any]]) -> str | None:
    """Refusal margin of each benign look-alike (x) against its harmful prompt (y), reference
    (grey) to tuned (blue), one arrow per pair; above the diagonal the harmful prompt leans
    further towards refusal than its look-alike, right of 0 the look-alike is refused."""
    pts = [p for p in pairs if isinstance(p.get("tuned"), dict)]
    if not pts:
        return None
    fig, (ax,) = _figure(width=6.2, height=5.2)
    ax.set_xlabel("benign look-alike: log P(refusal) - log P(compliance)")
    ax.set_ylabel("harmful prompt: log P(refusal) - log P(compliance)")
    values = []
    for p in pts:
        t, r = p["tuned"], p.get("reference")
        values += [t["benign"], t["harmful"]]
        if isinstance(r, dict):
            values += [r["benign"], r["harmful"]]
            ax.annotate("", xy=(t["benign"], t["harmful"]), xytext=(r["benign"], r["harmful"]),
                        arrowprops={"arrowstyle": "->", "color": "#c9d1d9", "lw": 0.8})
    ref = [p["reference"] for p in pts if isinstance(p.get("reference"), dict)]
    if ref:
        ax.scatter([r["benign"] for r in ref], [r["harmful"] for r in ref], s=14, color=COLOURS[7],
                   label="reference")
    ax.scatter([p["tuned"]["benign"] for p in pts], [p["tuned"]["harmful"] for p in pts], s=14,
               color=COLOURS[0], label="tuned")
    lo, hi = min(values) - 0.5, max(values) + 0.5
    ax.plot([lo, hi], [lo, hi], color="#8c959f", linewidth=0.8, linestyle="--")
    ax.axhline(0, color="#8c959f", linewidth=0.6)
    ax.axvline(0, color="#8c959f", linewidth=0.6)
    ax.set_title("refusal margins on paired prompts")
    ax.legend(frameon=False, fontsize=8)
    return _to_uri(fig)
