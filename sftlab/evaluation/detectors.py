"""Every refusal detector by name: ``load_detector(spec)`` builds the learned detector, the phrase
rules, a judge or a sequence-classification model; ``default_detector()`` is eval's default, and
``label_all`` / ``detect_all`` label many responses with any of them.

``ClassifierDetector``, the one defined here, is backed by a local Hugging Face
sequence-classification model. The directory is loaded with ``AutoModelForSequenceClassification`` (safetensors; remote code
only when the caller turns ``trust_remote_code`` on). Its labels are mapped onto comply / refuse / partial
through ``config.id2label`` (a name containing ``partial`` -> partial, ``refus`` -> refuse,
``compl`` -> comply) or an explicit map (``--label-map LABEL_0=comply,LABEL_1=refuse``).

Example::

    >>> parse_label_map("LABEL_0=comply,LABEL_1=refuse")
    {'LABEL_0': 'comply', 'LABEL_1': 'refuse'}
"""
from __future__ import annotations

import os
from pathlib import Path

from sftlab.errors import UsageError
from sftlab.evaluation.detector import LABELS, RuleDetector
from sftlab.evaluation.judge import JudgeDetector
from sftlab.evaluation.learned import DEFAULT_THRESHOLD, LearnedDetector
from sftlab.model.loading import refuse_pickled_weights


def parse_label_map(spec: str | None) -> dict[str, str] | None:
    if not spec:
        return None
    out = {}
    for part in spec.split(","):
        name, sep, label = part.partition("=")
        if not sep or label.strip() not in LABELS:
            raise UsageError(f"--label-map: {part!r} is not CLASS=comply|refuse|partial")
        out[name.strip()] = label.strip()
    return out


def _auto_label(name: str) -> str | None:
    n = name.lower()
    if "partial" in n:
        return "partial"
    if "refus" in n:
        return "refuse"
    if "compl" in n:
        return "comply"
    return None


