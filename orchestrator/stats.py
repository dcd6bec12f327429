"""Statistics over seeds (mean and spread, t intervals, paired t-tests with SciPy, Holm's correction for a
family of tests) and Pareto ranks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


@dataclass(frozen=True)
class Interval:
    mean: float
    std: float
    n: int
    low: float
    high: float

    def text(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} (n={self.n})"


def t_interval(values: list[float], level: float = 0.95) -> Interval:
    """Mean, sample std and the t interval of the mean (a single value: an interval of width 0)."""
    from scipy import stats  # deferred: 0.9 s to import, and only reports and confirmations need it

    mean, std = mean_std(values)
    n = len(values)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n) if n > 1 else 0.0
    return Interval(mean, std, n, mean - half, mean + half)


def interval_digits(low: float, high: float, most: int = 6) -> int:
    """Decimals that give an interval's half-width two significant digits (a half-width of 0.029: 3,
    so ``0.655 [0.626, 0.684]``): finer digits are noise on this test set. At least 2, at most ``most``."""
    half = (high - low) / 2
    if not half > 0:
        return most
    return min(most, max(2, 1 - math.floor(math.log10(half))))


def with_interval(value: float, low: float, high: float) -> str:
    """``0.655 [0.626, 0.684]``: a value and its interval, rounded to what the interval supports."""
    d = interval_digits(low, high)
    return f"{value:.{d}f} [{low:.{d}f}, {high:.{d}f}]"


ALPHA = 0.05  # the family-wise error rate a family of comparisons is held to


@dataclass(frozen=True)
class Paired:
    a: str
    b: str
    seeds: int
    difference: Interval
    """a - b over paired seeds."""
    p_value: float
    """The test's own p-value, as if it were the only comparison."""
    test: str = "paired t-test"
    p_adjusted: float | None = None
    """Holm-adjusted over the family of comparisons printed with it (None: not adjusted)."""

    @property
    def significant(self) -> bool:
        """At ALPHA, family-wise when the p-value was adjusted."""
        return (self.p_value if self.p_adjusted is None else self.p_adjusted) < ALPHA


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest of m is multiplied by
    (m - i), i from 0, kept no smaller than the one before it and at most 1. Rejecting where the adjusted
    value is below alpha holds the family-wise error rate at alpha for any dependence between the tests."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def with_holm(comparisons: list[Paired]) -> list[Paired]:
    """The comparisons with their Holm-adjusted p-values over this family."""
    adjusted = holm([p.p_value for p in comparisons])
    return [replace(p, p_adjusted=q) for p, q in zip(comparisons, adjusted)]


def paired_over_seeds(a_label: str, a: dict[int, float], b_label: str, b: dict[int, float]) -> Paired | None:
    """Paired t-test of a - b over the seeds both have (None with fewer than 2 pairs)."""
    from scipy import stats  # deferred, as in t_interval

    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    x, y = [a[s] for s in common], [b[s] for s in common]
    diff = [u - v for u, v in zip(x, y)]
    if len(set(diff)) == 1:
        # Every pair differs by the same amount: the t statistic is 0 / 0 for no difference (p = 1) and
        # infinite for any other (p = 0, as SciPy gives it), without SciPy's precision warning.
        p = 1.0 if diff[0] == 0 else 0.0
    else:
        p = float(stats.ttest_rel(x, y).pvalue)
    return Paired(a_label, b_label, len(common), t_interval(diff), p)


def pareto_front_2d(losses: Sequence[tuple[float, float]]) -> set[int]:
    """The indices of ``pareto_ranks``' rank 0 for points of two coordinates, both minimised, in
    O(n log n): sorted by the first coordinate, a point is on the front when it has the least second
    coordinate among the points of its first coordinate, and less than every point of a smaller first
    coordinate has (equal points share the front). The cost section's front over thousands of trials,
    where the general sort is quadratic (bench/scale.py)."""
    order = sorted(range(len(losses)), key=lambda i: losses[i])
    front: set[int] = set()
    best_before = float("inf")  # the least second coordinate among smaller first coordinates
    start = 0
    while start < len(order):
        end = start
        while end < len(order) and losses[order[end]][0] == losses[order[start]][0]:
            end += 1
        least = losses[order[start]][1]  # sorted: the group's least second coordinate comes first
        if least < best_before:
            front.update(i for i in order[start:end] if losses[i][1] == least)
        best_before = min(best_before, least)
        start = end
    return front


def pareto_ranks(losses: Sequence[Sequence[float]]) -> list[int]:
    """Each point's non-domination rank, every coordinate minimised: 0 for the Pareto front, 1 for the
    front of what remains without it, and so on. A point dominates another when it is no worse in every
    coordinate and better in one, so equal points share a rank. Deb's fast non-dominated sort, O(m n^2)
    for n points of m coordinates (Optuna's own is private); one coordinate is a plain sort."""
    n = len(losses)
    if n and len(losses[0]) == 1:
        index = {v: i for i, v in enumerate(sorted({p[0] for p in losses}))}
        return [index[p[0]] for p in losses]
    beaten_by = [0] * n  # how many points dominate point i
    beats: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            a, b = losses[i], losses[j]
            if all(x <= y for x, y in zip(a, b)) and a != b:
                beats[i].append(j)
                beaten_by[j] += 1
            elif all(y <= x for x, y in zip(a, b)) and a != b:
                beats[j].append(i)
                beaten_by[i] += 1
    ranks, front, rank = [0] * n, [i for i in range(n) if beaten_by[i] == 0], 0
    while front:
        following = []
        for i in front:
            ranks[i] = rank
            for j in beats[i]:
                beaten_by[j] -= 1
                if beaten_by[j] == 0:
                    following.append(j)
        front, rank = following, rank + 1
    return ranks
