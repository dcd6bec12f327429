"""Which augmentation operations helped, on hand-built trials: each operation's levels (each value, or
quartile bins worked out by hand), their mean and best objective, and the table's text."""

from __future__ import annotations

import pytest

from cvstudy.orchestrator.report.augmentation import operation_effects, operations_table
from cvstudy.orchestrator.report.data import StudyData, TrialRow, effective_operations
from cvstudy.orchestrator.sweep.trials import Counts

NONE = effective_operations({"aug": "none"})


def _study(direction="maximize", n=8) -> StudyData:
    """Trial i: rotate 5 i degrees, hflip 0 or 0.5 (odd trials), objective 0.5 + 0.3 (mirrored) + 0.0001 x
    rotate: the mirror moves it, the rotation barely."""
    rows = []
    for i in range(n):
        ops = {**NONE, "rotate": 5.0 * i, "hflip": 0.5 * (i % 2)}
        value = round(0.5 + 0.3 * (i % 2) + 0.0001 * 5 * i, 6)
        rows.append(TrialRow("s", i, "COMPLETE", value, {}, None, augmentation=ops))
    rows.append(TrialRow("s", n, "COMPLETE", 0.99, {}, None))  # never started: no operations recorded
    rows.append(TrialRow("s", n + 1, "PRUNED", 0.99, {}, None, augmentation={**NONE, "rotate": 90.0}))
    return StudyData("s", "val_acc", direction, rows, Counts(), [], None)


def same_levels(levels, expected) -> bool:
    """Labels and counts exactly, means and bests within float rounding (1e-9)."""
    return len(levels) == len(expected) and all(
        (label, n) == (e_label, e_n) and (mean, top) == pytest.approx((e_mean, e_top), abs=1e-9)
        for (label, mean, top, n), (e_label, e_mean, e_top, e_n) in zip(levels, expected)
    )


def test_each_varying_operation_has_its_levels_most_important_first():
    """hflip: 0 (trials 0, 2, 4, 6: 0.5, 0.501, 0.502, 0.503) and 0.5 (0.8005 ... 0.8035). rotate, 8
    values: inclusive quartiles of 0, 5, ..., 35 at 8.75, 17.5, 26.25, so bins [0, 8.75] (0, 5),
    (8.75, 17.5] (10, 15), (17.5, 26.25] (20, 25), (26.25, 35] (30, 35)."""
    hflip, rotate = operation_effects(_study())
    assert (hflip.op, rotate.op) == ("hflip", "rotate")
    assert same_levels(hflip.levels, (("0.000", 0.5015, 0.503, 4), ("0.500", 0.802, 0.8035, 4)))
    assert same_levels(
        rotate.levels,
        (
            ("0.000-8.750", 0.65025, 0.8005, 2),
            ("8.750-17.500", 0.65125, 0.8015, 2),
            ("17.500-26.250", 0.65225, 0.8025, 2),
            ("26.250-35.000", 0.65325, 0.8035, 2),
        ),
    )
    assert hflip.importance > 0.9 and hflip.importance + rotate.importance == pytest.approx(1.0)


def test_a_minimised_objectives_best_is_its_least():
    hflip, _ = operation_effects(_study("minimize"))
    assert same_levels(hflip.levels, (("0.000", 0.5015, 0.5, 4), ("0.500", 0.802, 0.8005, 4)))


def test_the_operations_table_says_each_level_mean_best_and_count():
    effects = operation_effects(_study())
    columns, rows = operations_table(effects, "val_acc")
    assert columns == ["operation", "importance", "val_acc by value: mean (best, trials)"]
    assert rows[0] == [
        "hflip",
        f"{effects[0].importance:.3f}",
        "0.000: 0.5015 (0.5030, 4); 0.500: 0.8020 (0.8035, 4)",
    ]
    assert rows[1][2].startswith("0.000-8.750: 0.6502 (0.8005, 2); 8.750-17.500: 0.6512 (0.8015, 2); ")


def test_an_operation_whose_importance_could_not_be_fitted_has_an_empty_cell():
    columns, rows = operations_table(
        [type(operation_effects(_study())[0])("erase", None, (("0.000", 0.5, 0.5, 1),))], "val_acc"
    )
    assert rows == [["erase", "", "0.000: 0.5000 (0.5000, 1)"]]


def test_no_operation_varied_no_effects():
    data = _study()
    for r in data.rows:
        if r.augmentation:
            r.augmentation = dict(NONE)
    assert operation_effects(data) == []


def test_five_values_are_five_levels_and_a_value_on_a_bins_edge_is_counted_once():
    """rotate 0, 10, 20, 30, 40 (five values): a level each. rotate 0 .. 8 (nine): inclusive quartiles 2,
    4, 6, so bins [0, 2] (0, 1, 2), (2, 4] (3, 4), (4, 6] (5, 6), (6, 8] (7, 8): 3, 2, 2, 2 trials."""

    def study(rotations):
        rows = [
            TrialRow("s", i, "COMPLETE", 0.5 + i / 100, {}, None, augmentation={**NONE, "rotate": float(v)})
            for i, v in enumerate(rotations)
        ]
        return StudyData("s", "val_acc", "maximize", rows, Counts(), [], None)

    (five,) = operation_effects(study([0, 10, 20, 30, 40]))
    assert [label for label, *_ in five.levels] == ["0.000", "10.000", "20.000", "30.000", "40.000"]
    (nine,) = operation_effects(study(range(9)))
    assert [(label, n) for label, _, _, n in nine.levels] == [
        ("0.000-2.000", 3), ("2.000-4.000", 2), ("4.000-6.000", 2), ("6.000-8.000", 2),
    ]  # fmt: skip


def test_trivial_augment_on_and_off_is_an_operation_with_two_levels_and_an_importance():
    rows = [
        TrialRow("s", i, "COMPLETE", 0.8 if i % 2 else 0.5, {}, None,
                 augmentation={**NONE, "trivial": bool(i % 2), "rotate": float(i)})
        for i in range(8)
    ]  # fmt: skip
    effects = operation_effects(StudyData("s", "val_acc", "maximize", rows, Counts(), [], None))
    trivial = next(e for e in effects if e.op == "trivial")
    assert effects[0] is trivial and trivial.importance > 0.9
    assert [(label, mean, n) for label, mean, _, n in trivial.levels] == [("False", 0.5, 4), ("True", 0.8, 4)]


def test_an_objective_of_zero_counts_as_zero():
    """A complete trial whose objective is 0.0 (a loss of 0, an accuracy of 0) is averaged as 0."""
    rows = [
        TrialRow("s", i, "COMPLETE", value, {}, None, augmentation={**NONE, "hflip": hflip})
        for i, (value, hflip) in enumerate([(0.0, 0.0), (0.5, 0.0), (0.25, 0.5), (0.75, 0.5)])
    ]
    (hflip,) = operation_effects(StudyData("s", "val_loss", "minimize", rows, Counts(), [], None))
    assert same_levels(hflip.levels, (("0.000", 0.25, 0.0, 2), ("0.500", 0.5, 0.25, 2)))
