"""Classification metrics, from scikit-learn only."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

SCALARS = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1")
CI_LOW, CI_HIGH = "ci_low", "ci_high"  # suffixes of a metric's interval endpoints (``intervals``)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """Scalars (SCALARS), per-class precision/recall/f1 lists and the K x K confusion matrix
    (rows: true class, columns: predicted). Macro averages are scikit-learn's: the mean over classes
    of per-class values (so macro_f1 is not the harmonic mean of macro precision and recall)."""
    labels = np.arange(num_classes)
    with warnings.catch_warnings():  # a class absent from a small validation split is expected
        warnings.simplefilter("ignore")
        p, r, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        mp, mr, mf1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average="macro", zero_division=0
        )
        balanced = balanced_accuracy_score(y_true, y_pred)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "macro_precision": float(mp),
        "macro_recall": float(mr),
        "macro_f1": float(mf1),
        "precision_per_class": [float(v) for v in p],
        "recall_per_class": [float(v) for v in r],
        "f1_per_class": [float(v) for v in f1],
        "support_per_class": [int(v) for v in support],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def flat(metrics: dict, prefix: str, per_class: tuple[str, ...] = ("precision", "recall", "f1")) -> dict[str, float]:
    """Scalar metrics as ``{prefix}_{name}``, their ``intervals`` (when given) as ``{prefix}_{name}_ci_low``
    and ``_ci_high``, plus per-class ``{prefix}_{kind}_class_{c}``."""
    out = {f"{prefix}_{k}": metrics[k] for k in SCALARS if k in metrics}
    for k, (low, high) in metrics.get("intervals", {}).items():
        out[f"{prefix}_{k}_{CI_LOW}"], out[f"{prefix}_{k}_{CI_HIGH}"] = low, high
    if "loss" in metrics:
        out[f"{prefix}_loss"] = metrics["loss"]
    for kind in per_class:
        for c, v in enumerate(metrics[f"{kind}_per_class"]):
            out[f"{prefix}_{kind}_class_{c}"] = v
    return out
