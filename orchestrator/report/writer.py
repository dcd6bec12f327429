"""``cvstudy report``: leaderboards and plots across trials and studies, cross-checked against MLflow.

Writes, per report, ``report.html`` (self-contained: images embedded as data URIs), ``report.md`` (with
PNGs beside it) and ``trials.csv`` under ``reports/<study>[+<study>...]/``.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from mlflow.entities import RunTag
from optuna.visualization import matplotlib as ovm
from rich.console import Console
from rich.table import Table

from cvstudy.trainers.config import AUG_OPS, COST_METRICS
from cvstudy.trainers.metrics import CI_HIGH, CI_LOW, SCALARS

from ..tracking.client import Tracker
from ..tracking.schema import StudyAttr, Tag
from .augmentation import operation_effects, operations_figure, operations_table
from .checks import study_checks
from .confirmation import ConfirmSummary, comparison_lines, correction_line
from .cost import cost_figure, cost_lines, time_figure
from .data import StudyData, TrialRow, fmt
from .figures import comparison_figure, figures, png, spread_figure
from .paper import write_tables
from .tables import (
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

CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 20px;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f0f3f8}img{max-width:100%;border:1px solid #eee;margin:6px 0}.warn{color:#a15c00}
.grid{display:flex;flex-wrap:wrap;gap:16px}.grid figure{margin:0;flex:1 1 420px}h2{border-bottom:1px solid #ddd}"""
CAPTIONS = {
    "confusion": "best trial: row-normalised test confusion matrix",
    "recall": "best trial: per-class test recall",
    "history": "optimisation history",
    "importances": "parameter importances (Optuna, fANOVA)",
    "parallel": "parallel coordinates",
}


@dataclass
class ReportResult:
    paths: dict[str, Path]
    problems: list[str]
    """Every Optuna/MLflow mismatch found, across the studies (also written into the report)."""


