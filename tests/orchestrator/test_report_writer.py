"""The report's assembly on hand-built studies: every sentence, heading and table cell of the Markdown
(the HTML carries the same pieces, escaped), the figures written beside it or the reason each is
missing, the files written whole or not at all, and the terminal's leaderboard. The tables' own cells
are tested in test_report_tables.py; end to end, test_report.py and test_report_numbers.py."""

from __future__ import annotations

import base64
import csv
import io
import warnings

import optuna
import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

import cvstudy.orchestrator.report.writer as writer
from cvstudy.orchestrator.report.data import StudyData, TrialRow
from cvstudy.orchestrator.report.writer import Document, print_study, write_report
from cvstudy.orchestrator.sweep.trials import Counts
from cvstudy.orchestrator.tracking.client import Tracker

PNG = b"\x89PNG bytes"
ENCODED = base64.b64encode(PNG).decode()
TEST = {"accuracy": 0.61234, "balanced_accuracy": 0.59876, "macro_precision": 0.5, "macro_recall": 0.45678}


def _row(number, value, state="COMPLETE", study="lab", **kw) -> TrialRow:
    kw.setdefault("config", {"model": "resnet50", "pretrained": False, "aug": "basic"})
    kw.setdefault("params", {"lr": 0.003})
    return TrialRow(study, number, state, value, run_id=None, **kw)


def _optuna(values, directions=("maximize",)):
    study = optuna.create_study(directions=list(directions))
    for v in values:
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 0.003},
                distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
                **({"values": v} if isinstance(v, list) else {"value": v}),
            )
        )
    return study


def _study(name="lab", ranked=None, counts=None, **kw) -> StudyData:
    rows = kw.pop("rows", None)
    ranked = (
        ranked
        if ranked is not None
        else [
            _row(1, 0.7, test=TEST, epochs=5, params={"lr": 0.005}),
            _row(0, 0.6, test=TEST),
        ]
    )
    rows = rows if rows is not None else [*ranked, _row(2, None, "PRUNED")]
    counts = counts or Counts(complete=len(ranked), pruned=1)
    study = kw.pop("optuna_study", None) or _optuna([r.value for r in sorted(ranked, key=lambda r: r.number)])
    return StudyData(name, "balanced accuracy", "maximize", rows, counts, kw.pop("problems", []), study, ranked, **kw)


def _doc(tmp_path) -> Document:
    return Document(tmp_path, "t")


# ----------------------------------------------------------------------------- Document
def test_a_document_writes_each_piece_to_html_escaped_and_to_markdown(tmp_path):
    doc = Document(tmp_path, "report <a & b>")
    doc.heading("Study <x>")
    doc.heading("Leaderboard", 3)
    doc.text("1 < 2 & 'q'")
    doc.warn("careful <now>")
    doc.table(["a", "b"], [[1, "<i>"]])
    doc.image("fig", PNG, "caption <c>")
    doc.raw_html("<div class='grid'>")
    doc.save(tmp_path / "r.html", tmp_path / "r.md")

    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!doctype html><html><head><meta charset='utf-8'><title>report &lt;a &amp; b&gt;</title>")
    assert page.endswith("</body></html>")
    for piece in (
        "<h1>report &lt;a &amp; b&gt;</h1>",
        "<h2>Study &lt;x&gt;</h2>",
        "<h3>Leaderboard</h3>",
        "<p>1 &lt; 2 &amp; &#x27;q&#x27;</p>",
        "<p class='warn'>careful &lt;now&gt;</p>",
        "<td>&lt;i&gt;</td>",
        f"<figure><img alt='caption &lt;c&gt;' src='data:image/png;base64,{ENCODED}'>"
        "<figcaption>caption &lt;c&gt;</figcaption></figure>",
        "<div class='grid'>",
    ):
        assert piece in page, piece
    assert (tmp_path / "fig.png").read_bytes() == PNG
    assert (tmp_path / "r.md").read_text() == (
        "# report <a & b>\n\n## Study <x>\n\n### Leaderboard\n\n1 < 2 & 'q'\n\n> careful <now>\n\n"
        "| a | b |\n|---|---|\n| 1 | <i> |\n\n![caption <c>](fig.png)\n"
    )


# ----------------------------------------------------------------------------- the files, whole or not at all
def test_the_report_replaces_its_files_whole_and_leaves_other_files_and_no_staging_folder(tmp_path):
    out = tmp_path / "reports" / "lab"
    out.mkdir(parents=True)
    (out / "report.md").write_text("old")
    (out / "notes.txt").write_text("mine")
    paths = write_report([_study()], out, tracker=None, top=10)
    assert {k: p.parent for k, p in paths.items()} == {k: out for k in paths}
    assert {"html", "md", "csv"} <= set(paths) and all(p.exists() for p in paths.values())
    assert (out / "report.md").read_text().startswith("# cvstudy report: lab\n")
    assert (out / "notes.txt").read_text() == "mine"
    assert [p.name for p in out.parent.iterdir()] == ["lab"]  # no .lab.partial-* left beside it


def test_a_report_that_fails_midway_leaves_the_old_files_and_nothing_half_written(tmp_path, monkeypatch):
    out = tmp_path / "lab"
    out.mkdir()
    (out / "report.md").write_text("old")

    def half(studies, staging, tracker, top):
        (staging / "report.md").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(writer, "_write_files", half)
    with pytest.raises(OSError, match="disk full"):
        write_report([_study()], out, tracker=None, top=10)
    assert (out / "report.md").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab"]


def _md(tmp_path, studies, top=10) -> list[str]:
    write_report(studies, tmp_path / "out", tracker=None, top=top)
    return (tmp_path / "out" / "report.md").read_text().splitlines()


