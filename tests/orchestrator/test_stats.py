"""Intervals, paired tests, Holm's correction and Pareto ranks against worked examples and SciPy's
distributions."""

import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

from cvstudy.orchestrator.stats import (
    holm,
    interval_digits,
    mean_std,
    paired_over_seeds,
    pareto_front_2d,
    pareto_ranks,
    t_interval,
    with_holm,
    with_interval,
)


def test_t_interval_on_a_worked_example():
    """1..5: mean 3, sample std sqrt(2.5) = 1.5811; t(0.975, 4) = 2.7764; half-width 2.7764 * 1.5811 / sqrt 5
    = 1.9632."""
    iv = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (iv.mean, iv.n) == (3.0, 5)
    assert iv.std == pytest.approx(math.sqrt(2.5), abs=1e-12)
    assert iv.low == pytest.approx(3 - 1.9632, abs=1e-4) and iv.high == pytest.approx(3 + 1.9632, abs=1e-4)
    low, high = scipy_stats.t.interval(0.95, 4, loc=3.0, scale=math.sqrt(2.5) / math.sqrt(5))
    assert (iv.low, iv.high) == pytest.approx((low, high), abs=1e-12)


def test_t_interval_at_another_level_and_a_single_value():
    iv = t_interval([2.0, 4.0], level=0.9)  # mean 3, std sqrt 2, t(0.95, 1) = 6.3138; half 6.3138 * sqrt2 / sqrt2
    assert (iv.low, iv.high) == pytest.approx((3 - 6.3138, 3 + 6.3138), abs=1e-4)
    one = t_interval([0.7])
    assert (one.mean, one.std, one.low, one.high, one.n) == (0.7, 0.0, 0.7, 0.7, 1)
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))


def test_values_in_single_precision_are_averaged_in_double():
    """A metric from a float32 tensor: the standard library's mean and sample deviation of the same values,
    to 1e-15 (float32 arithmetic is ~4e-8 off)."""
    single = np.array([0.1, 0.7, 0.3, 0.65, 0.9], dtype=np.float32)
    as_double = [float(v) for v in single]
    mean, std = mean_std(single)
    assert mean == pytest.approx(statistics.fmean(as_double), abs=1e-15)
    assert std == pytest.approx(statistics.stdev(as_double), abs=1e-15)


def test_paired_t_test_on_a_worked_example():
    """Differences 1, 2, 3 over three seeds: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.4641 on 2 degrees of
    freedom, two-sided p = 2 * P(T > 3.4641) = 0.0742 (t table); the seed only one side has is ignored."""
    a = {0: 0.81, 1: 0.72, 2: 0.93, 9: 0.5}
    b = {0: 0.80, 1: 0.70, 2: 0.90}
    scaled_a = {k: v * 100 for k, v in a.items()}
    scaled_b = {k: v * 100 for k, v in b.items()}
    p = paired_over_seeds("A", scaled_a, "B", scaled_b)
    assert p.seeds == 3 and p.a == "A" and p.b == "B"
    assert p.difference.mean == pytest.approx(2.0, abs=1e-9) and p.difference.std == pytest.approx(1.0, abs=1e-9)
    assert p.p_value == pytest.approx(0.0742, abs=1e-4)
    assert p.p_value == pytest.approx(2 * scipy_stats.t.sf(2 / (1 / math.sqrt(3)), 2), abs=1e-9)
    assert not p.significant
    assert paired_over_seeds("A", {0: 1.0}, "B", {0: 0.5}) is None  # one pair: no test
    same = paired_over_seeds("A", {0: 0.5, 1: 0.6}, "B", {0: 0.5, 1: 0.6})
    assert same.p_value == 1.0 and not same.significant and same.difference.mean == 0.0


def test_a_constant_difference_has_no_spread_and_is_significant():
    """The same +1 on every seed: t = 1 / 0, infinite, so p = 0 (SciPy's answer); a reviewer reads it as
    the same gap each time, not as noise."""
    gap = paired_over_seeds("A", {0: 2.0, 1: 3.0, 2: 5.0}, "B", {0: 1.0, 1: 2.0, 2: 4.0})
    assert gap.p_value == 0.0 and gap.significant
    assert (gap.difference.mean, gap.difference.std, gap.difference.low, gap.difference.high) == (1.0, 0.0, 1.0, 1.0)
    assert scipy_stats.ttest_rel([2.0, 3.0, 5.0], [1.0, 2.0, 4.0]).pvalue == 0.0