class Document:
    """The report as HTML and Markdown at once: every piece is written to both."""

    def __init__(self, out_dir: Path, title: str):
        self.out_dir = out_dir
        self.html = [
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
        ]
        self.md = [f"# {title}", ""]

    def heading(self, text: str, level: int = 2) -> None:
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md += [f"{'#' * level} {text}", ""]

    def text(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.md += [text, ""]

    def warn(self, text: str) -> None:
        self.html.append(f"<p class='warn'>{html.escape(text)}</p>")
        self.md += [f"> {text}", ""]

    def table(self, columns, rows) -> None:
        self.html.append(html_table(columns, rows))
        self.md += [md_table(columns, rows), ""]

    def image(self, name: str, png: bytes, caption: str) -> None:
        (self.out_dir / f"{name}.png").write_bytes(png)
        data_uri = base64.b64encode(png).decode()
        self.html.append(
            f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data_uri}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        self.md.append(f"![{caption}]({name}.png)")

    def raw_html(self, text: str) -> None:
        self.html.append(text)

    def save(self, html_path: Path, md_path: Path) -> None:
        html_path.write_text("\n".join([*self.html, "</body></html>"]))
        md_path.write_text("\n".join(self.md) + "\n")


def write_report(studies: list[StudyData], out_dir: Path, tracker: Tracker, top: int) -> dict[str, Path]:
    """Write the report's files into ``out_dir`` whole or not at all: they are written into a staging
    folder beside it and moved in at the end (a move takes no space), so a full disk or an error midway
    leaves ``out_dir`` as it was and no partial file anywhere."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        written = _write_files(studies, staging, tracker, top)
        out_dir.mkdir(exist_ok=True)
        for path in staging.iterdir():
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {kind: out_dir / path.name for kind, path in written.items()}


def _write_files(studies: list[StudyData], out_dir: Path, tracker: Tracker, top: int) -> dict[str, Path]:
    doc = Document(out_dir, f"cvstudy report: {', '.join(s.name for s in studies)}")
    if len(studies) > 1:
        _side_by_side(doc, studies)
    for s in studies:
        _study_section(doc, s, top)
        if s.confirmation:
            _confirmation_section(doc, s.name, s.confirmation)
        repeated = [(f"trial {r.number}", r.per_seed) for r in s.ranked[:top] if len(r.per_seed) > 1]
        if repeated:
            doc.image(
                f"{s.name}-seeds",
                spread_figure(f"{s.name}, trials' seeds", repeated),
                f"{s.name}: each trial's seeds, test balanced accuracy",
            )
        doc.raw_html("<div class='grid'>")
        drawn = figures(s, tracker)
        for name, image in drawn.items():
            if isinstance(image, bytes):
                doc.image(f"{s.name}-{name}", image, f"{s.name}: {CAPTIONS[name]}")
        doc.raw_html("</div>")
        for name, why in drawn.items():
            if isinstance(why, str):
                doc.text(f"{s.name}: {CAPTIONS[name]}: not drawn; {why}.")
        doc.md.append("")
    paths = {"html": out_dir / "report.html", "md": out_dir / "report.md", "csv": out_dir / "trials.csv"}
    doc.save(paths["html"], paths["md"])
    write_trials_csv(paths["csv"], [r for s in studies for r in s.rows])
    return paths | write_tables(out_dir, studies)


def _side_by_side(doc: Document, studies: list[StudyData]) -> None:
    doc.heading("Studies side by side")
    columns = [
        "study",
        "objective",
        "complete",
        "pruned",
        "failed",
        "seeds",
        "best trial",
        "best objective",
        "test acc",
        "test bal-acc",
        "test macro F1",
    ]
    bests = [(s, s.ranked[0] if s.ranked else None) for s in studies]
    labels = data_labels([b for _, b in bests if b])
    if labels:
        columns.append("data")
    rows = []
    for s, b in bests:
        rows.append(
            [
                s.name,
                s.objective,
                s.counts.complete,
                s.counts.pruned,
                s.counts.failed,
                b.seeds if b else "",
                b.number if b else "",
                b.cell("objective") if b else "",
                *(b.cell(k) if b else "" for k in ("accuracy", "balanced_accuracy", "macro_f1")),
            ]
            + ([labels.get(b.data, "?") if b else ""] if labels else [])
        )
    doc.table(columns, rows)
    if labels:
        doc.warn(data_warning(labels))
    doc.image("comparison", comparison_figure(studies), "best validation objective vs complete trials, per study")


def _study_section(doc: Document, s: StudyData, top: int) -> None:
    """The study's counts, mismatches, leaderboard and grouped results."""
    doc.heading(f"Study {s.name}")
    for check in study_checks(s).values():
        doc.warn(f"Check: {check}")
    if s.single_seed:
        doc.warn(single_seed_line(s))
    counts = ", ".join(f"{v} {k}" for k, v in dataclasses.asdict(s.counts).items() if v)
    seeds = f" Each trial averages {s.ranked[0].seeds} training seeds (mean ± std)." if not s.single_seed else ""
    if s.multi_objective:
        aims = ", ".join(f"{m} ({d})" for m, d in s.objectives)
        doc.text(
            f"Objectives: {aims}. Ranked by Pareto front, then by {s.objective} (the leaderboard's value): "
            f"the best trial is the best {s.objective} among the Pareto-optimal trials. Trials: {counts}.{seeds}"
        )
    else:
        doc.text(f"Objective: {s.objective} ({s.direction}). Trials: {counts}.{seeds}")
    if line := interval_line(s.ranked):
        doc.text(line)
    for p in s.problems:
        doc.warn(f"Optuna/MLflow mismatch: {p}")
    labels = data_labels(s.ranked)
    if labels:
        doc.warn(data_warning(labels))
    doc.heading("Leaderboard", 3)
    doc.table(LEADER_COLUMNS + (("data",) if labels else ()), [leader_cells(r, labels) for r in s.ranked[:top]])
    columns, rows = group_rows(s)
    note = (
        "Best trial of each group, chosen on validation; test metrics on its selected checkpoint. "
        "F1 is scikit-learn's macro F1."
    )
    if any(c.startswith("published") for c in columns):
        note += (
            " Published: the original study's table, selected on the test set; its F1* is the harmonic mean "
            "of macro precision and macro recall."
        )
    if any(c is not None for c in s.versus_best.values()):
        note += (
            " bal-acc - best's: the group's best minus the study's best on the same test images, with the 95 % "
            "interval of a paired bootstrap; McNemar p: the exact test of equal accuracy on the images the two "
            "disagree on, as it stands and Holm-adjusted over the groups compared (read significance on the latter)."
        )
    if s.confirmation:
        note += (
            " Confirmed: the group's best confirmed configuration retrained with fresh seeds "
            "(cvstudy confirm), mean ± std over n seeds."
        )
    doc.heading("Results by model, pretrained and augmentation", 3)
    doc.text(note)
    doc.table(columns, rows)
    _pareto_section(doc, s)
    _operations_section(doc, s)
    _cost_section(doc, s)


def _pareto_section(doc: Document, s: StudyData) -> None:
    """A multi-objective study's Pareto front: its trials' objectives, and Optuna's Pareto-front plot."""
    if not s.multi_objective:
        return
    front = s.pareto
    metrics = [m for m, _ in s.objectives]
    doc.heading("Pareto front", 3)
    doc.text(
        f"{len(front)} of {len(s.complete)} complete trials are Pareto-optimal: no other complete trial is at "
        f"least as good on every objective and better on one. Objectives on validation or on the model; test "
        "metrics on each trial's selected checkpoint, never used to choose."
    )
    doc.table(
        ["trial", *metrics, "test bal-acc", "params"],
        [
            [r.number, *(fmt(r.values.get(m)) for m in metrics), r.cell("balanced_accuracy"), r.params_text]
            for r in front
        ],
    )
    if len(metrics) <= 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ax = ovm.plot_pareto_front(s.optuna_study, target_names=metrics)
        doc.image(f"{s.name}-pareto", png(ax.figure), f"{s.name}: Pareto front (Optuna), complete trials")


def _cost_section(doc: Document, s: StudyData) -> None:
    """Cost beside accuracy: device time, pruning's savings, accuracy against cost, time to accuracy."""
    lines = cost_lines(s)
    if not lines:
        return
    doc.heading("Cost", 3)
    doc.text(
        " ".join(lines) + " Device time is what the runs logged (training and validation epochs); "
        "GFLOPs are one image's forward pass at the run's input size; inference throughput is batch 32 on "
        "the run's device."
    )
    for name, fig, caption in (
        ("cost", cost_figure(s), "objective against cost, Pareto front marked"),
        ("time", time_figure(s), "best objective so far against device time spent"),
    ):
        if fig is not None:
            doc.image(f"{s.name}-{name}", png(fig), f"{s.name}: {caption}")


def _operations_section(doc: Document, s: StudyData) -> None:
    """Which augmentation operations helped, on the effective values (presets resolved)."""
    effects = operation_effects(s)
    if not effects:
        return
    n = sum(1 for r in s.rows if r.state == "COMPLETE" and r.augmentation)
    doc.heading("Augmentation operations", 3)
    doc.text(
        f"Each operation's effective value over the {n} complete trials (a preset counts as its operations): "
        "Optuna's fANOVA importance (shares of the objective's variance the operations explain, summing to "
        f"1 over them), and {s.objective} by value. Selected on validation; single trials are noisy, see "
        "the seeds behind each."
    )
    if n < 5 * len(effects):  # fANOVA's forest needs several trials per dimension to separate them
        doc.warn(
            f"{n} trials over {len(effects)} varying operations: too few for the importances to separate "
            "them; read them as a hint, and the table for what each value gave."
        )
    doc.table(*operations_table(effects, s.objective))
    doc.image(f"{s.name}-operations", png(operations_figure(s, effects)), f"{s.name}: objective by operation")


def _confirmation_section(doc: Document, name: str, summary: ConfirmSummary) -> None:
    c_cols, c_rows, p_cols, p_rows = confirmation_rows(summary)
    doc.heading("Confirmation with fresh seeds", 3)
    doc.text(
        f"`cvstudy confirm` retrained these configurations with the same fresh seeds each (seed i of one "
        f"pairs with seed i of another), full epochs, selected on validation, tested once per run; "
        f"MLflow experiment {name}-confirm."
    )
    doc.table(c_cols, c_rows)
    if correction := correction_line(summary):
        doc.text(correction + ".")
    doc.table(p_cols, p_rows)
    if summary.mixed_data:
        doc.warn("The confirmation's runs did not all use the same data (their digests differ).")
    groups = [(c.label, list(c.per_seed["balanced_accuracy"].values())) for c in summary.configs]
    doc.image(
        f"{name}-spread",
        spread_figure(f"{name}, confirmation", groups),
        f"{name}: confirmation, test balanced accuracy per seed",
    )


# Columns of trials.csv printed with other than 6 decimals (integers and text print as they are).
_CSV_DIGITS = {"seconds": 1, "device_seconds": 3, "epochs": 4}


def trial_table(rows: list[TrialRow]) -> tuple[list[str], list[list], set[str]]:
    """One row per trial: effective parameters, objective, test metrics (their std over seeds, or their
    interval over the test images), cost, data digests; raw values, None where nothing was recorded.
    Also the columns of settings, which print as they are. ``trials.csv`` prints it; ``cvstudy.results``
    returns it as a DataFrame."""
    param_names = sorted({k for r in rows for k in r.params})
    op_names = [op for op in AUG_OPS if op not in param_names]  # every operation's effective value
    # further objectives that are not a cost column already (their value: objective_<metric>)
    further = dict.fromkeys(m for r in rows for m in list(r.values)[1:])
    others = [f"objective_{m}" for m in further if m not in COST_METRICS]
    columns = [
        "study",
        "trial",
        "state",
        "seeds",
        "objective",
        "objective_std",
        *others,
        "pareto_optimal",
        *param_names,
        *op_names,
        "changed_by_overrides",
        *(f"test_{k}" for k in SCALARS),
        *(f"test_{k}_std" for k in SCALARS),
        *(f"test_{k}_{end}" for k in SCALARS for end in (CI_LOW, CI_HIGH)),
        "epochs",
        "seconds",
        *COST_METRICS,
        "device_seconds",
        "data_digest_train",
        "data_digest_val",
        "data_digest_test",
        "mlflow_run_id",
    ]
    table = []
    for r in rows:
        changed = "; ".join(f"{k}: sampled {a} -> {b}" for k, (a, b) in r.changed.items())
        table.append(
            [
                r.study,
                r.number,
                r.state,
                r.seeds,
                r.value,
                r.std.get("objective"),
                *(r.values.get(m.removeprefix("objective_")) for m in others),
                r.pareto_optimal,
                *(r.params.get(k) for k in param_names),
                *(r.augmentation.get(k) for k in op_names),
                changed,
                *(r.test.get(k) for k in SCALARS),
                *(r.std.get(k) for k in SCALARS),
                *(r.intervals[k][i] if k in r.intervals else None for k in SCALARS for i in (0, 1)),
                r.epochs,
                r.seconds,
                *(r.cost.get(k) for k in COST_METRICS),
                r.device_seconds,
                *(r.data or (None, None, None)),
                r.run_id,
            ]
        )
    return columns, table, {*param_names, *op_names}


def write_trials_csv(path: Path, rows: list[TrialRow]) -> None:
    """``trial_table`` as CSV: measured floats to 6 decimals (seconds 1, device seconds 3), settings as
    they are, Pareto-optimal as ``yes``, nothing recorded as an empty cell."""
    columns, table, settings = trial_table(rows)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for values in table:
            writer.writerow([_csv_cell(name, v, name in settings) for name, v in zip(columns, values)])


def _csv_cell(column: str, value, as_is: bool) -> str:
    if value is None:
        return ""
    if as_is:
        return str(value)
    if column == "pareto_optimal":
        return "yes" if value else ""
    return fmt(value, _CSV_DIGITS.get(column, 6))


def log_checks(tracker: Tracker, s: StudyData) -> None:
    """The study's checks that fire, as tags on its parent run (where MLflow users look for them)."""
    parent = s.optuna_study.user_attrs.get(StudyAttr.PARENT_RUN_ID)
    fired = study_checks(s)
    if parent and fired:
        tracker.client.log_batch(parent, tags=[RunTag(Tag.check(name), line[:5000]) for name, line in fired.items()])


def print_study(s: StudyData, top: int, console: Console) -> None:
    """The study's leaderboard, compact for an 80-column terminal (the files carry every column)."""
    order = f"Pareto front, then {s.objective}" if s.multi_objective else s.objective
    table = Table(
        caption="value: validation objective; acc .. F1: test, macro P/R/F1",
        title=f"study {s.name}: top {min(top, len(s.ranked))} by {order} "
        f"({s.counts.complete} complete, {s.counts.pruned} pruned, {s.counts.failed} failed)",
    )
    table.add_column("trial", justify="right")
    for c in ("value", "acc", "bal-acc", "P", "R", "F1", "epochs", "run"):
        table.add_column(c, justify="left" if c == "run" else "right")
    for r in s.ranked[:top]:
        table.add_row(
            str(r.number), r.cell("objective", 3), *(r.cell(k, 3) for k in SCALARS), fmt(r.epochs), (r.run_id or "")[:8]
        )
    for check in study_checks(s).values():
        console.print(f"[yellow]Check:[/] {check}", highlight=False)
    if s.single_seed:
        console.print(f"[yellow]{single_seed_line(s)}[/]", highlight=False)
    labels = data_labels(s.ranked)
    if labels:
        console.print(f"[yellow]{data_warning(labels)}[/]", highlight=False)
    console.print(table)
    if line := interval_line(s.ranked[:top]):
        console.print(line, highlight=False)
    for r in s.ranked[:top]:
        console.print(f"  trial {r.number}: {r.params_text}", highlight=False)
    for p in s.problems:
        console.print(f"[yellow]Optuna/MLflow mismatch:[/] {p}")
    if s.confirmation:
        console.print(summary_table(s.confirmation))
        for line in comparison_lines(s.confirmation):
            console.print(line, highlight=False)