# ----------------------------------------------------------------------------- a study's section
def test_a_study_section_says_its_objective_counts_and_each_figure_it_could_not_draw(tmp_path):
    lines = _md(tmp_path, [_study()])
    assert lines[0] == "# cvstudy report: lab"
    assert "## Study lab" in lines
    assert "Objective: balanced accuracy (maximize). Trials: 2 complete, 1 pruned." in lines
    assert "### Leaderboard" in lines and "### Results by model, pretrained and augmentation" in lines
    assert (
        "Best trial of each group, chosen on validation; test metrics on its selected checkpoint. "
        "F1 is scikit-learn's macro F1." in lines
    )
    assert (
        "lab: best trial: row-normalised test confusion matrix: not drawn; "
        "needs a complete trial with its MLflow run; none so far." in lines
    )
    assert (
        "lab: best trial: per-class test recall: not drawn; needs a complete trial with its MLflow run; none so far."
        in lines
    )
    drawn = [line for line in lines if line.startswith("![")]
    assert "![lab: optimisation history](lab-history.png)" in drawn
    assert "![lab: parameter importances (Optuna, fANOVA)](lab-importances.png)" in drawn
    assert "![lab: parallel coordinates](lab-parallel.png)" in drawn
    assert (tmp_path / "out" / "lab-history.png").read_bytes().startswith(b"\x89PNG")
    # the leaderboard: best first, top rows only
    leader = [line for line in lines if line.startswith("| lab |")]
    assert [line.split(" | ")[1] for line in leader] == ["1", "0"]


def test_only_the_top_trials_are_in_the_leaderboard(tmp_path):
    lines = _md(tmp_path, [_study()], top=1)
    assert [line.split(" | ")[1] for line in lines if line.startswith("| lab |")] == ["1"]


def test_a_single_seed_study_warns_and_a_repeated_one_says_how_many_seeds_each_trial_averages(tmp_path):
    single = _md(tmp_path / "a", [_study()])
    assert any(line.startswith("> Single-seed ranking: each trial of lab trained one seed") for line in single)

    std = {"balanced_accuracy": 0.01, "objective": 0.02}
    ranked = [
        _row(1, 0.7, test=TEST, seeds=3, std=std, per_seed=[0.58, 0.6]),  # a seed each unfinished
        _row(0, 0.6, test=TEST, seeds=3, std=std, per_seed=[0.5, 0.55]),
    ]
    repeated = _md(tmp_path / "b", [_study(ranked=ranked)])
    assert not any("Single-seed ranking" in line for line in repeated)
    assert (
        "Objective: balanced accuracy (maximize). Trials: 2 complete, 1 pruned. "
        "Each trial averages 3 training seeds (mean ± std)." in repeated
    )
    assert "![lab: each trial's seeds, test balanced accuracy](lab-seeds.png)" in repeated  # 2 trials of > 1 seed


def test_mismatches_and_checks_are_warnings_in_the_study_section(tmp_path):
    ranked = [_row(1, 0.7, test=TEST, checks={"small_input": "at 16 px ..."}), _row(0, 0.6, test=TEST)]
    lines = _md(tmp_path, [_study(ranked=ranked, problems=["trial 3: no MLflow run"])])
    assert "> Optuna/MLflow mismatch: trial 3: no MLflow run" in lines
    assert "> Check: 1 of 2 complete trials (trial 1): at 16 px ..." in lines


def test_a_two_objective_study_says_how_it_ranks_and_lists_its_pareto_front(tmp_path):
    values = {0: [0.6, 3.0], 1: [0.7, 5.0], 2: [0.5, 6.0]}
    ranked = [
        _row(1, 0.7, test=TEST, values={"val_acc": 0.7, "seconds": 5.0}, pareto_optimal=True),
        _row(0, 0.6, test=TEST, values={"val_acc": 0.6, "seconds": 3.0}, pareto_optimal=True),
        _row(2, 0.5, test=TEST, values={"val_acc": 0.5, "seconds": 6.0}),
    ]
    s = _study(
        ranked=ranked,
        rows=ranked,
        counts=Counts(complete=3),
        objectives=[("val_acc", "maximize"), ("seconds", "minimize")],
        optuna_study=_optuna([values[i] for i in range(3)], ("maximize", "minimize")),
    )
    lines = _md(tmp_path, [s])
    assert (
        "Objectives: val_acc (maximize), seconds (minimize). Ranked by Pareto front, then by balanced accuracy "
        "(the leaderboard's value): the best trial is the best balanced accuracy among the Pareto-optimal "
        "trials. Trials: 3 complete." in lines
    )
    assert "### Pareto front" in lines
    assert (
        "2 of 3 complete trials are Pareto-optimal: no other complete trial is at least as good on every "
        "objective and better on one. Objectives on validation or on the model; test metrics on each trial's "
        "selected checkpoint, never used to choose." in lines
    )
    start = lines.index("| trial | val_acc | seconds | test bal-acc | params |")
    assert lines[start + 2 : start + 4] == [
        "| 1 | 0.7000 | 5.0000 | 0.5988 | lr=0.003 |",
        "| 0 | 0.6000 | 3.0000 | 0.5988 | lr=0.003 |",
    ]
    assert lines[start + 4] == "" and "![lab: Pareto front (Optuna), complete trials](lab-pareto.png)" in lines


