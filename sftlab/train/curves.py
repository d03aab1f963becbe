"""``RUN/metrics.jsonl`` (written during training) and the curves drawn from it into ``RUN/curves.png``.

``metrics.jsonl`` holds one JSON object per line: training steps ``{"step", "loss", ...}``,
validations ``{"step", "eval_loss": {"all": x, "<slice>": y}}`` and per-epoch mixtures
``{"epoch", "realised_mixture": {...}}``. :func:`read_curves` sorts them into series::

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

import json
import math
from pathlib import Path


class MetricsLog:
    """Appends one JSON line per record to ``metrics.jsonl`` (and TensorBoard scalars when asked).

    A new run starts the file afresh. A resumed run passes ``keep_until=(step, epoch,
    step_in_epoch)`` of its checkpoint: lines the killed run wrote after that point are dropped,
    so the file reads as if the run had never stopped. Only the main process writes
    (``enabled``). ``tensorboard``: ``True``, ``False`` or ``"auto"`` (when installed).
    """

    def __init__(self, path: str | Path, *, enabled: bool = True, tensorboard="auto",
                 keep_until: tuple[int, int, int] | None = None):
        self.path, self.enabled, self.writer = Path(path), enabled, None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [] if keep_until is None or not self.path.exists() else [
            r for r in read_metrics(self.path, partial_last_line=True) if _before(r, *keep_until)]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(self.path.parent / "tensorboard"))
            except ImportError:
                if tensorboard is True:
                    raise ImportError("log.tensorboard=true needs the tensorboard package: "
                                      "pip install tensorboard") from None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None and "step" in record:
            for key in ("loss", "lr", "tokens_per_s", "grad_norm"):
                if _finite(record.get(key)):
                    self.writer.add_scalar(f"train/{key}", record[key], record["step"])
            for name, value in (record.get("eval_loss") or {}).items():
                if _finite(value):
                    self.writer.add_scalar(f"eval_loss/{name}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _before(record: dict, step: int, epoch: int, step_in_epoch: int) -> bool:
    if "step" in record:
        return record["step"] <= step
    if "epoch" in record:  # a realised mixture line, logged when its epoch starts
        return record["epoch"] < epoch or (record["epoch"] == epoch and step_in_epoch > 0)
    return True


def read_metrics(metrics_path: str | Path, *, partial_last_line: bool = False) -> list[dict]:
    """Every record of a metrics file, in order (blank lines skipped). ``partial_last_line``
    drops a last line cut short, as a process killed while writing it leaves behind."""
    with open(metrics_path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    if partial_last_line and lines and not lines[-1].endswith("\n"):
        lines.pop()
    return [json.loads(line) for line in lines]


def read_curves(metrics_path: str | Path) -> dict:
    """``{"train": [(step, loss)], "eval": {slice: [(step, loss)]}}`` from a metrics file."""
    train: list[tuple[int, float]] = []
    evals: dict[str, list[tuple[int, float]]] = {}
    for rec in read_metrics(metrics_path):
        if "loss" in rec and "step" in rec and _finite(rec["loss"]):
            train.append((rec["step"], rec["loss"]))
        for name, value in (rec.get("eval_loss") or {}).items():
            if _finite(value):
                evals.setdefault(name, []).append((rec["step"], value))
    return {"train": train, "eval": evals}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def plot_curves(metrics_path: str | Path, out_path: str | Path, title: str | None = None) -> Path:
    """Draw training loss and eval loss per slice (``all`` in black) against the step; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        ax.set_ylabel("loss (per trained token)")
        ax.set_title(title or "training and held-out loss")
        ax.grid(alpha=0.3)
        if curves["train"] or curves["eval"]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        out = Path(out_path)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out
