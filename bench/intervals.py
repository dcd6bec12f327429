"""What a run's test-set intervals cost (``trainers.intervals``: Wilson for accuracy, 1,000 class-stratified
bootstrap resamples for the macro metrics), against one scikit-learn call of ``classification_metrics``
on the same predictions and against the bootstrap done with scikit-learn per resample, side by side.
Goal: under a second on 10,000 test images.

    PYTHONPATH=. python bench/intervals.py [--images 10000] [--classes 10] [--naive 50]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common import record  # noqa: E402
from cvstudy.trainers.intervals import RESAMPLES, sampling_intervals  # noqa: E402
from cvstudy.trainers.metrics import classification_metrics  # noqa: E402


def best_of(repeats: int, work) -> float:
    """The fastest of ``repeats`` timings of ``work()``, in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--naive", type=int, default=50, help="resamples timed for the scikit-learn bootstrap")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    y_true = np.arange(args.images) % args.classes
    y_pred = np.where(rng.random(args.images) < 0.7, y_true, rng.integers(0, args.classes, args.images))
    sampling_intervals(y_true, y_pred, args.classes)  # SciPy's import, once per process
    ours = best_of(3, lambda: sampling_intervals(y_true, y_pred, args.classes))
    one = best_of(3, lambda: classification_metrics(y_true, y_pred, args.classes))

    def naive() -> None:
        for _ in range(args.naive):
            idx = rng.integers(0, args.images, args.images)
            classification_metrics(y_true[idx], y_pred[idx], args.classes)

    naive_s = best_of(1, naive) * RESAMPLES / args.naive
    print(
        f"{args.images} test images, {args.classes} classes, {RESAMPLES} resamples: intervals {ours:.3f} s; "
        f"one classification_metrics {one * 1000:.1f} ms (intervals = {ours / one:.0f}x); "
        f"scikit-learn per resample {naive_s:.1f} s ({naive_s / ours:.0f}x the intervals)"
    )
    record(
        "intervals",
        images=args.images,
        classes=args.classes,
        resamples=RESAMPLES,
        seconds=round(ours, 4),
        per_metrics_call=round(ours / one, 1),
        sklearn_per_resample_seconds=round(naive_s, 2),
    )


if __name__ == "__main__":
    main()
