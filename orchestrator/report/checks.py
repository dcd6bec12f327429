"""The checks a reviewer runs first, in the report's opening lines: what the runs' own set-up checks said
(``trainers.loop.reviewer_checks``: pretrained weights that did not land, an input stem that throws away
most of a small image), a test set too small to tell the leaders apart, and validation and test
disagreeing on the order of the top trials."""

from __future__ import annotations

from .data import StudyData

TOP = 5  # trials whose validation and test order is compared
LEAST_TRIALS = 3  # fewer ranked trials than this: no order to compare


def study_checks(s: StudyData) -> dict[str, str]:
    """``{check name: one line}`` for each check that fires on the study."""
    out = {}
    for name in sorted({name for r in s.ranked for name in r.checks}):
        hit = [r for r in s.ranked if name in r.checks]
        trials = ", ".join(str(r.number) for r in hit[:8]) + (", ..." if len(hit) > 8 else "")
        out[name] = f"{len(hit)} of {len(s.ranked)} complete trials (trial {trials}): {hit[0].checks[name]}"
    if (said := leaders_overlap(s)) is not None:
        out["small_test_set"] = said
    if (said := order_disagrees(s)) is not None:
        out["validation_test_order"] = said
    return out


def leaders_overlap(s: StudyData, metric: str = "balanced_accuracy") -> str | None:
    """The two best trials' test intervals overlap: this test set cannot rank them."""
    if len(s.ranked) < 2:
        return None
    first, second = s.ranked[0], s.ranked[1]
    if metric not in first.intervals or metric not in second.intervals:
        return None
    (a_low, a_high), (b_low, b_high) = first.intervals[metric], second.intervals[metric]
    if a_high < b_low or b_high < a_low:
        return None
    return (
        f"test set too small for the ranking: the two best trials' test {metric.replace('_', ' ')} intervals "
        f"overlap (trial {first.number} [{a_low:.3f}, {a_high:.3f}], trial {second.number} [{b_low:.3f}, "
        f"{b_high:.3f}]); `cvstudy compare {s.name}#{first.number} {s.name}#{second.number}` tests the pair on the "
        "same images, `cvstudy confirm` over seeds"
    )


def order_disagrees(s: StudyData, metric: str = "balanced_accuracy") -> str | None:
    """Kendall's tau between the validation objective and the test metric over the top trials is not
    positive: selecting on validation did not select on what test measures."""
    from scipy.stats import kendalltau  # deferred: 0.9 s to import, and only reports need it

    top = [r for r in s.ranked[:TOP] if r.value is not None and metric in r.test]
    if len(top) < LEAST_TRIALS:
        return None
    tau = float(kendalltau([r.value for r in top], [r.test[metric] for r in top]).statistic)
    if s.direction == "minimize":
        tau = -tau
    if not tau <= 0:  # a NaN (every value tied) says nothing either way
        return None
    return (
        f"validation and test disagree on the order of the top {len(top)} trials (Kendall's tau {tau:.2f} between "
        f"the validation objective and test {metric.replace('_', ' ')}): the leaderboard's order is not the test "
        "set's; read its top trials as tied"
    )