class ClassifierDetector:
    """``Detector`` over a sequence-classification model directory (see module docstring)."""

    def __init__(self, path: str | os.PathLike, label_map: dict[str, str] | None = None,
                 batch_size: int = 16, max_length: int = 512, trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer  # lazy: start-up time

        self.path = str(path)
        self.name = f"classifier:{os.path.basename(os.path.normpath(self.path))}"
        if Path(self.path).is_dir():
            try:
                refuse_pickled_weights(Path(self.path))
            except FileNotFoundError as e:
                raise UsageError(str(e)) from None
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.path, trust_remote_code=trust_remote_code, use_safetensors=True).eval()
        self.batch_size, self.max_length = batch_size, max_length
        id2label = {int(k): str(v) for k, v in self.model.config.id2label.items()}
        self.labels = {}
        for i, name in sorted(id2label.items()):
            label = (label_map or {}).get(name) or (label_map or {}).get(str(i)) or _auto_label(name)
            if label is None:
                raise UsageError(
                    f"{self.path}: class {i} is labelled {name!r}, which names none of comply, refuse, "
                    f"partial; pass --label-map {name}=comply|refuse|partial for every class")
            self.labels[i] = label
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token

    def __call__(self, text: str) -> str:
        return self.label_all([text])[0]

    def label_all(self, texts: list[str]) -> list[str]:
        """Labels for many texts, classified in batches."""
        import torch  # lazy: start-up time

        out = []
        for b in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[b:b + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            with torch.no_grad():
                logits = self.model(**enc).logits
            out.extend(self.labels[int(i)] for i in logits.argmax(-1).tolist())
        return out

    def describe(self) -> dict:
        return {"name": self.name, "kind": "classifier", "path": self.path,
                "labels": {str(i): lab for i, lab in self.labels.items()}}


DEFAULT_DETECTOR = "learned"
"""The detector ``sftlab eval`` uses unless told otherwise (the learned detector generalised
better than the rules on XSTest, leave one model out: see docs/INTERFACES.md)."""
DETECTOR_SPECS = "learned[:threshold=T][,rules=off] | rules | judge:DIR | DIR (a sequence-classification model)"


def _options(spec: str) -> tuple[str, dict[str, str]]:
    name, _, rest = spec.partition(":")
    opts = {}
    for part in filter(None, rest.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise UsageError(f"--detector {spec}: {part!r} is not KEY=VALUE")
        opts[key.strip()] = value.strip()
    return name, opts


def _threshold(spec: str, value) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--detector {spec}: threshold {value!r} is not a number") from None
    if not 0.0 < t < 1.0:
        raise UsageError(f"--detector {spec}: threshold {t} is not between 0 and 1")
    return t


_DEFAULT_INSTANCE: list = []


def default_detector():
    """The default detector (``DEFAULT_DETECTOR``), loaded once per process."""
    if not _DEFAULT_INSTANCE:
        _DEFAULT_INSTANCE.append(load_detector(DEFAULT_DETECTOR))
    return _DEFAULT_INSTANCE[0]


def load_detector(spec: str | None = DEFAULT_DETECTOR, label_map: dict[str, str] | None = None,
                  trust_remote_code: bool = False, threshold: float | None = None):
    """A detector by spec (``DETECTOR_SPECS``): ``learned`` (or ``None``; ``learned:threshold=0.6``;
    ``learned:rules=off`` for the model without the phrase rules) -> ``LearnedDetector``; ``rules`` -> ``RuleDetector``; ``judge:DIR`` (``judge:DIR,format=wildguard``)
    -> ``JudgeDetector``; a directory -> ``ClassifierDetector``. ``threshold`` overrides the spec's."""
    spec = spec or DEFAULT_DETECTOR
    if threshold is not None and not (spec.startswith("learned") or spec.startswith("judge:")):
        raise UsageError(f"--threshold applies to the learned detector and judges, not to {spec}")
    if spec == "rules":
        return RuleDetector()
    if spec == "learned" or spec.startswith("learned:"):
        _, opts = _options(spec)
        unknown = set(opts) - {"threshold", "rules"}
        if unknown:
            raise UsageError(f"--detector {spec}: unknown setting {sorted(unknown)[0]!r} (known: threshold, rules)")
        rules = str(opts.get("rules", "on")).lower()
        if rules not in ("on", "off"):
            raise UsageError(f"--detector {spec}: rules={rules!r} must be on or off")
        t = threshold if threshold is not None else opts.get("threshold", DEFAULT_THRESHOLD)
        return LearnedDetector(threshold=_threshold(spec, t), rules=rules == "on")
    if spec.startswith("judge:"):
        path, _, rest = spec[len("judge:"):].partition(",")
        _, opts = _options("judge:" + rest)
        unknown = set(opts) - {"format", "threshold", "batch_size"}
        if unknown:
            raise UsageError(f"--detector {spec}: unknown setting {sorted(unknown)[0]!r} "
                             "(known: format, threshold, batch_size)")
        t = threshold if threshold is not None else opts.get("threshold", 0.5)
        return JudgeDetector(path, prompt_format=opts.get("format", "auto"),
                             threshold=_threshold(spec, t), batch_size=int(opts.get("batch_size", 8)),
                             trust_remote_code=trust_remote_code)
    if not os.path.isdir(spec):
        raise UsageError(f"--detector {spec}: expected {DETECTOR_SPECS}")
    try:
        return ClassifierDetector(spec, label_map, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UsageError(f"--detector {spec}: cannot load a sequence-classification model: {e}") from None


def label_all(detector, texts: list[str]) -> list[str]:
    """A detector's labels for many texts (batched when the detector can)."""
    batch = getattr(detector, "label_all", None)
    return batch(texts) if callable(batch) else [detector(t) for t in texts]


def detect_all(detector, texts: list[str], prompts: list[str | None] | None = None) -> list[tuple[str, float | None]]:
    """``(label, p_refusal)`` per text; ``p_refusal`` is ``None`` for detectors without a
    probability (the rules, a classifier). Judges also see the prompt when given."""
    batch = getattr(detector, "detect_all", None)
    if callable(batch):
        try:
            found = batch(texts, prompts=prompts)
        except TypeError:
            found = batch(texts)
        return [(d.label, d.p_refusal) for d in found]
    return [(lab, None) for lab in label_all(detector, texts)]
