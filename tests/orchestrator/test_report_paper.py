"""The paper table (``table.md``, ``table.tex``, ``table.csv``) on a hand-built study: which trial each
row is, and each figure's text, worked by hand."""

from __future__ import annotations

import csv

import pytest

from cvstudy.orchestrator.report.confirmation import Confirmed, ConfirmSummary
from cvstudy.orchestrator.report.data import StudyData, TrialRow
from cvstudy.orchestrator.report.paper import (
    NOTE,
    Figure,
    PaperRow,
    harmonic,
    latex,
    latex_escape,
    markdown,
    paper_rows,
    write_table_csv,
)
from cvstudy.orchestrator.sweep.trials import Counts


def _study(confirmed: dict | None = None) -> StudyData:
    """Ranked 2, 0, 1: trial 2 (resnet50, one seed, intervals on accuracy and F1) beats trial 0 of its
    group; trial 1 (vit_s16) averaged three seeds."""
    one_seed = TrialRow(
        "s_a", 2, "COMPLETE", 0.9, {}, None, config={"model": "resnet50", "pretrained": False},
        test={"accuracy": 0.61234, "macro_precision": 0.5, "macro_recall": 0.25, "macro_f1": 0.4},
        intervals={"accuracy": (0.58321, 0.64123), "macro_f1": (0.35, 0.45)},
    )  # fmt: skip
    worse = TrialRow(
        "s_a", 0, "COMPLETE", 0.8, {}, None, config={"model": "resnet50", "pretrained": False}, test={"accuracy": 0.99}
    )
    seeds = TrialRow(
        "s_a", 1, "COMPLETE", 0.7, {}, None, config={"model": "vit_s16", "pretrained": True}, seeds=3,
        test={"accuracy": 0.9, "macro_precision": 0.8, "macro_recall": 0.7, "macro_f1": 0.75},
        std={"accuracy": 0.01, "macro_precision": 0.02, "macro_recall": 0.03},
    )  # fmt: skip
    confirmation = None
    if confirmed:
        configs = [Confirmed(n, f"trial {n}", "", False, "", per_seed) for n, per_seed in confirmed.items()]
        confirmation = ConfirmSummary("s_a", configs, configs[0], [])
    rows = [worse, seeds, one_seed]
    return StudyData("s_a", "acc", "maximize", rows, Counts(), [], None, [one_seed, worse, seeds], confirmation)


def test_f1_star_is_the_harmonic_mean_of_macro_precision_and_recall():
    assert harmonic(0.5, 0.25) == pytest.approx(1 / 3) and harmonic(0.8, 0.7) == pytest.approx(1.12 / 1.5)
    assert harmonic(0.0, 0.0) == 0.0


def test_each_row_is_its_groups_best_trial_with_its_intervals_or_its_spread_over_seeds():
    rows = paper_rows([_study()])
    assert [(r.model, r.pretrained, r.seeds, r.source) for r in rows] == [
        ("resnet50", "False", 1, "s_a trial 2"),
        ("vit_s16", "True", 3, "s_a trial 1"),
    ]
    # accuracy and F1 with their intervals (half-widths 0.029 and 0.05: three decimals); precision and
    # recall bare; F1* = 2 x 0.5 x 0.25 / 0.75 to F1's decimals
    assert markdown(rows) == (
        "| Model | Pretrained | Accuracy | Precision | Recall | F1 (macro) | F1* | Seeds | Source |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        "| resnet50 | False | 0.612 [0.583, 0.641] | 0.5000 | 0.2500 | 0.400 [0.350, 0.450] | 0.333 | 1 "
        "| s_a trial 2 |\n"
        "| vit_s16 | True | 0.900 ± 0.010 | 0.800 ± 0.020 | 0.700 ± 0.030 | 0.7500 | 0.7467 | 3 | s_a trial 1 |\n"
        "\n" + NOTE + "\n"
    )


def test_a_confirmed_trial_shows_the_mean_and_std_over_the_seeds_all_its_metrics_share():
    """Seeds 0 and 1 have accuracy, precision and recall (seed 2 has no recall): accuracy 0.8, 0.9 ->
    0.850 ± 0.071; precision 0.5, 0.7 -> 0.600 ± 0.141; recall 0.5, 0.5; F1 0.4, 0.6; F1* per seed 0.5
    and 0.7 / 1.2 = 0.5833 -> 0.542 ± 0.059. A confirmation without recall leaves the trial's own figures."""
    confirmed = {
        1: {
            "accuracy": {0: 0.8, 1: 0.9, 2: 1.0},
            "macro_precision": {0: 0.5, 1: 0.7, 2: 0.6},
            "macro_recall": {0: 0.5, 1: 0.5},
            "macro_f1": {0: 0.4, 1: 0.6, 2: 0.5},
            "balanced_accuracy": {2: 0.3},  # not on seeds 0 and 1: not a figure of the row
        },
        2: {"accuracy": {0: 0.1, 1: 0.2}, "macro_precision": {0: 0.1, 1: 0.2}},
    }
    rows = paper_rows([_study(confirmed)])
    assert (rows[0].source, rows[1].source, rows[1].seeds) == ("s_a trial 2", "s_a trial 1, confirmed", 2)
    assert markdown(rows).splitlines()[3] == (
        "| vit_s16 | True | 0.850 ± 0.071 | 0.600 ± 0.141 | 0.500 ± 0.000 | 0.500 ± 0.141 | 0.542 ± 0.059 | 2 "
        "| s_a trial 1, confirmed |"
    )


