"""A report row's cells and a study's groups on hand-built trials, each expected string worked by hand."""

from __future__ import annotations

import math

from cvstudy.orchestrator.report.data import StudyData, TrialRow, effective_operations, fmt, group_key, grouped
from cvstudy.orchestrator.sweep.trials import Counts


def test_a_cell_is_the_mean_and_std_over_seeds_else_the_value_with_its_interval_else_the_value():
    row = TrialRow(
        "s", 1, "COMPLETE", 0.812345, {}, None, test={"accuracy": 0.61234, "macro_f1": 0.5, "macro_recall": 0.25},
        std={"macro_f1": 0.012345, "objective": 0.001}, intervals={"accuracy": (0.58321, 0.64123)},
    )  # fmt: skip
    assert row.cell("accuracy") == "0.612 [0.583, 0.641]"
    assert row.cell("macro_f1") == "0.5000 ± 0.0123"
    assert row.cell("macro_f1", digits=2) == "0.50 ± 0.01"
    assert row.cell("macro_recall") == "0.2500" and row.cell("macro_recall", 3) == "0.250"
    assert row.cell("objective") == "0.8123 ± 0.0010"  # the validation value, not a test metric
    assert row.cell("balanced_accuracy") == ""  # not logged
    row.value = None
    assert row.cell("objective") == ""


def test_a_rows_parameters_say_what_an_override_changed():
    row = TrialRow("s", 1, "COMPLETE", 0.5, {"lr": 0.000312345, "aug": "basic", "epochs": 3}, None)
    assert row.params_text == "lr=0.000312, aug=basic, epochs=3"
    row.changed = {"lr": (0.1, 0.01), "aug": ("strong", "none")}
    assert row.params_text == (
        "lr=0.000312, aug=basic, epochs=3 (changed by overrides: lr sampled 0.1 -> 0.01, aug sampled strong -> none)"
    )


def test_fmt_prints_floats_to_their_digits_and_nothing_for_none_or_nan():
    assert fmt(0.123456) == "0.1235" and fmt(0.123456, 2) == "0.12" and fmt(3.0, 1) == "3.0"
    assert fmt(7) == "7" and fmt("x") == "x"  # an integer or a text stays as it is
    assert fmt(None) == "" and fmt(math.nan) == ""


def _row(number, value, config):
    return TrialRow("s", number, "COMPLETE", value, {}, None, config=config)


def test_a_trials_group_is_its_model_weights_and_augmentation():
    assert group_key(_row(0, 0.5, {"model": "resnet50", "pretrained": "True", "aug": "basic", "lr": 1})) == (
        "resnet50", "True", "basic",
    )  # fmt: skip
    assert group_key(_row(0, 0.5, {})) == ("?", "?", "?")


def test_each_group_shows_its_best_trial_on_validation_in_group_order():
    rows = [
        _row(0, 0.9, {"model": "vit", "pretrained": True, "aug": "none"}),
        _row(1, 0.8, {"model": "resnet", "pretrained": False, "aug": "none"}),
        _row(2, 0.95, {"model": "resnet", "pretrained": False, "aug": "none"}),
        _row(3, 0.7, {"model": "vit", "pretrained": True, "aug": "none"}),
    ]
    ranked = sorted(rows, key=lambda r: -r.value)  # 2, 0, 1, 3
    data = StudyData("s", "acc", "maximize", rows, Counts(), [], None, ranked)
    assert [(key, r.number) for key, r in grouped(data)] == [
        (("resnet", False, "none"), 2),
        (("vit", True, "none"), 0),
    ]


def test_a_studys_views_of_its_rows():
    rows = [
        TrialRow("s", 0, "COMPLETE", 0.5, {}, None, pareto_optimal=True),
        TrialRow("s", 1, "COMPLETE", None, {}, None),  # complete without a value: not counted
        TrialRow("s", 2, "PRUNED", 0.9, {}, None),
        TrialRow("s", 3, "COMPLETE", 0.7, {}, None, seeds=3, pareto_optimal=True),
        TrialRow("s", 4, "COMPLETE", 0.6, {}, None),
    ]
    ranked = [rows[3], rows[4], rows[0]]
    data = StudyData("s", "acc", "maximize", rows, Counts(), [], None, ranked, objectives=[("acc", "maximize")])
    assert [r.number for r in data.complete] == [0, 3, 4]
    assert [r.number for r in data.pareto] == [3, 0]  # best first
    assert not data.single_seed and not data.multi_objective
    data.ranked = [rows[4], rows[0]]
    assert data.single_seed
    data.objectives.append(("seconds", "minimize"))
    assert data.multi_objective


def test_a_trials_operations_are_its_presets_resolved_and_its_own_values():
    assert effective_operations({"aug": "basic", "lr": 0.1, "model": "resnet50"}) == {
        "hflip": 0.5, "vflip": 0.0, "crop_pad": 4, "rotate": 0.0, "translate": 0.0, "scale": 0.0, "jitter": 0.0,
        "hue": 0.0, "trivial": False, "erase": 0.0,
    }  # fmt: skip
    assert effective_operations({"aug": "basic", "hflip": "0.25", "rotate": 10})["hflip"] == 0.25
    assert effective_operations({}) == {}  # a trial that never started
    assert effective_operations({"aug": "basic", "rotate": 500}) == {}  # outside its range: not a configuration
