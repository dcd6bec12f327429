"""The report's assembly on hand-built studies: every sentence, heading and table cell of the Markdown
(the HTML carries the same pieces, escaped), the figures written beside it or the reason each is
missing, the files written whole or not at all, and the terminal's leaderboard. The tables' own cells
are tested in test_report_tables.py; end to end, test_report.py and test_report_numbers.py."""

from __future__ import annotations

import base64
import io

import optuna
import pytest
from rich.console import Console

import cvstudy.orchestrator.report.writer as writer
from cvstudy.orchestrator.report.data import StudyData, TrialRow
from cvstudy.orchestrator.report.writer import Document, print_study, write_report
from cvstudy.orchestrator.sweep.trials import Counts

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
