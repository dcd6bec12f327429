"""How far a test metric could move on another draw of test images: a 95 % interval beside each of
``metrics.SCALARS``. Accuracy is a binomial proportion, so it gets Wilson's score interval (SciPy). The
macro metrics are not, so they get a percentile bootstrap over the test images, resampled within each
true class: the test set's class sizes are part of its design (a balanced test set stays balanced), and
a class never drawn would leave balanced accuracy undefined.

Two models scored on the same test images are compared image by image (``paired_difference_intervals``: one
bootstrap draw scores both; ``mcnemar``: the exact test on the images they disagree on).

The bootstrap computes every resample's confusion matrix at once (one ``bincount`` per class), because
1,000 calls of scikit-learn on 10,000 images take seconds; its macro formulas are scikit-learn's with
``labels=range(K)`` and ``zero_division=0`` (tests/trainers/test_intervals.py compares them per resample).
"""

from __future__ import annotations

import numpy as np

from .metrics import SCALARS

LEVEL = 0.95
"""Coverage of every interval."""
RESAMPLES = 1000
"""Bootstrap resamples of the test images (the percentile endpoints move by about 0.1 of the metric's
standard error between two seeds at this count)."""
CHUNK = 4_000_000  # resampled images held at once (int64: 32 MB), whatever the test set's size


def wilson(correct: int, total: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson's score interval of the proportion ``correct / total`` (``scipy.stats.binomtest``)."""
    from scipy import stats  # deferred: 0.9 s to import, and only the end of a run needs it

    ci = stats.binomtest(int(correct), int(total)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def resampled_confusions(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """(resamples, K, K) confusion matrices (rows: true class) of test sets drawn with replacement
    within each true class, each class keeping its size."""
    return paired_confusions(y_true, [y_pred], num_classes, resamples, rng)[0]


def paired_confusions(
    y_true: np.ndarray, predictions: list, num_classes: int, resamples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """``resampled_confusions`` of several models' predictions of the same test images, every model
    scored on the same drawn images (a paired bootstrap)."""
    y_true = np.asarray(y_true)
    predictions = [np.asarray(p) for p in predictions]
    k = num_classes
    counts = [np.zeros((resamples, k, k), dtype=np.int64) for _ in predictions]
    for c in range(k):
        members = np.flatnonzero(y_true == c)
        if len(members) == 0:
            continue
        step = max(1, CHUNK // len(members))
        for start in range(0, resamples, step):
            rows = min(step, resamples - start)
            draws = members[rng.integers(0, len(members), size=(rows, len(members)))]
            offset = np.arange(rows)[:, None] * k
            for stack, pred in zip(counts, predictions):
                codes = (offset + pred[draws]).ravel()
                stack[start : start + rows, c, :] = np.bincount(codes, minlength=rows * k).reshape(rows, k)
    return counts


def macro_scores(confusions: np.ndarray) -> dict[str, np.ndarray]:
    """``SCALARS`` of each confusion matrix in a (..., K, K) stack, as scikit-learn computes them with
    ``labels=range(K)`` and ``zero_division=0``: a class never predicted has precision 0, one absent
    from the truth recall 0 in the macro recall, and balanced accuracy averages over present classes."""
    cm = np.asarray(confusions, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support, predicted = cm.sum(axis=-1), cm.sum(axis=-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
        present = support > 0
        balanced = (recall * present).sum(axis=-1) / present.sum(axis=-1)
    return {
        "accuracy": tp.sum(axis=-1) / cm.sum(axis=(-2, -1)),
        "balanced_accuracy": balanced,
        "macro_precision": precision.mean(axis=-1),
        "macro_recall": recall.mean(axis=-1),
        "macro_f1": f1.mean(axis=-1),
    }


def sampling_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    num_classes: int,
    seed: int = 0,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
) -> dict[str, tuple[float, float]]:
    """``{metric: (low, high)}`` for every name in ``SCALARS``: Wilson for accuracy, the stratified
    percentile bootstrap (``resamples`` draws from ``seed``) for the others."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0 or len(y_true) != len(y_pred):
        raise ValueError(f"test labels and predictions must be non-empty and as long; got {len(y_true)}, {len(y_pred)}")
    out = {"accuracy": wilson(int((y_true == y_pred).sum()), len(y_true), level)}
    scores = macro_scores(resampled_confusions(y_true, y_pred, num_classes, resamples, np.random.default_rng(seed)))
    tail = (1 - level) / 2
    for name in SCALARS:
        if name != "accuracy":
            low, high = np.quantile(scores[name], [tail, 1 - tail])
            out[name] = (float(low), float(high))
    return out


def paired_difference_intervals(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    num_classes: int,
    seed: int = 0,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
) -> dict[str, tuple[float, float]]:
    """``{metric: (low, high)}`` for every name in ``SCALARS``: the percentile interval of A's score minus
    B's from a paired bootstrap (both models scored on the same resampled images). The observed
    difference is the caller's, from ``metrics.classification_metrics`` of each."""
    y_true, pred_a, pred_b = np.asarray(y_true), np.asarray(pred_a), np.asarray(pred_b)
    if not len(y_true) == len(pred_a) == len(pred_b) or len(y_true) == 0:
        raise ValueError(
            f"labels and both predictions must be non-empty and as long; got {len(y_true)}, "
            f"{len(pred_a)}, {len(pred_b)}"
        )
    stacks = paired_confusions(y_true, [pred_a, pred_b], num_classes, resamples, np.random.default_rng(seed))
    a, b = macro_scores(stacks[0]), macro_scores(stacks[1])
    tail = (1 - level) / 2
    out = {}
    for name in SCALARS:
        low, high = np.quantile(a[name] - b[name], [tail, 1 - tail])
        out[name] = (float(low), float(high))
    return out


def mcnemar(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test of equal accuracy on the same images: (images only A got right, images only
    B got right, two-sided p), the p from the binomial test of the discordant images (``scipy.stats``)."""
    from scipy import stats

    right_a, right_b = np.asarray(pred_a) == np.asarray(y_true), np.asarray(pred_b) == np.asarray(y_true)
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    p = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return only_a, only_b, float(p)
