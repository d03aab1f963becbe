"""``RUN/metrics.jsonl``, the log of a training run, and the experiment trackers it is handed to.

``MetricsLog`` appends one JSON object per line (training steps ``{"step", "loss", ...}``,
validations ``{"step", "eval_loss": {"all": x, "<slice>": y}}``, per-epoch mixtures ``{"epoch",
"realised_mixture": {...}}``) and gives the scalars to accelerate's trackers (``log.trackers``:
``resolve_trackers``); a resumed run keeps only the lines before its checkpoint. ``read_metrics``
reads the file back (the curves, ``sftlab.train.curves``, are drawn from it)::

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> log = MetricsLog(p)
    >>> log.write({"step": 1, "loss": 2.0}); log.write({"step": 2, "loss": 1.5})
    >>> read_metrics(p)
    [{'step': 1, 'loss': 2.0}, {'step': 2, 'loss': 1.5}]
    >>> _ = MetricsLog(p, keep_until=(1, 0, 1)); read_metrics(p)   # resumed from the checkpoint of step 1
    [{'step': 1, 'loss': 2.0}]
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from sftlab.files import append_text, open_input, write_atomic

__all__ = ["TRACKER_PACKAGES", "resolve_trackers", "MetricsLog", "read_metrics", "finite"]


# The package each accelerate tracker needs (``pip install`` names).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow",
                    "comet_ml": "comet_ml", "aim": "aim", "clearml": "clearml", "dvclive": "dvclive",
                    "swanlab": "swanlab", "trackio": "trackio"}


def resolve_trackers(setting) -> list:
    """The trackers to hand to ``Accelerator(log_with=...)`` for ``log.trackers``.

    ``"auto"``: tensorboard when installed, else none. A named tracker whose package is missing
    raises ``ValueError`` naming the install command (none of them is a dependency of sftlab);
    ``accelerate.tracking.GeneralTracker`` instances pass through.

    >>> resolve_trackers([])
    []
    """
    # accelerate is imported when a run starts, for start-up time
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    if setting == "auto":
        return ["tensorboard"] if "tensorboard" in available else []
    out = []
    for name in setting:
        if isinstance(name, GeneralTracker):
            out.append(name)
        elif name not in LOGGER_TYPE_TO_CLASS:
            raise ValueError(f"log.trackers: unknown tracker {name!r}; expected some of "
                             f"{', '.join(LOGGER_TYPE_TO_CLASS)} (accelerate's trackers)")
        elif name not in available:
            raise ValueError(f"log.trackers: {name} is not installed; pip install "
                             f"{TRACKER_PACKAGES.get(name, name)} (or drop it from log.trackers)")
        elif name not in out:
            out.append(name)
    return out


class MetricsLog:
    """Appends one JSON line per record to ``metrics.jsonl``, and hands the scalars to the
    experiment trackers through accelerate's tracker API (``accelerator.log``) when given one.

    A new run starts the file afresh. A resumed run passes ``keep_until=(step, epoch,
    step_in_epoch)`` of its checkpoint: lines the killed run wrote after that point are dropped,
    so the file reads as if the run had never stopped. Only the main process writes
    (``enabled``).
    """

    def __init__(self, path: str | Path, *, enabled: bool = True, accelerator=None,
                 keep_until: tuple[int, int, int] | None = None):
        self.path, self.enabled = Path(path), enabled
        self.accelerator = accelerator if accelerator is not None and accelerator.trackers else None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [] if keep_until is None or not self.path.exists() else [
            r for r in read_metrics(self.path, partial_last_line=True) if _before(r, *keep_until)]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        append_text(self.path, json.dumps(record) + "\n")
        if self.accelerator is not None and "step" in record:
            values = {f"train/{k}": record[k] for k in ("loss", "lr", "tokens_per_s", "mfu", "grad_norm")
                      if finite(record.get(k))}
            values.update({f"eval_loss/{name}": v for name, v in (record.get("eval_loss") or {}).items()
                           if finite(v)})
            if values:
                self.accelerator.log(values, step=record["step"])

    def close(self) -> None:
        if self.accelerator is not None:
            self.accelerator.end_training()
            self.accelerator = None


def _before(record: dict, step: int, epoch: int, step_in_epoch: int) -> bool:
    if "step" in record:
        return record["step"] <= step
    if "epoch" in record:  # a realised mixture line, logged when its epoch starts
        return record["epoch"] < epoch or (record["epoch"] == epoch and step_in_epoch > 0)
    return True


def read_metrics(metrics_path: str | Path, *, partial_last_line: bool = False) -> list[dict]:
    """Every record of a metrics file, in order (blank lines skipped). ``partial_last_line``
    drops a last line cut short, as a process killed while writing it leaves behind. Lines are
    split on ``\\n`` only (a JSON string may hold U+2028); a line that is not a JSON object (a
    damaged file) is skipped. A metrics path that is not a regular file is a ``UsageError``."""
    with open_input(metrics_path, note=False) as f:
        lines = f.read().decode("utf-8", "replace").split("\n")
    if partial_last_line:
        lines.pop()  # "" after a last newline, else a line cut short
    lines = [line for line in lines if line.strip()]
    return [r for r in map(_json_object, lines) if r is not None]


def _json_object(line: str) -> dict | None:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def finite(x) -> bool:
    """Whether ``x`` is a finite number (what a tracker and a curve can show)."""
    return isinstance(x, (int, float)) and math.isfinite(x)