# ----------------------------------------------------------------------------- several studies
def test_two_studies_are_compared_side_by_side_each_by_its_best_trial(tmp_path):
    a = _study(
        "a",
        ranked=[_row(4, 0.7, study="a", test=TEST)],
        counts=Counts(complete=1, pruned=2, failed=1),
        optuna_study=_optuna([0.1, 0.2, 0.3, 0.4, 0.7]),
    )
    b = _study("b", ranked=[], rows=[_row(0, None, "FAIL", study="b")], counts=Counts(failed=1))
    lines = _md(tmp_path, [a, b])
    assert lines[0] == "# cvstudy report: a, b"
    start = lines.index("## Studies side by side")
    assert lines[start + 2 : start + 6] == [
        "| study | objective | complete | pruned | failed | seeds | best trial | best objective | test acc "
        "| test bal-acc | test macro F1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        "| a | balanced accuracy | 1 | 2 | 1 | 1 | 4 | 0.7000 | 0.6123 | 0.5988 |  |",
        "| b | balanced accuracy | 0 | 0 | 1 |  |  |  |  |  |  |",
    ]
    assert "![best validation objective vs complete trials, per study](comparison.png)" in lines
    assert lines.index("## Study a") < lines.index("## Study b")
    assert "b: optimisation history: not drawn; needs a complete trial; none so far." in lines


def test_one_study_has_no_side_by_side_section(tmp_path):
    lines = _md(tmp_path, [_study()])
    assert "## Studies side by side" not in lines and not (tmp_path / "out" / "comparison.png").exists()


# ----------------------------------------------------------------------------- the terminal
def test_the_terminal_leaderboard_names_the_order_the_counts_and_each_trials_settings():
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, color_system=None)
    ranked = [_row(1, 0.7, test=TEST, epochs=5), _row(0, 0.6, test=TEST)]
    print_study(_study(ranked=ranked, counts=Counts(complete=2, pruned=1, failed=3)), top=1, console=console)
    text = buffer.getvalue()
    assert "study lab: top 1 by balanced accuracy (2 complete, 1 pruned, 3 failed)" in text
    assert "value: validation objective; acc .. F1: test, macro P/R/F1" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("│") and " 1 │" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:4] == ["1", "0.700", "0.612", "0.599"] and cells[7] == "5"
    assert "  trial 1: lr=0.003" in text and "trial 0:" not in text  # the top only
    assert "Single-seed ranking" in text


# ----------------------------------------------------------------------------- several studies' data
def test_studies_whose_best_trials_used_other_data_get_a_data_column_and_a_warning(tmp_path):
    """Best trials on datasets D1 and D2 (labels A and B, sorted by their digests), one whose digests were
    not recorded ("?": in the table, not a dataset of its own) and a study with no complete trial (an
    empty cell); each study's test macro F1 is its best trial's."""
    d1, d2 = ("t1", "v1", "x1"), ("t2", "v2", "x2")
    test = {**TEST, "macro_f1": 0.4321}
    a = _study("a", ranked=[_row(0, 0.7, study="a", test=test, data=d2)], counts=Counts(complete=1))
    b = _study("b", ranked=[_row(0, 0.6, study="b", test=test, data=d1)], counts=Counts(complete=1))
    c = _study("c", ranked=[_row(0, 0.5, study="c", test=test)], counts=Counts(complete=1))
    d = _study("d", ranked=[], rows=[_row(0, None, "FAIL", study="d")], counts=Counts(failed=1))
    lines = _md(tmp_path, [a, b, c, d])
    start = lines.index("## Studies side by side")
    assert lines[start + 2].endswith("| test acc | test bal-acc | test macro F1 | data |")
    assert lines[start + 4 : start + 8] == [
        "| a | balanced accuracy | 1 | 0 | 0 | 1 | 0 | 0.7000 | 0.6123 | 0.5988 | 0.4321 | B |",
        "| b | balanced accuracy | 1 | 0 | 0 | 1 | 0 | 0.6000 | 0.6123 | 0.5988 | 0.4321 | A |",
        "| c | balanced accuracy | 1 | 0 | 0 | 1 | 0 | 0.5000 | 0.6123 | 0.5988 | 0.4321 | ? |",
        "| d | balanced accuracy | 0 | 0 | 1 |  |  |  |  |  |  |  |",
    ]
    assert lines[start + 9] == (
        "> These runs trained or were tested on 2 different datasets (column 'data'; digests differ): their "
        "numbers are not directly comparable. A = train t1, val v1, test x1; B = train t2, val v2, test x2"
    )


def test_studies_on_the_same_data_have_no_data_column(tmp_path):
    same = ("t", "v", "x")
    a = _study("a", ranked=[_row(0, 0.7, study="a", test=TEST, data=same)], counts=Counts(complete=1))
    b = _study("b", ranked=[_row(0, 0.6, study="b", test=TEST, data=same)], counts=Counts(complete=1))
    lines = _md(tmp_path, [a, b])
    start = lines.index("## Studies side by side")
    assert lines[start + 2].endswith("| test macro F1 |") and not any("different datasets" in x for x in lines)


# ----------------------------------------------------------------------------- checks on the parent run
@pytest.fixture
def parent_run(tmp_path):
    """A real MLflow store (written and read with MLflow's own client) and a study's parent run in it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("lab", artifact_location=(tmp_path / "artifacts").as_uri())
    return Tracker(uri), client, client.create_run(experiment).info.run_id


def _checked(parent=None):
    """Two complete trials, each with a set-up warning; trial 1's longer than MLflow users are shown."""
    long = "small input: " + "x" * 6000
    ranked = [
        _row(1, 0.7, test=TEST, checks={"small_input": long}),
        _row(0, 0.6, test=TEST, checks={"small_input": "short", "few_epochs": "2 epochs"}),
    ]
    s = _study(ranked=ranked)
    if parent:
        s.optuna_study.set_user_attr("mlflow_parent_run_id", parent)  # StudyAttr.PARENT_RUN_ID
    return s, long


def test_the_checks_that_fire_are_tags_on_the_studys_parent_run_cut_at_5000_characters(parent_run):
    tracker, client, parent = parent_run
    s, long = _checked(parent)
    writer.log_checks(tracker, s)
    tags = {k: v for k, v in client.get_run(parent).data.tags.items() if k.startswith("cvstudy.check.")}
    said = "1 of 2 complete trials (trial 0): 2 epochs"
    assert tags == {
        "cvstudy.check.few_epochs": said,
        "cvstudy.check.small_input": ("2 of 2 complete trials (trial 1, 0): " + long)[:5000],
    }


