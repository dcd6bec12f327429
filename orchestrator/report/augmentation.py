"""Which augmentation operations helped: each operation's importance and the objective by its value,
on the effective values every complete trial trained with (a preset's operations included, so a study
that searched only ``aug: [basic, original]`` still says which of original's operations mattered)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import cast

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from cvstudy.trainers.config import AUG_OPS

from ..tracking.figures import plt, styled
from .data import StudyData, TrialRow, fmt
from .figures import importance_evaluator

MAX_LEVELS = 5  # an operation with more distinct values than this is shown in quartile bins


@dataclass(frozen=True)
class OperationEffect:
    op: str
    importance: float | None
    """Optuna's fANOVA importance of the operation's value (shares summing to 1 over the operations);
    None when there are too few trials to fit it."""
    levels: tuple[tuple[str, float, float, int], ...]
    """(value or value range, mean objective, best objective, trials), by increasing value."""


def operation_effects(data: StudyData) -> list[OperationEffect]:
    """One entry per operation whose value varied among the complete trials, most important first."""
    complete = [r for r in data.complete if r.augmentation]
    varying = [op for op in AUG_OPS if len({r.augmentation[op] for r in complete}) > 1]
    if not varying:
        return []
    importance = _importances(complete, varying)
    best = max if data.direction == "maximize" else min
    effects = [OperationEffect(op, importance.get(op), _levels(complete, op, best)) for op in varying]
    return sorted(effects, key=lambda e: (-(e.importance or 0.0), e.op))


def _value(r: TrialRow) -> float:
    """A complete trial's objective: ``StudyData.complete``, where these rows come from, holds only
    trials with one (an objective of 0 is 0)."""
    return cast(float, r.value)


def _importances(rows: list[TrialRow], ops: list[str]) -> dict[str, float]:
    dists: dict = {}
    for op in ops:
        values = [r.augmentation[op] for r in rows]
        if isinstance(values[0], bool):
            dists[op] = CategoricalDistribution([False, True])
        elif isinstance(values[0], int):
            dists[op] = IntDistribution(min(values), max(values))
        else:
            dists[op] = FloatDistribution(min(values), max(values))
    study = optuna.create_study()
    for r in rows:
        study.add_trial(
            optuna.trial.create_trial(
                params={op: r.augmentation[op] for op in ops}, distributions=dists, value=_value(r)
            )
        )
    try:
        return optuna.importance.get_param_importances(study, evaluator=importance_evaluator())
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}  # too few trials or too little variation to fit


def _levels(rows: list[TrialRow], op: str, best) -> tuple[tuple[str, float, float, int], ...]:
    values = sorted({r.augmentation[op] for r in rows})
    if len(values) <= MAX_LEVELS:  # each value its own level
        groups = [(fmt(v, 3), [r for r in rows if r.augmentation[op] == v]) for v in values]
    else:  # quartile bins: the first [lo, hi], the others (lo, hi]
        q = statistics.quantiles([r.augmentation[op] for r in rows], n=4, method="inclusive")
        edges = sorted({values[0], *q, values[-1]})
        groups = [
            (f"{fmt(lo, 3)}-{fmt(hi, 3)}", [r for r in rows if _in_bin(r.augmentation[op], lo, hi, closed=i == 0)])
            for i, (lo, hi) in enumerate(zip(edges, edges[1:]))
        ]
    return tuple(
        (label, statistics.fmean(v := [_value(r) for r in group]), best(v), len(v)) for label, group in groups if group
    )


def _in_bin(x, lo, hi, closed: bool) -> bool:
    return (lo <= x if closed else lo < x) and x <= hi


def operations_table(effects: list[OperationEffect], objective: str) -> tuple[list[str], list[list[str]]]:
    columns = ["operation", "importance", f"{objective} by value: mean (best, trials)"]
    rows = [
        [
            e.op,
            fmt(e.importance, 3) if e.importance is not None else "",
            "; ".join(f"{label}: {fmt(mean)} ({fmt(top)}, {n})" for label, mean, top, n in e.levels),
        ]
        for e in effects
    ]
    return columns, rows


@styled()
def operations_figure(data: StudyData, effects: list[OperationEffect]):
    """One panel per operation: each complete trial's objective against the operation's value."""
    complete = [r for r in data.complete if r.augmentation]
    cols = min(4, len(effects))
    rows = math.ceil(len(effects) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharey=True, layout="constrained"
    )
    for ax, e in zip(axes.flat, effects):
        ax.scatter([float(r.augmentation[e.op]) for r in complete], [r.value for r in complete], s=14, alpha=0.7)
        share = f" (importance {e.importance:.2f})" if e.importance is not None else ""
        ax.set_title(f"{e.op}{share}", fontsize=9)  # the x axis: the operation's value
    for ax in list(axes.flat)[len(effects) :]:
        ax.set_visible(False)
    axes[0][0].set_ylabel(data.objective, fontsize=8)
    fig.suptitle(f"{data.name}: objective by augmentation operation", fontsize=10)
    return fig
