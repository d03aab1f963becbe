"""The loss curves of a run: ``RUN/metrics.jsonl`` (written by ``sftlab.train.metrics.MetricsLog``)
sorted into series by :func:`read_curves` and drawn into ``RUN/curves.png`` by :func:`plot_curves`::

    >>> import json, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> _ = p.write_text("\\n".join(json.dumps(x) for x in [
    ...     {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5},
    ...     {"step": 2, "eval_loss": {"all": 1.7, "math": 1.9}}]))
    >>> c = read_curves(p)
    >>> c["train"], c["eval"]["math"]
    ([(1, 2.0), (2, 1.5)], [(2, 1.9)])
"""
from __future__ import annotations

import io
from pathlib import Path

from sftlab.files import write_atomic
from sftlab.train.metrics import finite, read_metrics

__all__ = ["read_curves", "plot_curves"]


def read_curves(metrics_path: str | Path) -> dict:
    """``{"train": [(step, loss)], "eval": {slice: [(step, loss)]}}`` from a metrics file."""
    train: list[tuple[int, float]] = []
    evals: dict[str, list[tuple[int, float]]] = {}
    for rec in read_metrics(metrics_path):
        if "loss" in rec and "step" in rec and finite(rec["loss"]):
            train.append((rec["step"], rec["loss"]))
        for name, value in (rec.get("eval_loss") or {}).items():
            if finite(value):
                evals.setdefault(name, []).append((rec["step"], value))
    return {"train": train, "eval": evals}


def plot_curves(metrics_path: str | Path, out_path: str | Path, title: str | None = None) -> Path:
    """Draw training loss and eval loss per slice (``all`` in black) against the step; PNG."""
    import matplotlib  # matplotlib is imported when a plot is drawn, for start-up time

    matplotlib.use("Agg")
    # lazy: matplotlib takes a second to import and only the plot needs it
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    curves = read_curves(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if curves["train"]:
            steps, losses = zip(*curves["train"])
            ax.plot(steps, losses, color="0.6", linewidth=1, label="train loss")
        for name, points in sorted(curves["eval"].items(), key=lambda kv: (kv[0] != "all", kv[0])):
            steps, losses = zip(*points)
            style = {"color": "black", "linewidth": 2} if name == "all" else {"linewidth": 1.2}
            ax.plot(steps, losses, marker="o", markersize=3, label=f"eval {name}", **style)
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.set_ylabel("loss (per trained token)")
        ax.set_title(title or "training and held-out loss")
        ax.grid(alpha=0.3)
        if curves["train"] or curves["eval"]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        out = Path(out_path)
        png = io.BytesIO()
        fig.savefig(png, format="png")
        write_atomic(out, png.getvalue())
    finally:
        plt.close(fig)
    return out
