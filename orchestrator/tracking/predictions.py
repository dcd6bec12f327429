"""A run's saved test predictions (``test_predictions.json``: labels and predicted classes, image by image)
and the paired comparison of two runs on them: McNemar's exact test for accuracy and a paired bootstrap of
each metric's difference (``trainers.intervals``). ``cvstudy compare`` and the report's grouped table use it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
from mlflow.exceptions import MlflowException

from cvstudy.trainers.intervals import mcnemar, paired_difference_intervals
from cvstudy.trainers.metrics import SCALARS, classification_metrics

from ..errors import CompareError
from .schema import PREDICTIONS_ARTIFACT, Tag


@dataclass(frozen=True)
class Side:
    ref: str
    """What the user named: a run id, STUDY@best, STUDY#N or models:/..."""
    run_id: str
    labels: np.ndarray
    predictions: np.ndarray
    num_classes: int
    test_digest: str | None


@dataclass(frozen=True)
class Comparison:
    a: Side
    b: Side
    num_classes: int
    only_a: int
    """Test images A classified right and B wrong."""
    only_b: int
    mcnemar_p: float
    """McNemar's exact two-sided p for equal accuracy."""
    differences: dict
    """``{metric: (a - b, low, high)}``, the paired bootstrap's 95 % interval."""
    values: dict
    """``{metric: (a, b)}`` on the test set."""


def load_side(client, run_id: str, ref: str | None = None) -> Side:
    """Run ``run_id``'s saved test predictions; CompareError when it has none or does not exist."""
    ref = ref or run_id
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise CompareError(f"{ref}: no run {run_id} in the tracking store") from None
    with TemporaryDirectory(prefix="cvstudy-compare-") as tmp:
        try:
            path = client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, tmp)
        except (MlflowException, OSError):
            raise CompareError(
                f"{ref}: run {run_id} has no {PREDICTIONS_ARTIFACT} (it finished before cvstudy saved test "
                "predictions, or did not finish); retrain it to compare it"
            ) from None
        saved = json.loads(Path(path).read_text())
    return Side(
        ref,
        run_id,
        np.asarray(saved["labels"], dtype=np.int64),
        np.asarray(saved["predictions"], dtype=np.int64),
        int(saved["classes"]),
        run.data.tags.get(Tag.data_digest("test")),
    )


def paired_over_images(a: Side, b: Side) -> Comparison:
    """A and B on their common test images; refused unless those are the same images with the same labels."""
    if a.test_digest != b.test_digest or a.num_classes != b.num_classes or not np.array_equal(a.labels, b.labels):
        raise CompareError(
            f"{a.ref} and {b.ref} were tested on different test sets (test digests {a.test_digest or 'none'} "
            f"and {b.test_digest or 'none'}): a paired comparison needs the same images"
        )
    k = a.num_classes
    only_a, only_b, p = mcnemar(a.labels, a.predictions, b.predictions)
    score_a, score_b = (classification_metrics(a.labels, s.predictions, k) for s in (a, b))
    intervals = paired_difference_intervals(a.labels, a.predictions, b.predictions, k)
    return Comparison(
        a,
        b,
        k,
        only_a,
        only_b,
        p,
        {m: (score_a[m] - score_b[m], *intervals[m]) for m in SCALARS},
        {m: (score_a[m], score_b[m]) for m in SCALARS},
    )