def test_a_study_without_a_parent_run_logs_no_checks_and_one_without_checks_logs_nothing(parent_run):
    tracker, client, parent = parent_run
    s, _ = _checked()
    writer.log_checks(None, s)  # no parent run: nothing to call (the tracker is not even used)
    quiet = _study()
    quiet.optuna_study.set_user_attr("mlflow_parent_run_id", parent)
    writer.log_checks(tracker, quiet)
    assert not [k for k in client.get_run(parent).data.tags if k.startswith("cvstudy.check.")]


# ----------------------------------------------------------------------------- the terminal, exactly
def _printed(s, top=10) -> list[str]:
    buffer = io.StringIO()
    print_study(s, top=top, console=Console(file=buffer, width=120, color_system=None))
    return buffer.getvalue().splitlines()


def test_the_terminal_leaderboards_header_and_caption_are_these_words():
    lines = _printed(_study())
    header = next(line for line in lines if "trial" in line and "┃" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == [
        "trial", "value", "acc", "bal-acc", "P", "R", "F1", "epochs", "run",
    ]  # fmt: skip
    assert "value: validation objective; acc .. F1: test, macro P/R/F1" in [line.strip() for line in lines]


def test_a_two_objective_studys_terminal_leaderboard_says_it_ranks_by_pareto_front_first():
    s = _study(objectives=[("val_acc", "maximize"), ("seconds", "minimize")])
    text = " ".join(line.strip() for line in _printed(s))  # rich wraps the title to the table's width
    assert "study lab: top 2 by Pareto front, then balanced accuracy (2 complete, 1 pruned, 0 failed)" in text


# ----------------------------------------------------------------------------- a confirmation
def _confirmed(trial, label, values, data=(("t", "v", "x"),)):
    from cvstudy.orchestrator.report.confirmation import Confirmed

    per_seed = {"balanced_accuracy": dict(enumerate(values)), "accuracy": dict(enumerate(values))}
    return Confirmed(trial, label, f"lr={trial}", trial == 0, f"run{trial}", per_seed, set(data))


def _confirmation(configs, comparisons):
    from cvstudy.orchestrator.report.confirmation import ConfirmSummary

    return ConfirmSummary("lab", configs, configs[0], comparisons)


def test_a_confirmed_study_has_its_confirmation_section_tables_correction_and_seeds_figure(tmp_path):
    """Three configurations, three comparisons (one family: the correction is said), on two datasets."""
    from cvstudy.orchestrator.stats import Interval, Paired

    configs = [
        _confirmed(1, "trial 1", [0.7, 0.72, 0.74]),
        _confirmed(0, "baseline", [0.6, 0.61, 0.65]),
        _confirmed(2, "trial 2", [0.5, 0.52, 0.5], data=(("t2", "v2", "x2"),)),
    ]
    difference = Interval(0.1, 0.01, 3, 0.08, 0.12)
    comparisons = [
        Paired("trial 1", "baseline", 3, difference, 0.01, p_adjusted=0.03),
        Paired("trial 1", "trial 2", 3, difference, 0.02, p_adjusted=0.04),
        Paired("baseline", "trial 2", 3, difference, 0.2, p_adjusted=0.2),
    ]
    lines = _md(tmp_path, [_study(confirmation=_confirmation(configs, comparisons))])
    start = lines.index("### Confirmation with fresh seeds")
    assert lines[start + 2] == (
        "`cvstudy confirm` retrained these configurations with the same fresh seeds each (seed i of one pairs "
        "with seed i of another), full epochs, selected on validation, tested once per run; MLflow experiment "
        "lab-confirm."
    )
    assert lines[start + 4].startswith("| configuration | params | seeds |") and lines[start + 4].endswith("| data |")
    assert [line.split(" | ")[0] for line in lines[start + 6 : start + 9]] == ["| trial 1", "| baseline", "| trial 2"]
    assert lines[start + 10] == (
        "3 comparisons, one family: each p-value is shown as its test gave it and adjusted by Holm's step-down, "
        "and 'significant' is read on the adjusted value (family-wise error 0.05)."
    )
    assert lines[start + 12].startswith("| comparison | paired seeds |")
    assert [line.split(" | ")[0] for line in lines[start + 14 : start + 17]] == [
        "| trial 1 vs baseline", "| trial 1 vs trial 2", "| baseline vs trial 2",
    ]  # fmt: skip
    assert lines[start + 18] == "> The confirmation's runs did not all use the same data (their digests differ)."
    assert lines[start + 20] == "![lab: confirmation, test balanced accuracy per seed](lab-spread.png)"
    assert (tmp_path / "out" / "lab-spread.png").read_bytes().startswith(b"\x89PNG")
    assert any(line.endswith("(cvstudy confirm), mean ± std over n seeds.") for line in lines)  # the grouped note


def test_a_confirmation_of_two_on_one_dataset_says_no_correction_and_no_data_warning(tmp_path):
    from cvstudy.orchestrator.stats import Interval, Paired

    configs = [_confirmed(1, "trial 1", [0.7, 0.72]), _confirmed(0, "baseline", [0.6, 0.61])]
    comparisons = [Paired("trial 1", "baseline", 2, Interval(0.1, 0.01, 2, 0.0, 0.2), 0.04)]
    lines = _md(tmp_path, [_study(confirmation=_confirmation(configs, comparisons))])
    start = lines.index("### Confirmation with fresh seeds")
    assert lines[start + 4].endswith("| test macro F1 |")  # no data column
    assert lines[start + 9].startswith("| comparison | paired seeds |")  # no correction line before it
    assert not any("did not all use the same data" in line or "one family" in line for line in lines)


# ----------------------------------------------------------------------------- the grouped table's note
def test_the_grouped_tables_note_says_what_published_best_relative_and_confirmed_columns_mean(tmp_path):
    """A study reproducing the published table (its ResNet-50 from scratch is in it), with its group's
    best compared against the study's best on the same images: the note explains each added column."""
    from cvstudy.orchestrator.tracking.predictions import Comparison

    compared = Comparison(None, None, 10, 3, 1, 0.625, {"balanced_accuracy": (0.01, -0.02, 0.04)}, {})
    ranked = [
        _row(1, 0.7, test=TEST),
        _row(0, 0.6, test=TEST, config={"model": "resnet50", "pretrained": False, "aug": "none"}),
    ]
    s = _study(ranked=ranked, reproduces="dsba-cv-study", versus_best={0: compared, 1: None})
    lines = _md(tmp_path, [s])
    start = lines.index("### Results by model, pretrained and augmentation")
    assert lines[start + 2] == (
        "Best trial of each group, chosen on validation; test metrics on its selected checkpoint. F1 is "
        "scikit-learn's macro F1. Published: the original study's table, selected on the test set; its F1* is "
        "the harmonic mean of macro precision and macro recall. bal-acc - best's: the group's best minus the "
        "study's best on the same test images, with the 95 % interval of a paired bootstrap; McNemar p: the "
        "exact test of equal accuracy on the images the two disagree on, as it stands and Holm-adjusted over "
        "the groups compared (read significance on the latter)."
    )
    assert "published Acc" in lines[start + 4]


# ----------------------------------------------------------------------------- a study's other sections
def test_a_study_with_device_time_has_a_cost_section_that_says_what_its_figures_mean(tmp_path):
    ranked = [
        _row(1, 0.7, test=TEST, device_seconds=120.0, finished=200.0, cost={"gflops": 1.5, "params": 10}),
        _row(0, 0.6, test=TEST, device_seconds=60.0, finished=100.0, cost={"gflops": 0.5, "params": 5}),
    ]
    lines = _md(tmp_path, [_study(ranked=ranked)])
    start = lines.index("### Cost")
    assert lines[start + 2] == (
        "The study's trials trained and validated for 3.0 device-minutes in all. "
        "The best balanced accuracy (0.7000) was reached after 3.0 of 3.0 device-minutes (trial 1). "
        "Device time is what the runs logged (training and validation epochs); GFLOPs are one image's forward "
        "pass at the run's input size; inference throughput is batch 32 on the run's device."
    )
    drawn = [line for line in lines[start:] if line.startswith("![")]
    assert drawn[:2] == [
        "![lab: objective against cost, Pareto front marked](lab-cost.png)",
        "![lab: best objective so far against device time spent](lab-time.png)",
    ]
    assert (tmp_path / "out" / "lab-cost.png").read_bytes().startswith(b"\x89PNG")


def test_a_study_without_device_time_has_no_cost_section(tmp_path):
    assert "### Cost" not in _md(tmp_path, [_study()])


def _ops(flips):
    return {"hflip": 0.0, "vflip": 0.0, "crop_pad": 0, "rotate": 0.0, "translate": 0.0, "scale": 0.0,
            "jitter": 0.0, "hue": 0.0, "trivial": False, "erase": 0.0} | {"hflip": flips}  # fmt: skip


def test_operations_that_varied_over_too_few_trials_are_a_hint_with_a_warning(tmp_path):
    ranked = [_row(1, 0.7, test=TEST, augmentation=_ops(0.5)), _row(0, 0.6, test=TEST, augmentation=_ops(0.0))]
    lines = _md(tmp_path, [_study(ranked=ranked)])
    start = lines.index("### Augmentation operations")
    assert lines[start + 2] == (
        "Each operation's effective value over the 2 complete trials (a preset counts as its operations): "
        "Optuna's fANOVA importance (shares of the objective's variance the operations explain, summing to 1 "
        "over them), and balanced accuracy by value. Selected on validation; single trials are noisy, see the "
        "seeds behind each."
    )
    assert lines[start + 4] == (
        "> 2 trials over 1 varying operations: too few for the importances to separate them; read them as a "
        "hint, and the table for what each value gave."
    )
    assert "![lab: objective by operation](lab-operations.png)" in lines[start:]


def test_five_trials_per_varying_operation_need_no_warning(tmp_path):
    ranked = [_row(i, 0.5 + i / 100, test=TEST, augmentation=_ops(0.5 * (i % 2))) for i in range(5)]
    lines = _md(tmp_path, [_study(ranked=ranked, counts=Counts(complete=5))])
    start = lines.index("### Augmentation operations")
    assert "over the 5 complete trials" in lines[start + 2] and lines[start + 4].startswith("| ")
    assert not any("too few for the importances" in line for line in lines)


def test_a_study_without_varied_operations_has_no_operations_section(tmp_path):
    ranked = [_row(1, 0.7, test=TEST, augmentation=_ops(0.5)), _row(0, 0.6, test=TEST, augmentation=_ops(0.5))]
    assert "### Augmentation operations" not in _md(tmp_path, [_study(ranked=ranked)])


@pytest.mark.parametrize("n", [3, 4])
def test_optunas_pareto_front_plot_is_drawn_for_three_objectives_and_not_for_four(tmp_path, n):
    """Optuna's Pareto-front plot draws two or three objectives; with a fourth the table stands alone."""
    metrics = ["val_acc", "seconds", "gflops", "params"][:n]
    first, second = (0.7, 5.0, 1.0, 9.0)[:n], (0.6, 3.0, 2.0, 8.0)[:n]
    ranked = [
        _row(1, 0.7, test=TEST, values=dict(zip(metrics, first)), pareto_optimal=True),
        _row(0, 0.6, test=TEST, values=dict(zip(metrics, second)), pareto_optimal=True),
    ]
    directions = ("maximize", "minimize", "minimize", "minimize")[:n]
    s = _study(
        ranked=ranked,
        rows=ranked,
        counts=Counts(complete=2),
        objectives=list(zip(metrics, directions)),
        optuna_study=_optuna([list(second), list(first)], directions),
    )
    lines = _md(tmp_path, [s])
    assert f"| trial | {' | '.join(metrics)} | test bal-acc | params |" in lines
    drawn = "![lab: Pareto front (Optuna), complete trials](lab-pareto.png)" in lines
    assert drawn == (n == 3) and (tmp_path / "out" / "lab-pareto.png").exists() == (n == 3)


def test_the_report_returns_each_file_it_wrote_by_kind(tmp_path):
    out = tmp_path / "reports" / "lab"
    paths = write_report([_study()], out, tracker=None, top=10)
    names = {"html": "report.html", "md": "report.md", "csv": "trials.csv", "table_md": "table.md",
             "table_csv": "table.csv", "table_tex": "table.tex"}  # fmt: skip
    assert paths == {kind: out / name for kind, name in names.items()}
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert (out / "report.html").read_text().count("<h2>Study lab</h2>") == 1


def test_only_the_top_trials_with_more_than_one_finished_seed_are_in_the_seeds_figure(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(writer, "spread_figure", lambda title, groups: drawn.append((title, groups)) or PNG)
    ranked = [
        _row(1, 0.7, test=TEST, seeds=3, per_seed=[0.58, 0.6]),
        _row(0, 0.6, test=TEST, seeds=3, per_seed=[0.5]),  # one seed finished: no spread to draw
        _row(2, 0.5, test=TEST, seeds=3, per_seed=[0.4, 0.45, 0.5]),  # below the top 2
    ]
    lines = _md(tmp_path, [_study(ranked=ranked, counts=Counts(complete=3))], top=2)
    assert drawn == [("lab, trials' seeds", [("trial 1", [0.58, 0.6])])]
    assert "![lab: each trial's seeds, test balanced accuracy](lab-seeds.png)" in lines
    assert (tmp_path / "out" / "lab-seeds.png").read_bytes() == PNG


def test_the_figures_of_a_study_sit_in_one_grid_and_the_reasons_for_missing_ones_follow_it(tmp_path):
    write_report([_study()], tmp_path / "out", tracker=None, top=10)
    page = (tmp_path / "out" / "report.html").read_text()
    grid = page[page.index("<div class='grid'>") : page.index("</div>")]
    assert grid.count("<figure>") == 3  # history, importances, parallel coordinates
    after = page[page.index("</div>") :]
    assert after.count("not drawn; needs a complete trial with its MLflow run; none so far.") == 2


def test_a_studys_interval_line_counts_every_ranked_trial_and_the_terminals_only_the_top(tmp_path):
    """The file's leaderboard note covers the study; the terminal's covers the rows it shows."""
    ranked = [_row(1, 0.7, test=TEST, intervals={"accuracy": (0.6, 0.62)}), _row(0, 0.6, test=TEST)]
    lines = _md(tmp_path, [_study(ranked=ranked)], top=1)
    assert (
        "Brackets: the 95 % interval of a test metric over the test images (Wilson's for accuracy, a bootstrap "
        "within each class for the others); each number is rounded to what its interval supports. 1 of 2 trials "
        "were logged before cvstudy recorded these intervals and show none (trial 0)." in lines
    )
    printed = " ".join(line.strip() for line in _printed(_study(ranked=ranked), top=1))
    assert "each number is rounded to what its interval supports." in printed and "show none" not in printed


def test_a_study_whose_trials_used_other_data_labels_them_in_its_leaderboard_and_warns(tmp_path):
    ranked = [_row(1, 0.7, test=TEST, data=("t2", "v", "x")), _row(0, 0.6, test=TEST, data=("t1", "v", "x"))]
    lines = _md(tmp_path, [_study(ranked=ranked)])
    warning = (
        "> These runs trained or were tested on 2 different datasets (column 'data'; digests differ): their "
        "numbers are not directly comparable. A = train t1, val v, test x; B = train t2, val v, test x"
    )
    start = lines.index("### Leaderboard")
    assert lines[start - 2] == warning
    assert lines[start + 2].endswith("| MLflow run | data |")
    assert [line.rsplit(" | ", 1)[1] for line in lines[start + 4 : start + 6]] == ["B |", "A |"]


def test_the_confirmations_seeds_figure_is_titled_with_the_study_and_has_each_configurations_seeds(
    tmp_path, monkeypatch
):
    drawn = []
    monkeypatch.setattr(writer, "spread_figure", lambda title, groups: drawn.append((title, groups)) or PNG)
    configs = [_confirmed(1, "trial 1", [0.7, 0.72]), _confirmed(0, "baseline", [0.6, 0.61])]
    _md(tmp_path, [_study(confirmation=_confirmation(configs, []))])
    assert drawn == [("lab, confirmation", [("trial 1", [0.7, 0.72]), ("baseline", [0.6, 0.61])])]


def test_trials_csv_has_a_column_for_every_further_objective_and_each_override_said_apart(tmp_path):
    """A three-objective trial (its second a metric, not a cost) changed by two overrides."""
    row = _row(
        0, 0.7, values={"val_acc": 0.7, "val_loss": 0.4, "val_f1": 0.5}, changed={"lr": (0.1, 0.01), "wd": (1, 2)}
    )
    writer.write_trials_csv(tmp_path / "t.csv", [row])
    with open(tmp_path / "t.csv", newline="") as fh:
        (written,) = list(csv.DictReader(fh))
    assert (written["objective_val_loss"], written["objective_val_f1"]) == ("0.400000", "0.500000")
    assert "objective_val_acc" not in written  # the first objective is the objective column
    assert written["changed_by_overrides"] == "lr: sampled 0.1 -> 0.01; wd: sampled 1 -> 2"


# ----------------------------------------------------------------------------- the note, the layout
NOTE = (
    "Best trial of each group, chosen on validation; test metrics on its selected checkpoint. F1 is "
    "scikit-learn's macro F1."
)


def test_a_confirmed_studys_note_says_what_the_confirmed_column_is(tmp_path):
    configs = [_confirmed(1, "trial 1", [0.7, 0.72]), _confirmed(0, "baseline", [0.6, 0.61])]
    lines = _md(tmp_path, [_study(confirmation=_confirmation(configs, []))])
    start = lines.index("### Results by model, pretrained and augmentation")
    assert lines[start + 2] == NOTE + (
        " Confirmed: the group's best confirmed configuration retrained with fresh seeds (cvstudy confirm), "
        "mean ± std over n seeds."
    )


def test_groups_without_a_comparison_with_the_best_add_nothing_to_the_note(tmp_path):
    """No group's best could be compared (no saved predictions): no column, no sentence about it."""
    lines = _md(tmp_path, [_study(versus_best={0: None})])
    start = lines.index("### Results by model, pretrained and augmentation")
    assert lines[start + 2] == NOTE


def test_a_study_says_how_many_seeds_its_best_trial_averages_and_one_dataset_has_no_data_column(tmp_path):
    ranked = [_row(1, 0.7, test=TEST, seeds=3, std={"objective": 0.01}), _row(0, 0.6, test=TEST, seeds=2)]
    lines = _md(tmp_path, [_study(ranked=ranked)])
    assert "Objective: balanced accuracy (maximize). Trials: 2 complete, 1 pruned. Each trial averages 3 " \
        "training seeds (mean ± std)." in lines  # fmt: skip
    header = lines[lines.index("### Leaderboard") + 2]
    assert header.endswith("| epochs | seconds | MLflow run |")


def test_the_html_puts_a_studys_figures_in_a_grid_of_their_own_and_the_markdown_a_blank_line_after(tmp_path):
    write_report([_study()], tmp_path / "out", tracker=None, top=10)
    page = (tmp_path / "out" / "report.html").read_text().splitlines()
    start, end = page.index("<div class='grid'>"), page.index("</div>")
    assert [line[:8] for line in page[start + 1 : end]] == ["<figure>"] * 3
    assert (tmp_path / "out" / "report.md").read_text().endswith("MLflow run; none so far.\n\n\n")


def test_the_best_trials_confusion_matrix_is_read_from_its_mlflow_run(tmp_path):
    """The tracker reaches the figures: the best trial's run holds a confusion matrix, written with MLflow's
    own client, and the report draws it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("lab", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.log_dict(run_id, {"matrix": [[3, 1], [0, 4]], "labels": ["cat", "dog"]}, "confusion_matrix.json")
    ranked = [_row(1, 0.7, test=TEST), _row(0, 0.6, test=TEST)]
    ranked[0].run_id = run_id
    write_report([_study(ranked=ranked)], tmp_path / "out", tracker=Tracker(uri), top=10)
    lines = (tmp_path / "out" / "report.md").read_text().splitlines()
    assert "![lab: best trial: row-normalised test confusion matrix](lab-confusion.png)" in lines
    assert "![lab: best trial: per-class test recall](lab-recall.png)" in lines


def _two_objectives() -> StudyData:
    """Two complete trials, both on the front of validation accuracy (maximised) and seconds (minimised)."""
    ranked = [
        _row(1, 0.7, test=TEST, values={"val_acc": 0.7, "seconds": 5.0}, pareto_optimal=True),
        _row(0, 0.6, test=TEST, values={"val_acc": 0.6, "seconds": 3.0}, pareto_optimal=True),
    ]
    return _study(
        ranked=ranked,
        rows=ranked,
        counts=Counts(complete=2),
        objectives=[("val_acc", "maximize"), ("seconds", "minimize")],
        optuna_study=_optuna([[0.6, 3.0], [0.7, 5.0]], ("maximize", "minimize")),
    )


def test_the_pareto_section_hides_optunas_experimental_warning_and_no_other(tmp_path, monkeypatch):
    plot = writer.ovm.plot_pareto_front

    def warning_plot(study, **kw):
        warnings.warn("experimental", optuna.exceptions.ExperimentalWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)
        return plot(study, **kw)

    monkeypatch.setattr(writer.ovm, "plot_pareto_front", warning_plot)
    s = _two_objectives()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _md(tmp_path, [s])
    said = [str(w.message) for w in caught]
    assert "something else" in said and "experimental" not in said


def test_the_report_is_staged_beside_its_folder_under_a_hidden_partial_name(tmp_path, monkeypatch):
    """Staged on the same file system as the report (so the final move takes no space), hidden."""
    staged = []
    write_files = writer._write_files

    def spy(studies, staging, tracker, top):
        staged.append(staging)
        return write_files(studies, staging, tracker, top)

    monkeypatch.setattr(writer, "_write_files", spy)
    out = tmp_path / "reports" / "lab"
    write_report([_study()], out, tracker=None, top=10)
    (staging,) = staged
    assert staging.parent == out.parent and staging.name.startswith(".lab.partial-")
    assert not staging.exists()


def test_the_terminals_own_sentences_are_printed_without_rich_highlighting_their_numbers():
    """On a colour terminal rich colours numbers and quoted strings unless asked not to: the sentences
    cvstudy writes (checks, the single-seed and data warnings, the interval note, each trial's settings,
    the confirmation's comparisons) carry only the colours their markup gives."""
    from cvstudy.orchestrator.stats import Interval, Paired

    ranked = [
        _row(1, 0.7, test=TEST, checks={"small_input": "at 16 px"}, data=("t1", "v", "x")),
        _row(0, 0.6, test=TEST, data=("t2", "v", "x")),
    ]
    configs = [_confirmed(1, "trial 1", [0.7, 0.72]), _confirmed(0, "baseline", [0.6, 0.61])]
    comparison = Paired("trial 1", "baseline", 2, Interval(0.1, 0.01, 2, 0.0, 0.2), 0.04)
    s = _study(ranked=ranked, confirmation=_confirmation(configs, [comparison]))
    buffer = io.StringIO()
    print_study(s, top=10, console=Console(file=buffer, width=400, force_terminal=True, color_system="standard"))
    raw = buffer.getvalue()
    yellow, plain = "\x1b[33m", "\x1b[0m"
    for sentence in (
        f"{yellow}Check:{plain} 1 of 2 complete trials (trial 1): at 16 px\n",
        f"{yellow}Single-seed ranking: each trial of lab trained one seed",
        f"{yellow}These runs trained or were tested on 2 different datasets (column 'data'; digests differ)",
        "\nBrackets: the 95 % interval of a test metric over the test images (Wilson's for accuracy, a bootstrap",
        "\n  trial 1: lr=0.003\n",
        "\ntrial 1 vs baseline: test balanced accuracy difference +0.100 [+0.000, +0.200] over 2 paired seeds, "
        "paired t-test p = 0.04: significant at 0.05\n",
    ):
        assert sentence in raw, sentence


def test_a_report_folder_deep_in_new_folders_is_made_with_its_parents(tmp_path):
    out = tmp_path / "a" / "b" / "lab"
    write_report([_study()], out, tracker=None, top=10)
    assert (out / "report.md").exists()


def test_a_cleanup_that_fails_does_not_hide_the_error_that_stopped_the_report(tmp_path, monkeypatch):
    """The staging folder is already gone when the error rises (a disk unmounted, say): the error a user
    reads is the one that stopped the report, not the clean-up's."""

    def gone(studies, staging, tracker, top):
        staging.rmdir()
        raise OSError("disk full")

    monkeypatch.setattr(writer, "_write_files", gone)
    with pytest.raises(OSError, match="disk full"):
        write_report([_study()], tmp_path / "lab", tracker=None, top=10)


def test_optunas_pareto_front_plot_names_its_axes_after_the_objectives(tmp_path, monkeypatch):
    kept = []
    monkeypatch.setattr(writer, "png", lambda fig: kept.append(fig) or PNG)
    s = _two_objectives()
    _md(tmp_path, [s])
    (pareto,) = [f for f in kept if f.axes and f.axes[0].get_title() == "Pareto-front Plot"]
    assert (pareto.axes[0].get_xlabel(), pareto.axes[0].get_ylabel()) == ("val_acc", "seconds")


def test_operations_count_only_complete_trials_and_warn_below_five_trials_per_varying_operation(tmp_path):
    """Five complete trials over two varying operations (flips and rotation) are fewer than 5 x 2; a pruned
    trial with operations is not one of them, nor is a complete one without."""
    ranked = [
        _row(i, 0.5 + i / 100, test=TEST, augmentation=_ops(0.5 * (i % 2)) | {"rotate": 10.0 * (i % 3)})
        for i in range(5)
    ]
    rows = [*ranked, _row(5, None, "PRUNED", augmentation=_ops(0.5)), _row(6, 0.4, test=TEST)]
    lines = _md(tmp_path, [_study(ranked=ranked, rows=rows, counts=Counts(complete=6, pruned=1))])
    start = lines.index("### Augmentation operations")
    assert "over the 5 complete trials" in lines[start + 2]
    assert lines[start + 4] == (
        "> 5 trials over 2 varying operations: too few for the importances to separate them; read them as a "
        "hint, and the table for what each value gave."
    )
    assert lines[start + 6] == "| operation | importance | balanced accuracy by value: mean (best, trials) |"


def test_the_terminal_leaderboard_right_aligns_numbers_left_aligns_the_run_and_leaves_no_run_empty():
    ranked = [_row(1, 0.7, test=TEST, epochs=5), _row(0, 0.6, test=TEST)]
    ranked[0].run_id = "abcdefghijkl"
    configs = [_confirmed(1, "trial 1", [0.7, 0.72]), _confirmed(0, "baseline", [0.6, 0.61])]
    lines = _printed(_study(ranked=ranked, confirmation=_confirmation(configs, [])))
    start = lines.index(next(line for line in lines if line.startswith("┃ trial")))
    assert [lines[start], *lines[start + 2 : start + 4]] == [
        "┃ trial ┃ value ┃   acc ┃ bal-acc ┃     P ┃     R ┃ F1 ┃ epochs ┃ run      ┃",
        "│     1 │ 0.700 │ 0.612 │   0.599 │ 0.500 │ 0.457 │    │      5 │ abcdefgh │",
        "│     0 │ 0.600 │ 0.612 │   0.599 │ 0.500 │ 0.457 │    │        │          │",
    ]
    assert "confirmation of lab: test metrics, fresh seeds" in " ".join(lines)  # the confirmation's table
    assert any(line.startswith("│ trial 1       │ lr=1   │     2 │") for line in lines)


def test_the_terminals_single_seed_warning_is_yellow_and_its_command_not_highlighted():
    buffer = io.StringIO()
    print_study(_study(), top=10, console=Console(file=buffer, width=400, force_terminal=True, color_system="standard"))
    assert (
        "\x1b[33mSingle-seed ranking: each trial of lab trained one seed, and seeds alone move test metrics by "
        "several points on small data; read gaps smaller than that as ties. `cvstudy confirm lab --top 3 --seeds "
        "5` retrains the best with fresh seeds; a study's `repeats: K` averages K seeds per trial.\x1b[0m\n"
        in buffer.getvalue()
    )
