"""Fitting the learned refusal detector, and measuring it out of sample (needs scikit-learn).

``fit_heads`` fits the two logistic models of ``sftlab.evaluation.learned`` on labelled
responses; ``leave_one_source_out`` fits on every source model but one and labels the held-out
one, all ways round, so every reported agreement is on responses of a model the detector never
saw (DESIGN.md invariant 12). ``scripts/fit_detector.py`` runs both on the built-in XSTest set
and writes the shipped weights. Inference never imports this module.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sftlab.errors import UsageError
from sftlab.progress import progress_bar
from sftlab.evaluation.learned import FeatureSpec, LearnedDetector, feature_matrix, save_weights

DEFAULT_C = 1000.0
"""Inverse L2 strength of the logistic fits (features are L1-normalised, so weights are large)."""


def _sklearn():
    try:
        # lazy: scikit-learn loads only when a detector is fitted
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise UsageError("fitting the learned detector needs scikit-learn: pip install scikit-learn") from None
    return LogisticRegression


def fit_heads(texts: Sequence[str], labels: Sequence[str], spec: FeatureSpec = FeatureSpec(),
              C: float = DEFAULT_C) -> dict:
    """``{"refusal": (coef, bias), "partial": (coef, bias)}`` fitted on ``texts``/``labels``."""
    LogisticRegression = _sklearn()
    X = feature_matrix(list(texts), spec)
    y = np.array([lab in ("refuse", "partial") for lab in labels])
    if y.all() or not y.any():
        raise UsageError("fitting needs both refusals and compliances among the labels")
    # fit over the columns present in the data only: a weight whose feature never occurs gets no
    # gradient but the L2 term's, so it is 0 either way, and the optimiser works on far fewer dims
    cols = np.unique(X.indices)
    X = X[:, cols]

    def fit(rows, target) -> tuple[np.ndarray, float]:
        clf = LogisticRegression(C=C, max_iter=5000).fit(X[rows], target)
        coef = np.zeros(spec.dim)
        coef[cols] = clf.coef_[0]
        return coef, float(clf.intercept_[0])

    heads = {"refusal": fit(np.arange(len(y)), y)}
    refused = np.flatnonzero(y)
    yp = np.array([labels[i] == "partial" for i in refused])
    if yp.any() and not yp.all():
        heads["partial"] = fit(refused, yp)
    else:
        heads["partial"] = (np.zeros(spec.dim), -1.0)
    return heads


def fitted_detector(path, texts, labels, spec: FeatureSpec = FeatureSpec(), C: float = DEFAULT_C,
                    meta: dict | None = None, threshold: float = 0.5) -> LearnedDetector:
    """Fit, write the weights to ``path`` and load them back as a ``LearnedDetector``."""
    heads = fit_heads(texts, labels, spec, C)
    save_weights(path, spec, heads, {"version": "unreleased", "regularisation": {"C": C, "penalty": "l2"},
                                     **(meta or {})})
    return LearnedDetector(path, threshold=threshold)


def leave_one_source_out(data, workdir, spec: FeatureSpec = FeatureSpec(), C: float = DEFAULT_C,
                         threshold: float = 0.5, progress: bool = False) -> dict:
    """Out-of-sample labels for every row of ``data`` (a ``LabelledSet`` with ``sources``):
    ``{"predicted": [label per row], "p_refusal": [...], "partial": [partial head's verdict],
    "folds": {source: n_train}}``."""
    sources = sorted({s for s in data.sources if s is not None})
    if len(sources) < 2:
        raise UsageError(f"{data.path}: leave-one-source-out needs at least two source models "
                         f"(a 'model' column), found {len(sources)}")
    predicted: list[str | None] = [None] * len(data.labels)
    p_refusal: list[float | None] = [None] * len(data.labels)
    partial: list[bool | None] = [None] * len(data.labels)
    folds = {}
    for held in progress_bar(sources, desc="leave-one-model-out", unit="model", enabled=progress):
        train = [i for i, s in enumerate(data.sources) if s is not None and s != held]
        test = [i for i, s in enumerate(data.sources) if s == held]
        det = fitted_detector(Path(workdir) / f"fold-{len(folds)}.npz",
                              [data.responses[i] for i in train], [data.labels[i] for i in train],
                              spec, C, {"fitted_on": f"all but {held}"}, threshold)
        for i, d in zip(test, det.detect_all([data.responses[i] for i in test])):
            predicted[i], p_refusal[i], partial[i] = d.label, d.p_refusal, d.partial
        folds[held] = len(train)
    return {"predicted": predicted, "p_refusal": p_refusal, "partial": partial, "folds": folds}
