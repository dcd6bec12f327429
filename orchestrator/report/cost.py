"""Cost beside accuracy: the objective against each cost metric with the Pareto front marked, the sweep's
best-so-far against the device time it had spent (time to accuracy), and what pruning saved.

Device time is what the runs logged (``train_device_seconds``, or their epochs' ``epoch_seconds`` for a
pruned trial, which ends before the final metrics); nothing here is timed by the report."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..stats import pareto_front_2d
from ..tracking.figures import plt, styled
from .data import StudyData, fmt

# (cost metric, axis label, whether less is better, scale to the axis unit)
COST_AXES = (
    ("gflops", "forward GFLOPs per image", True, 1.0),
    ("inference_images_per_second", "inference images / s (batch 32)", False, 1.0),
    ("train_device_seconds", "training device-minutes", True, 1 / 60),
)


def pareto_front(points: list[tuple[float, float]], maximize_value: bool, minimize_cost: bool) -> set[int]:
    """Indices of the points no other point beats on both value and cost (ties do not dominate)."""
    return pareto_front_2d([(-v if maximize_value else v, c if minimize_cost else -c) for v, c in points])


@styled()
def cost_figure(data: StudyData):
    """One panel per cost metric: each complete trial's objective against it, the Pareto front joined."""
    rows = data.complete
    axes_shown = [a for a in COST_AXES if any(a[0] in r.cost for r in rows)]
    if not rows or not axes_shown:
        return None
    fig, axes = plt.subplots(1, len(axes_shown), figsize=(4.2 * len(axes_shown), 3.2), squeeze=False, sharey=True)
    maximize = data.direction == "maximize"
    for ax, (metric, label, less_is_better, scale) in zip(axes[0], axes_shown):
        have = [r for r in rows if metric in r.cost]
        points = [(float(r.value or 0.0), r.cost[metric] * scale) for r in have]
        front = sorted(pareto_front(points, maximize, less_is_better), key=lambda i: points[i][1])
        ax.scatter([p[1] for p in points], [p[0] for p in points], s=16, color="#9aa8bd", label="trial")
        ax.plot([points[i][1] for i in front], [points[i][0] for i in front], "o-", color="#d8553b", ms=5,
                label="Pareto front")  # fmt: skip
        for i in front:
            ax.annotate(str(have[i].number), (points[i][1], points[i][0]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
        ax.set_xlabel(label, fontsize=8)
    axes[0][0].set_ylabel(data.objective, fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        f"{data.name}: {data.objective} against cost (complete trials; numbers: trials on the front)", fontsize=9
    )
    return fig


def time_to_accuracy(data: StudyData) -> list[tuple[float, float, int]]:
    """(cumulative device minutes, best objective so far, trial number) after each finished trial, in the
    order the trials finished; every trial's device time counts, pruned and failed ones included."""
    done = sorted((r for r in data.rows if r.finished is not None and r.device_seconds), key=lambda r: r.finished or 0)
    maximize = data.direction == "maximize"
    curve, spent, best = [], 0.0, None
    for r in done:
        spent += r.device_seconds or 0.0
        if r.state == "COMPLETE" and r.value is not None:
            best = r.value if best is None else (max(best, r.value) if maximize else min(best, r.value))
        if best is not None:
            curve.append((spent / 60, best, r.number))
    return curve


@styled()
def time_figure(data: StudyData):
    curve = time_to_accuracy(data)
    if not curve:
        return None
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.step([c[0] for c in curve], [c[1] for c in curve], where="post", color="#3b7dd8")
    ax.scatter([c[0] for c in curve], [c[1] for c in curve], s=10, color="#3b7dd8")
    ax.set_xlabel("device-minutes spent by the sweep (training and validation)", fontsize=8)
    ax.set_ylabel(f"best {data.objective} so far", fontsize=8)
    ax.set_title(f"{data.name}: time to accuracy", fontsize=9)
    return fig


@dataclass(frozen=True)
class PruningSavings:
    pruned: int
    """Pruned trials."""
    epochs_trained: int
    """Epochs the pruned trials trained."""
    epochs_saved: int
    """Epochs they would have trained more, run to the end."""
    seconds_per_epoch: float
    """Mean device seconds per epoch of the complete trials (over their seeds), the estimate's rate."""
    seconds_saved: float
    seconds_spent: float
    """Device seconds the whole study trained, every trial counted."""


def pruning_savings(data: StudyData) -> PruningSavings | None:
    """What pruning saved: the pruned trials' remaining epochs, at the complete trials' per-epoch rate."""
    pruned = [r for r in data.rows if r.state == "PRUNED" and r.epochs is not None]
    rates = [
        r.device_seconds / r.epochs for r in data.complete if r.device_seconds and r.epochs
    ]  # device seconds per epoch, all seeds of the trial
    if not pruned or not rates:
        return None
    planned = [int(float(r.config.get("epochs") or 0)) for r in pruned]  # none recorded: nothing saved
    saved = sum(max(0, p - (r.epochs or 0)) for p, r in zip(planned, pruned))
    rate = statistics.fmean(rates)
    spent = sum(r.device_seconds or 0.0 for r in data.rows)
    return PruningSavings(len(pruned), sum(r.epochs or 0 for r in pruned), saved, rate, saved * rate, spent)


def cost_lines(data: StudyData) -> list[str]:
    """The cost section's sentences: device time spent, pruning's savings, the cheapest front trials."""
    lines = []
    spent = sum(r.device_seconds or 0.0 for r in data.rows)
    if spent:
        lines.append(f"The study's trials trained and validated for {fmt(spent / 60, 1)} device-minutes in all.")
    savings = pruning_savings(data)
    if savings:
        share = savings.seconds_saved / (savings.seconds_saved + savings.seconds_spent)
        lines.append(
            f"Pruning stopped {savings.pruned} trials after {savings.epochs_trained} epochs in all; run to the "
            f"end they would have trained {savings.epochs_saved} more epochs, about "
            f"{fmt(savings.seconds_saved / 60, 1)} device-minutes at the complete trials' "
            f"{fmt(savings.seconds_per_epoch, 1)} s per epoch ({fmt(100 * share, 0)} % of the study's total "
            "without pruning)."
        )
    curve = time_to_accuracy(data)
    if curve:
        final = curve[-1][1]
        first = next(c for c in curve if c[1] == final)
        lines.append(
            f"The best {data.objective} ({fmt(final)}) was reached after {fmt(first[0], 1)} of "
            f"{fmt(curve[-1][0], 1)} device-minutes (trial {first[2]})."
        )
    return lines
