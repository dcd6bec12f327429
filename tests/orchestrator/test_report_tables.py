"""The report's tables on hand-built trials: every cell and sentence worked out by hand (the intervals
by SciPy), so that a column swapped, a comparison matched to the wrong trial or a sentence cut short
fails without a sweep. tests/orchestrator/test_report_numbers.py checks the same tables end to end
against what real runs logged."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from cvstudy.orchestrator.report.confirmation import Confirmed, ConfirmSummary
from cvstudy.orchestrator.report.data import StudyData, TrialRow
from cvstudy.orchestrator.report.tables import (
    LEADER_COLUMNS,
    confirmation_rows,
    data_labels,
    data_warning,
    group_rows,
    html_table,
    interval_line,
    leader_cells,
    md_table,
    single_seed_line,
    summary_table,
)
from cvstudy.orchestrator.stats import Interval, Paired
from cvstudy.orchestrator.sweep.trials import Counts
from cvstudy.orchestrator.tracking.predictions import Comparison

TEST = {  # five test metrics, each its own value: a column swapped shows
    "accuracy": 0.61234,
    "balanced_accuracy": 0.59876,
    "macro_precision": 0.5,
    "macro_recall": 0.45678,
    "macro_f1": 0.40001,
}


def test_an_html_table_escapes_every_header_and_cell():
    assert html_table(["a<b", "c"], [[1, "x&y"], [None, 2.5]]) == (
        "<table><thead><tr><th>a&lt;b</th><th>c</th></tr></thead><tbody>"
        "<tr><td>1</td><td>x&amp;y</td></tr><tr><td>None</td><td>2.5</td></tr></tbody></table>"
    )


def test_a_markdown_table_has_a_rule_per_column_and_no_cell_breaks_a_row():
    assert md_table(["a", "b", "c"], [["x|y", 1, None]]) == "| a | b | c |\n|---|---|---|\n| x/y | 1 | None |"


def test_data_labels_and_their_warning_name_each_dataset():
    one, other = ("t1", "v1", "s1"), ("t2", "v2", "s2")

    def row(number, data):
        return TrialRow("s", number, "COMPLETE", 0.5, {}, None, data=data)

    assert data_labels([row(0, one), row(1, one)]) == {}
    labels = data_labels([row(0, other), row(1, one), row(2, other)])
    assert labels == {one: "A", other: "B"}
    assert data_warning(labels) == (
        "These runs trained or were tested on 2 different datasets (column 'data'; digests differ): their numbers "
        "are not directly comparable. A = train t1, val v1, test s1; B = train t2, val v2, test s2"
    )


def _study(rows, **kw) -> StudyData:
    return StudyData("my study", "balanced accuracy", "maximize", rows, Counts(), [], None, **kw)


def test_the_single_seed_line_says_how_to_confirm_with_the_study_name_quoted():
    opening = (
        "Single-seed ranking: each trial of my study trained one seed, and seeds alone move test metrics by "
        "several points on small data; read gaps smaller than that as ties."
    )
    assert single_seed_line(_study([])) == (
        opening + " `cvstudy confirm 'my study' --top 3 --seeds 5` retrains the best with fresh seeds; a study's "
        "`repeats: K` averages K seeds per trial."
    )
    confirmed = _study([], confirmation=ConfirmSummary("my study", [], None, []))
    assert single_seed_line(confirmed) == opening + " The confirmation below retrains its best with fresh seeds."


BRACKETS = (
    "Brackets: the 95 % interval of a test metric over the test images (Wilson's for accuracy, a bootstrap "
    "within each class for the others); each number is rounded to what its interval supports."
)


def test_the_interval_line_names_the_single_seed_trials_that_have_no_intervals():
    def row(number, seeds=1, test=TEST, intervals=None):
        return TrialRow("s", number, "COMPLETE", 0.5, {}, None, test=test, seeds=seeds, intervals=intervals or {})

    with_intervals = row(0, intervals={"accuracy": (0.5, 0.7)})
    assert interval_line([]) is None
    assert interval_line([row(1, seeds=3), row(2, test={})]) is None  # no single-seed row with test metrics
    assert interval_line([with_intervals, row(1, seeds=3)]) == BRACKETS
    assert interval_line([with_intervals, row(3), row(4, seeds=2)]) == BRACKETS + (
        " 1 of 2 trials were logged before cvstudy recorded these intervals and show none (trial 3)."
    )
    assert interval_line([row(n) for n in range(12)]) == BRACKETS + (
        " 12 of 12 trials were logged before cvstudy recorded these intervals and show none (trials 0, 1, 2, 3, "
        "4, 5, 6, 7, 8, 9, ...)."
    )
    assert interval_line([row(n) for n in range(10)]).endswith("(trials 0, 1, 2, 3, 4, 5, 6, 7, 8, 9).")


def test_a_leaderboard_row_holds_each_test_metric_in_its_own_column():
    """Accuracy with its interval (half-width 0.029: three decimals), the rest to four; then epochs,
    seconds to one decimal, the run; the data label last when runs differ in data."""
    row = TrialRow(
        "s", 7, "COMPLETE", 0.81234, {"lr": 0.00123456, "aug": "basic"}, "run-7", test=TEST, epochs=4,
        seconds=12.345, intervals={"accuracy": (0.58321, 0.64123)}, data=("t", "v", "s"),
    )  # fmt: skip
    cells = leader_cells(row)
    assert dict(zip(LEADER_COLUMNS, cells)) == {
        "study": "s",
        "trial": "7",
        "state": "COMPLETE",
        "params": "lr=0.00123, aug=basic",
        "seeds": "1",
        "objective": "0.8123",
        "test acc": "0.612 [0.583, 0.641]",
        "test bal-acc": "0.5988",
        "macro P": "0.5000",
        "macro R": "0.4568",
        "macro F1": "0.4000",
        "epochs": "4",
        "seconds": "12.3",
        "MLflow run": "run-7",
    }
    assert len(cells) == len(LEADER_COLUMNS)
    assert leader_cells(row, {("t", "v", "s"): "B", ("x", "y", "z"): "A"}) == cells + ["B"]
    assert leader_cells(row, {("x", "y", "z"): "A", ("p", "q", "r"): "B"})[-1] == "?"
    seeds = TrialRow("s", 8, "COMPLETE", 0.7, {}, None, test={"accuracy": 0.5}, seeds=3, std={"accuracy": 0.01})
    assert dict(zip(LEADER_COLUMNS, leader_cells(seeds))) == {
        "study": "s", "trial": "8", "state": "COMPLETE", "params": "", "seeds": "3", "objective": "0.7000",
        "test acc": "0.5000 ± 0.0100", "test bal-acc": "", "macro P": "", "macro R": "", "macro F1": "",
        "epochs": "", "seconds": "", "MLflow run": "",
    }  # fmt: skip


def _comparison(p, difference, low, high) -> Comparison:
    """The study's best (A) against a group's trial (B): a - b and its interval, and McNemar's p (the group
    table reads nothing else, so the sides are left empty)."""
    return Comparison(None, None, 10, 0, 0, p, {"balanced_accuracy": (difference, low, high)}, {})


def _grouped_study() -> StudyData:
    """Five complete trials in four model x pretrained x augmentation groups, ranked on validation
    2, 0, 4, 1, 3 (trial 0 shares trial 2's group, so that group shows trial 2)."""

    def row(number, model, pretrained, aug, scale):
        test = {k: round(v * scale, 5) for k, v in TEST.items()}
        config = {"model": model, "pretrained": pretrained, "aug": aug}
        return TrialRow("my study", number, "COMPLETE", scale, {}, f"run-{number}", test=test, config=config)

    rows = [
        row(0, "resnet50", False, "basic", 0.9),
        row(1, "vit_s16", True, "none", 0.7),
        row(2, "resnet50", False, "basic", 1.0),
        row(3, "resnet50", True, "none", 0.6),
        row(4, "vit_s16", False, "basic", 0.8),
    ]
    by_number = {r.number: r for r in rows}
    return _study(rows, ranked=[by_number[n] for n in (2, 0, 4, 1, 3)], reproduces="dsba-cv-study")


def test_the_grouped_table_holds_each_groups_best_trial_and_its_test_metrics():
    columns, rows = group_rows(_grouped_study())
    assert columns == [
        "model", "pretrained", "augmentation", "trial", "seeds", "Accuracy", "Precision", "Recall", "F1 (macro)",
        "balanced acc", "published Acc", "published P", "published R", "published F1*",
    ]  # fmt: skip
    published = {  # the original study's README, by model and weights
        ("resnet50", False): ["0.6800", "0.7200", "0.6815", "0.7002"],
        ("resnet50", True): ["0.6800", "0.7261", "0.6809", "0.7028"],
        ("vit_s16", False): ["0.4900", "0.5777", "0.4932", "0.5321"],
        ("vit_s16", True): ["0.9800", "0.9824", "0.9821", "0.9822"],
    }
    # sorted by group: (resnet50, False, basic) trial 2; (resnet50, True, none) 3; (vit_s16, False, basic) 4; ...
    pub = published
    assert rows == [
        ["resnet50", False, "basic", 2, 1, "0.6123", "0.5000", "0.4568", "0.4000", "0.5988", *pub["resnet50", False]],
        ["resnet50", True, "none", 3, 1, "0.3674", "0.3000", "0.2741", "0.2400", "0.3593", *pub["resnet50", True]],
        ["vit_s16", False, "basic", 4, 1, "0.4899", "0.4000", "0.3654", "0.3200", "0.4790", *pub["vit_s16", False]],
        ["vit_s16", True, "none", 1, 1, "0.4286", "0.3500", "0.3197", "0.2800", "0.4191", *pub["vit_s16", True]],
    ]  # fmt: skip


def test_the_published_columns_are_empty_for_a_model_the_published_table_lacks():
    data = _grouped_study()
    data.ranked[2].config["model"] = "convnext"  # trial 4
    columns, rows = group_rows(data)
    assert len(columns) == 14 and [r[10:] for r in rows if r[3] == 4] == [["", "", "", ""]]
    data.reproduces = ""
    columns, rows = group_rows(data)
    assert "published Acc" not in columns and all(len(r) == 10 for r in rows)


def test_each_group_is_compared_with_the_studys_best_by_its_own_p_value_holm_adjusted():
    """Trial 3 against the best: McNemar p 0.01; trial 4: 0.04; trial 1: no saved predictions. Holm over
    the two: 2 x 0.01 = 0.02, then max(0.02, 1 x 0.04) = 0.04. A's lead of 0.1 [0.05, 0.15] over trial 3
    reads as trial 3's -0.100 [-0.150, -0.050] (a half-width of 0.05: three decimals; trial 4's 0.005: four)."""
    data = _grouped_study()
    data.reproduces = ""
    data.versus_best = {3: _comparison(0.01, 0.1, 0.05, 0.15), 4: _comparison(0.04, 0.025, 0.02, 0.03), 1: None}
    columns, rows = group_rows(data)
    assert columns[10:] == ["bal-acc - best's", "McNemar p", "McNemar p (Holm)"]
    assert {r[3]: r[10:] for r in rows} == {
        2: ["(the study's best)", "", ""],
        3: ["-0.100 [-0.150, -0.050]", "0.01", "0.02"],
        4: ["-0.0250 [-0.0300, -0.0200]", "0.04", "0.04"],
        1: ["no saved predictions", "", ""],
    }


def _confirmed(trial, per_seed, digests=()) -> Confirmed:
    return Confirmed(trial, f"trial {trial}", "lr=0.01", False, f"confirm-{trial}", per_seed, set(digests))


def t_cell(values) -> tuple[float, float, float, float]:
    """Mean, sample std and SciPy's 95 % t interval of the mean."""
    mean, std = sum(values) / len(values), stats.tstd(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=std / math.sqrt(len(values)))
    return mean, std, low, high


def test_the_grouped_table_shows_each_groups_best_confirmed_trial():
    """Trials 0 and 2 (one group) and 4 confirmed: the group shows trial 2, first on validation; the
    group of trial 3 shows none."""
    data = _grouped_study()
    data.reproduces = ""
    seeds = {
        0: {"accuracy": {0: 0.1, 1: 0.2}, "macro_f1": {0: 0.1, 1: 0.1}, "balanced_accuracy": {0: 0.3, 1: 0.3}},
        2: {"accuracy": {0: 0.5, 1: 0.7, 2: 0.6}, "macro_f1": {0: 0.4, 1: 0.6}, "balanced_accuracy": {5: 0.55}},
        4: {"accuracy": {0: 0.25, 1: 0.35}},
    }
    configs = [_confirmed(n, s) for n, s in seeds.items()]
    data.confirmation = ConfirmSummary("my study", configs, configs[1], [])
    columns, rows = group_rows(data)
    assert columns[10:] == ["confirmed trial", "confirmed Accuracy", "confirmed F1 (macro)", "confirmed balanced acc"]
    assert {r[3]: r[10:] for r in rows} == {
        2: [2, "0.6000 ± 0.1000 (n=3)", "0.5000 ± 0.1414 (n=2)", "0.5500 ± 0.0000 (n=1)"],
        3: ["", "", "", ""],
        4: [4, "0.3000 ± 0.0707 (n=2)", "", ""],
        1: ["", "", "", ""],
    }


def test_the_confirmation_table_holds_each_configurations_seeds_and_the_paired_comparisons():
    winner = _confirmed(2, {
        "balanced_accuracy": {0: 0.61, 1: 0.65, 2: 0.66}, "accuracy": {0: 0.7, 1: 0.72, 2: 0.74},
        "macro_f1": {0: 0.5, 1: 0.52, 2: 0.57},
    }, [("t", "v", "s2")])  # fmt: skip
    other = _confirmed(5, {"balanced_accuracy": {0: 0.5, 1: 0.58}}, [("t", "v", "s1")])
    unfinished = _confirmed(7, {})  # no seed of it finished: no row
    pairs = [
        Paired("trial 2", "trial 5", 2, Interval(0.09, 0.01, 2, -0.0371, 0.2171), 0.123456, p_adjusted=0.246912),
        Paired("trial 2", "trial 9", 3, Interval(-0.02, 0.01, 3, -0.0448, 0.0048), 0.00123, test="Wilcoxon"),
    ]
    summary = ConfirmSummary("my study", [winner, other, unfinished], winner, pairs)
    columns, rows, pair_columns, pair_rows = confirmation_rows(summary)
    assert columns == [
        "configuration", "params", "seeds", "test bal-acc (mean ± std)", "95 % interval", "test acc",
        "test macro F1", "data",
    ]  # fmt: skip
    mean, std, low, high = t_cell([0.61, 0.65, 0.66])
    assert (round(mean, 4), round(std, 4)) == (0.64, 0.0265)  # worked by hand: deviations -0.03, 0.01, 0.02
    assert rows == [
        ["trial 2", "lr=0.01", 3, f"{mean:.4f} ± {std:.4f}", f"[{low:.4f}, {high:.4f}]", "0.7200 ± 0.0200",
         "0.5300 ± 0.0361", "B"],
        ["trial 5", "lr=0.01", 2, "0.5400 ± 0.0566", "[{:.4f}, {:.4f}]".format(*t_cell([0.5, 0.58])[2:]), "", "",
         "A"],
    ]  # fmt: skip
    assert pair_columns == [
        "comparison", "paired seeds", "difference in test bal-acc", "95 % interval", "test", "p-value",
        "Holm-adjusted p", "at 0.05, family-wise",
    ]  # fmt: skip
    assert pair_rows == [
        ["trial 2 vs trial 5", 2, "+0.0900", "[-0.0371, +0.2171]", "paired t-test", "0.123", "0.247",
         "not significant"],
        ["trial 2 vs trial 9", 3, "-0.0200", "[-0.0448, +0.0048]", "Wilcoxon", "0.00123", "", "significant"],
    ]  # fmt: skip
    winner.data_digests = other.data_digests  # one dataset: no data column
    columns, rows, _, _ = confirmation_rows(summary)
    assert "data" not in columns and all(len(r) == 7 for r in rows)


def test_the_terminals_confirmation_table_is_the_reports_cells():
    winner = _confirmed(2, {"balanced_accuracy": {0: 0.61, 1: 0.65}, "accuracy": {0: 0.7, 1: 0.72}})
    summary = ConfirmSummary("my study", [winner], winner, [])
    table = summary_table(summary)
    columns, rows, _, _ = confirmation_rows(summary)
    assert table.title == "confirmation of my study: test metrics, fresh seeds"
    assert table.caption == "mean ± std over seeds; 95 % interval: t interval of the mean"
    assert [c.header for c in table.columns] == columns
    assert [c.justify for c in table.columns] == ["left", "left", "right", "right", "right", "right", "right"]
    assert [list(c.cells) for c in table.columns] == [[str(v)] for v in rows[0]]


@pytest.mark.parametrize("digests", [[("t", "v", "s1")], [("t", "v", "s1"), ("t", "v", "s2")]])
def test_a_configuration_trained_on_two_datasets_names_both(digests):
    a = _confirmed(1, {"balanced_accuracy": {0: 0.5}}, digests)
    b = _confirmed(2, {"balanced_accuracy": {0: 0.6}}, [("t", "v", "s3")])
    columns, rows, _, _ = confirmation_rows(ConfirmSummary("s", [a, b], a, []))
    assert columns[-1] == "data" and rows[0][-1] == ", ".join("AB"[: len(digests)])
    assert rows[1][-1] == "ABC"[len(digests)]


def test_the_interval_line_says_trials_from_two_and_cuts_after_ten():
    def row(number, intervals=None):
        return TrialRow("s", number, "COMPLETE", 0.5, {}, None, test=TEST, intervals=intervals or {})

    assert interval_line([row(0, {"accuracy": (0.5, 0.7)}), row(1), row(2)]).endswith(
        " 2 of 3 trials were logged before cvstudy recorded these intervals and show none (trials 1, 2)."
    )
    assert interval_line([row(n) for n in range(11)]).endswith("(trials 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...).")


def test_a_configuration_with_no_finished_seed_leaves_the_others_rows():
    first = _confirmed(1, {"balanced_accuracy": {0: 0.5}})
    last = _confirmed(3, {"balanced_accuracy": {0: 0.6}})
    _, rows, _, _ = confirmation_rows(ConfirmSummary("s", [first, _confirmed(2, {}), last], first, []))
    assert [r[0] for r in rows] == ["trial 1", "trial 3"]


def test_the_terminals_confirmation_table_puts_the_data_column_left():
    a = _confirmed(1, {"balanced_accuracy": {0: 0.5}}, [("t", "v", "s1")])
    b = _confirmed(2, {"balanced_accuracy": {0: 0.6}}, [("t", "v", "s2")])
    table = summary_table(ConfirmSummary("s", [a, b], a, []))
    assert [(c.header, c.justify) for c in table.columns if c.justify == "left"] == [
        ("configuration", "left"),
        ("params", "left"),
        ("data", "left"),
    ]
