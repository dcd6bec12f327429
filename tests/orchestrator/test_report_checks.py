"""The report's opening checks on hand-built studies: each line whole, each threshold on both sides
(Kendall's tau by SciPy, worked by hand where it is 0)."""

from __future__ import annotations

import pytest
from scipy.stats import kendalltau

from cvstudy.orchestrator.report.checks import leaders_overlap, order_disagrees, study_checks
from cvstudy.orchestrator.report.data import StudyData, TrialRow


def _row(number, value=0.5, test_bal=0.5, interval=None, checks=None):
    intervals = {"balanced_accuracy": interval} if interval else {}
    return TrialRow(
        "s", number, "COMPLETE", value, {}, "r", test={"balanced_accuracy": test_bal}, intervals=intervals,
        checks=checks or {},
    )  # fmt: skip


def _study(rows, direction="maximize"):
    return StudyData("s", "val_balanced_accuracy", direction, rows, None, [], None, rows)


def test_a_runs_set_up_check_is_said_once_for_the_study_with_the_trials_it_hit():
    """Nine of ten trials say the same thing: the first eight are named, then an ellipsis; the line is
    the first hit's own. Checks come in name order."""
    rows = [_row(n, checks={"small_input": f"small input (trial {n})"} if n != 4 else {}) for n in range(10)]
    rows[2].checks["no_weights"] = "weights missing"
    assert study_checks(_study(rows)) == {
        "no_weights": "1 of 10 complete trials (trial 2): weights missing",
        "small_input": "9 of 10 complete trials (trial 0, 1, 2, 3, 5, 6, 7, 8, ...): small input (trial 0)",
    }
    assert list(study_checks(_study(rows))) == ["no_weights", "small_input"]
    eight = [_row(n, checks={"small_input": "small"}) for n in range(8)]
    assert study_checks(_study(eight))["small_input"] == "8 of 8 complete trials (trial 0, 1, 2, 3, 4, 5, 6, 7): small"


def test_study_checks_include_the_overlap_and_the_order_lines_under_their_names():
    rows = [_row(0, 0.9, 0.6, (0.55, 0.65)), _row(1, 0.8, 0.62, (0.57, 0.67)), _row(2, 0.7, 0.7)]
    said = study_checks(_study(rows))
    overlap, order = leaders_overlap(_study(rows)), order_disagrees(_study(rows))
    assert said == {"small_test_set": overlap, "validation_test_order": order}
    assert all(said.values())


def test_the_overlap_line_is_whole_and_touching_intervals_overlap():
    said = leaders_overlap(_study([_row(3, 0.9, 0.7, (0.66, 0.74)), _row(5, 0.8, 0.68, (0.74, 0.78))]))
    assert said == (
        "test set too small for the ranking: the two best trials' test balanced accuracy intervals overlap (trial "
        "3 [0.660, 0.740], trial 5 [0.740, 0.780]); `cvstudy compare s#3 s#5` tests the pair on the same images, "
        "`cvstudy confirm` over seeds"
    )
    below = leaders_overlap(_study([_row(3, 0.9, 0.7, (0.66, 0.74)), _row(5, 0.8, 0.6, (0.58, 0.66))]))
    assert below is not None and "trial 5 [0.580, 0.660]" in below  # the second's top touches the first's bottom
    assert leaders_overlap(_study([_row(3, 0.9, 0.7, (0.66, 0.74)), _row(5, 0.8, 0.6, (0.58, 0.6599))])) is None
    assert leaders_overlap(_study([_row(3, 0.9, 0.7, (0.66, 0.74)), _row(5, 0.8, 0.8, (0.7401, 0.78))])) is None


def test_no_overlap_is_said_without_two_trials_with_intervals():
    assert leaders_overlap(_study([_row(3, 0.9, 0.7, (0.66, 0.74))])) is None
    assert leaders_overlap(_study([_row(3, 0.9, 0.7, (0.66, 0.74)), _row(5, 0.8, 0.68)])) is None
    assert leaders_overlap(_study([_row(3, 0.9, 0.7), _row(5, 0.8, 0.68, (0.64, 0.72))])) is None
    overlapping = _study([_row(3, 0.9, 0.7, (0.66, 0.74)), _row(5, 0.8, 0.68, (0.64, 0.72))])
    assert leaders_overlap(overlapping, metric="accuracy") is None  # no accuracy intervals
    assert leaders_overlap(overlapping) is not None


def test_the_order_line_is_whole_and_a_tau_of_zero_is_flagged():
    """Validation 0.9 > 0.8 > 0.7 > 0.6, test 0.6, 0.7, 0.5, 0.65: of 6 pairs, 3 concordant ((0,2), (1,2),
    (1,3)), 3 not: tau 0, flagged (no agreement is not agreement)."""
    values, test = [0.9, 0.8, 0.7, 0.6], [0.6, 0.7, 0.5, 0.65]
    assert kendalltau(values, test).statistic == pytest.approx(0.0, abs=1e-12)
    said = order_disagrees(_study([_row(i, v, t) for i, (v, t) in enumerate(zip(values, test))]))
    assert said == (
        "validation and test disagree on the order of the top 4 trials (Kendall's tau 0.00 between the "
        "validation objective and test balanced accuracy): the leaderboard's order is not the test set's; read "
        "its top trials as tied"
    )


def test_the_order_is_compared_over_the_top_five_trials_with_a_value_and_a_test_metric():
    agreeing = [_row(i, 0.9 - i / 10, 0.8 - i / 10) for i in range(5)]
    # a sixth trial that reverses everything is outside the top five
    assert order_disagrees(_study([*agreeing, _row(5, 0.3, 0.99)])) is None
    # a trial without a value, or without the metric, is left out: two trials left are too few
    rows = [_row(0, 0.9, 0.5), _row(1, 0.8, 0.6), _row(2, None, 0.7), _row(3, 0.6, 0.7)]
    rows[3].test = {}
    assert order_disagrees(_study(rows)) is None
    rows = [_row(0, 0.9, 0.5), _row(1, 0.8, 0.6), _row(2, 0.7, 0.7)]  # three, reversed: tau -1
    assert "top 3 trials (Kendall's tau -1.00" in order_disagrees(_study(rows))
    assert order_disagrees(_study(rows), metric="accuracy") is None  # no trial has test accuracy


def test_a_minimised_objective_reads_a_rising_test_metric_as_disagreement():
    rows = [_row(0, 0.1, 0.5), _row(1, 0.2, 0.6), _row(2, 0.3, 0.7)]  # losses: the best first, test rising
    said = order_disagrees(_study(rows, "minimize"))
    assert said is not None and "Kendall's tau -1.00" in said
    assert order_disagrees(_study(rows, "maximize")) is None  # maximised, the same numbers agree (tau 1)


def test_every_value_tied_says_nothing():
    rows = [_row(i, 0.5, 0.5 + i / 10) for i in range(3)]  # tau is NaN
    assert order_disagrees(_study(rows)) is None