def test_holm_on_a_worked_example():
    """Four tests, p = 0.01, 0.04, 0.03, 0.005 (Holm 1979's procedure as Wikipedia works it): sorted 0.005,
    0.01, 0.03, 0.04 are multiplied by 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04, and each kept at least the one
    before it: 0.02, 0.03, 0.06, 0.06. At 0.05 the first and fourth hypotheses are rejected, not the third,
    though its own p (0.03) is below 0.05."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-12)
    for ps in ([0.01, 0.04, 0.03, 0.005], [0.2, 0.001, 0.04, 0.04, 0.9], [0.5, 0.4]):
        assert holm(ps) == pytest.approx(list(multipletests(ps, method="holm")[1]), abs=1e-12)  # statsmodels
    assert holm([0.5, 0.4]) == [0.8, 0.8]  # 2 x 0.4; then 0.5, raised to 0.8
    assert holm([0.9, 0.6, 0.7]) == [1.0, 1.0, 1.0]  # 3 x 0.6 = 1.8, at most 1
    assert holm([0.02]) == [0.02] and holm([]) == []  # one test: nothing to correct
    # The family decides. A - B differs by 1.0, 1.6, 2.0 over three seeds: t = 5.28 on 2 df, p = 0.0341,
    # significant alone; beside A - C (p = 0.742) Holm doubles it to 0.0682: not significant.
    a = paired_over_seeds("A", {0: 11.0, 1: 11.6, 2: 12.0}, "B", {0: 10.0, 1: 10.0, 2: 10.0})
    c = paired_over_seeds("A", {0: 1.0, 1: 2.0, 2: 0.5}, "C", {0: 1.0, 1: 1.0, 2: 1.0})
    assert a.p_value == pytest.approx(scipy_stats.ttest_rel([11.0, 11.6, 12.0], [10.0] * 3).pvalue, abs=1e-12)
    assert a.p_value == pytest.approx(0.0341, abs=1e-4) and c.p_value == pytest.approx(0.742, abs=1e-3)
    assert a.significant and a.p_adjusted is None
    family = with_holm([a, c])
    assert [p.p_value for p in family] == [a.p_value, c.p_value]  # the raw values are kept beside
    assert family[0].p_adjusted == pytest.approx(2 * a.p_value, abs=1e-12)
    assert family[1].p_adjusted == pytest.approx(c.p_value, abs=1e-12)
    assert not family[0].significant and not family[1].significant


def test_pareto_ranks_on_a_textbook_set():
    """Minimising both: A(1,5), B(2,3), C(4,1) and B's twin F are the first front; D(3,4), beaten by B only,
    is the second; E(5,5), beaten by D, the third. Equal points share a rank."""
    points = [(1, 5), (2, 3), (4, 1), (3, 4), (5, 5), (2, 3)]
    assert pareto_ranks(points) == [0, 0, 0, 1, 2, 0]
    assert pareto_ranks([(3.0,), (1.0,), (2.0,), (1.0,)]) == [2, 0, 1, 0]
    assert pareto_ranks([]) == []


def test_the_two_coordinate_front_on_the_textbook_set():
    points = [(1, 5), (2, 3), (4, 1), (3, 4), (5, 5), (2, 3)]
    assert pareto_front_2d(points) == {0, 1, 2, 5}
    assert pareto_front_2d([(1, 2), (1, 1), (1, 1), (0, 3)]) == {1, 2, 3}  # same first coordinate: least second
    assert pareto_front_2d([]) == set()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=40))
def test_the_two_coordinate_front_is_the_general_sorts_first_rank(points):
    """On small integer grids (many ties and equal points), against Deb's sort, which the textbook set checks."""
    assert pareto_front_2d(points) == {i for i, rank in enumerate(pareto_ranks(points)) if rank == 0}


def test_an_interval_is_printed_to_two_significant_digits_of_its_half_width():
    """Half-widths worked by hand: 0.029 -> 3 decimals (0.029), 0.010 -> 3 (0.010), 0.3 -> 2 (0.30), 5 -> 2
    (never fewer), 1e-9 -> 6 (never more), none -> 6."""
    assert with_interval(0.655, 0.626, 0.684) == "0.655 [0.626, 0.684]"
    assert interval_digits(0.0, 0.02) == 3 and interval_digits(0.2, 0.8) == 2 and interval_digits(0.0, 10.0) == 2
    assert interval_digits(0.5, 0.5 + 2e-9) == 6 and interval_digits(0.5, 0.5) == 6
    assert with_interval(0.5, 0.5, 0.5) == "0.500000 [0.500000, 0.500000]"


def test_an_interval_prints_mean_std_and_n():
    assert t_interval([0.6, 0.8]).text(3) == "0.700 ± 0.141 (n=2)"
    assert t_interval([0.5]).text() == "0.500 ± 0.000 (n=1)"