def test_the_latex_table_puts_figures_in_math_mode_and_escapes_every_name():
    row = PaperRow("res_net", "a&b", {"accuracy": Figure(0.5, std=0.01), "macro_f1": Figure(0.25)}, 2, "s#1 50%")
    assert latex([row]).splitlines() == [
        "% " + NOTE,
        r"\begin{tabular}{llrrrrrrl}",  # names left, the five figures and the seeds right
        r"\toprule",
        r"Model & Pretrained & Accuracy & Precision & Recall & F1 (macro) & F1* & Seeds & Source \\",
        r"\midrule",
        r"res\_net & a\&b & $0.500 \pm 0.010$ &  &  & $0.2500$ &  & 2 & s\#1 50\% \\",
        r"\bottomrule",
        r"\end{tabular}",
    ]
    assert latex_escape(r"\{x}~^$") == r"\textbackslash{}\{x\}\textasciitilde{}\textasciicircum{}\$"


def test_a_markdown_cell_never_breaks_its_row():
    row = PaperRow("a|b", "False", {}, 1, "s trial 0")
    assert markdown([row]).splitlines()[2] == "| a/b | False |  |  |  |  |  | 1 | s trial 0 |"


def test_the_csv_holds_each_figure_at_full_precision_with_its_spread_or_interval(tmp_path):
    path = tmp_path / "table.csv"
    write_table_csv(path, paper_rows([_study()]))
    with open(path, newline="") as fh:
        first, second = list(csv.DictReader(fh))
    assert first == {
        "model": "resnet50", "pretrained": "False", "seeds": "1", "source": "s_a trial 2",
        "accuracy": "0.612340", "accuracy_std": "", "accuracy_ci_low": "0.583210", "accuracy_ci_high": "0.641230",
        "macro_precision": "0.500000", "macro_precision_std": "", "macro_precision_ci_low": "",
        "macro_precision_ci_high": "",
        "macro_recall": "0.250000", "macro_recall_std": "", "macro_recall_ci_low": "", "macro_recall_ci_high": "",
        "macro_f1": "0.400000", "macro_f1_std": "", "macro_f1_ci_low": "0.350000", "macro_f1_ci_high": "0.450000",
        "harmonic_f1": "0.333333", "harmonic_f1_std": "", "harmonic_f1_ci_low": "", "harmonic_f1_ci_high": "",
    }  # fmt: skip
    assert (second["accuracy"], second["accuracy_std"], second["macro_f1_std"]) == ("0.900000", "0.010000", "")
    assert list(first)[:6] == ["model", "pretrained", "accuracy", "accuracy_std", "accuracy_ci_low", "accuracy_ci_high"]
    assert list(first)[-2:] == ["seeds", "source"]


def test_a_trial_missing_a_metric_keeps_the_others_and_has_no_f1_star_without_precision_and_recall(tmp_path):
    """Logged: accuracy, recall and F1 (no precision): those three figures, no F1*; the CSV leaves the
    missing ones empty."""
    row = TrialRow(
        "s", 0, "COMPLETE", 0.5, {}, None, config={"model": "m", "pretrained": True},
        test={"accuracy": 0.5, "macro_recall": 0.25, "macro_f1": 0.125},
    )  # fmt: skip
    (paper,) = paper_rows([StudyData("s", "acc", "maximize", [row], Counts(), [], None, [row])])
    assert set(paper.figures) == {"accuracy", "macro_recall", "macro_f1"}
    path = tmp_path / "table.csv"
    write_table_csv(path, [paper])
    with open(path, newline="") as fh:
        (written,) = list(csv.DictReader(fh))
    assert (written["macro_recall"], written["macro_precision"], written["harmonic_f1"]) == ("0.250000", "", "")


def test_the_tables_are_written_beside_the_report_under_their_names(tmp_path):
    from cvstudy.orchestrator.report.paper import write_tables

    paths = write_tables(tmp_path, [_study()])
    assert paths == {"table_md": tmp_path / "table.md", "table_csv": tmp_path / "table.csv",
                     "table_tex": tmp_path / "table.tex"}  # fmt: skip
    rows = paper_rows([_study()])
    assert (tmp_path / "table.md").read_text() == markdown(rows)
    assert (tmp_path / "table.tex").read_text() == latex(rows)
    with open(tmp_path / "table.csv", newline="") as fh:
        assert [r["source"] for r in csv.DictReader(fh)] == ["s_a trial 2", "s_a trial 1"]


def test_a_trial_whose_configuration_names_no_model_is_a_row_of_question_marks():
    row = TrialRow("s", 0, "COMPLETE", 0.5, {}, None, test={"accuracy": 0.5})
    (paper,) = paper_rows([StudyData("s", "acc", "maximize", [row], Counts(), [], None, [row])])
    assert (paper.model, paper.pretrained) == ("?", "?")
