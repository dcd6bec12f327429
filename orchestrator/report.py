"""``cvstudy report``: leaderboards and plots across trials and studies, cross-checked against MLflow.

Writes, per report, ``report.html`` (self-contained: images embedded as data URIs), ``report.md`` (with
PNGs beside it) and ``trials.csv`` under ``reports/<study>[+<study>...]/``.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .progress import format_params
from .report_figures import comparison_figure, figures, spread_figure
from .report_tables import (confirmation_rows, data_labels, data_warning, html_table, md_table,
                            single_seed_line)
from .tracking import TAG, Tracker
from .trials import (Counts, changed_params, count_trials, current_trials, effective_params, expected_run_statuses,
                     ranked_complete, study_runs)

METRICS = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1")
# The original study's published table (README of DSBA_CV_Study): accuracy, macro precision, macro recall,
# and its "F1" = harmonic mean of macro precision and macro recall (not scikit-learn's macro F1).
PUBLISHED = {
    ("resnet50", False): (0.68, 0.7200, 0.6815, 0.7002),
    ("resnet50", True): (0.68, 0.7261, 0.6809, 0.7028),
    ("vit_s16", False): (0.49, 0.5777, 0.4932, 0.5321),
    ("vit_s16", True): (0.98, 0.9824, 0.9821, 0.9822),
}


class ReportError(ValueError):
    """A missing or empty study; one line for the user."""


@dataclass
class TrialRow:
    study: str
    number: int
    state: str
    value: float | None
    params: dict
    """The searched settings as they trained (effective values, after overrides and flags)."""
    run_id: str | None
    test: dict = field(default_factory=dict)
    epochs: int | None = None
    seconds: float | None = None
    config: dict = field(default_factory=dict)
    changed: dict = field(default_factory=dict)
    """Searched settings an override changed after sampling: {key: (sampled, effective)}."""
    seeds: int = 1
    """Training seeds behind the row's figures (a study's ``repeats``)."""
    std: dict = field(default_factory=dict)
    """Standard deviation over seeds of the test metrics (and ``objective``), when seeds > 1."""
    data: tuple = ()
    """The run's (train, validation, test) data digests."""
    per_seed: list = field(default_factory=list)
    """Test balanced accuracy of each finished seed run, when seeds > 1."""

    def cell(self, key: str, digits: int = 4) -> str:
        """A test metric (or ``objective``) as ``mean ± std`` when several seeds stand behind it."""
        value = self.value if key == "objective" else self.test.get(key)
        if value is None:
            return ""
        return _fmt(value, digits) + (f" ± {_fmt(self.std[key], digits)}" if key in self.std else "")

    @property
    def params_text(self) -> str:
        text = format_params(self.params)
        if self.changed:
            text += " (changed by overrides: " + ", ".join(f"{k} sampled {a} -> {b}" for k, (a, b) in self.changed.items()) + ")"
        return text


@dataclass
class StudyData:
    name: str
    objective: str
    direction: str
    rows: list[TrialRow]
    counts: Counts
    problems: list[str]
    optuna_study: object
    ranked: list[TrialRow] = field(default_factory=list)
    """Complete trials, best first (``trials.ranked_complete``: the one ranking sweep and predict use)."""
    confirmation: object = None
    """``confirm.ConfirmSummary`` when ``cvstudy confirm`` ran on the study."""

    @property
    def single_seed(self) -> bool:
        return all(r.seeds == 1 for r in self.ranked)


@dataclass
class ReportResult:
    paths: dict[str, Path]
    problems: list[str]
    """Every Optuna/MLflow mismatch found, across the studies (also written into the report)."""


def _load(name: str, storage, tracker: Tracker) -> StudyData:
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise ReportError(f"no study named {name!r} in the storage (studies there: {', '.join(names) or 'none'})") from None
    objective = study.user_attrs.get("objective", "objective")
    exp = tracker.client.get_experiment_by_name(name)
    runs = study_runs(tracker.client, exp.experiment_id, name) if exp is not None else {}
    every_run_id = {t.user_attrs.get("mlflow_run_id") for t in study.get_trials(deepcopy=False)}
    seed_runs: dict[str, list] = {}
    for r in runs.values():
        if r.data.tags.get(f"{TAG}.role") == "seed":
            seed_runs.setdefault(r.data.tags.get("mlflow.parentRunId"), []).append(r)
    rows, problems = [], []
    for t in current_trials(study):
        run_id = t.user_attrs.get("mlflow_run_id")
        row = TrialRow(name, t.number, t.state.name, t.value, effective_params(t), run_id,
                       seconds=(t.datetime_complete - t.datetime_start).total_seconds()
                       if t.datetime_complete and t.datetime_start else None, changed=changed_params(t))
        run = runs.get(run_id) if run_id else None
        if run_id is None:
            if t.state.name in ("COMPLETE", "PRUNED"):
                problems.append(f"trial {t.number} ({t.state.name}) names no MLflow run")
        elif run is None:
            problems.append(f"trial {t.number}: MLflow run {run_id} not found among study {name}'s runs at {tracker.uri}")
        else:
            tags, m = run.data.tags, run.data.metrics
            if tags.get(f"{TAG}.trial_number") != str(t.number):
                problems.append(f"trial {t.number}: run {run_id} is tagged as trial {tags.get(f'{TAG}.trial_number')}")
            expected = expected_run_statuses(t)
            if expected and run.info.status not in expected:
                problems.append(f"trial {t.number} is {t.state.name} but run {run_id} is {run.info.status}")
            row.test = {k: m[f"test_{k}"] for k in METRICS if f"test_{k}" in m}
            row.epochs = int(m["epochs_run"]) if "epochs_run" in m else None
            row.config = dict(run.data.params)
            row.data = tuple(tags.get(f"{TAG}.data_digest.{split}") for split in ("train", "val", "test"))
            row.seeds = int(m.get("seeds", 1))
            if row.seeds > 1:
                row.std = {k: m[f"test_{k}_std"] for k in METRICS if f"test_{k}_std" in m}
                if "objective_std" in m:
                    row.std["objective"] = m["objective_std"]
                finished = [r for r in seed_runs.get(run_id, []) if r.info.status == "FINISHED"]
                row.per_seed = [r.data.metrics["test_balanced_accuracy"] for r in finished
                                if "test_balanced_accuracy" in r.data.metrics]
                if t.state.name == "COMPLETE" and len(finished) != row.seeds:
                    problems.append(f"trial {t.number}: run {run_id} averages {row.seeds} seeds but "
                                    f"{len(finished)} finished seed runs are nested under it")
        rows.append(row)
    roles = ("study", "seed")  # seed runs are nested under their trial's run, and checked there
    orphans = [rid for rid, r in runs.items() if r.data.tags.get(f"{TAG}.role") not in roles and rid not in every_run_id]
    if orphans:
        problems.append(f"{len(orphans)} MLflow run(s) of study {name} match no trial: {', '.join(orphans[:3])}")
    by_number = {r.number: r for r in rows}
    order = ranked_complete(study)
    ranked = [by_number[t.number] for t in order]
    from .confirm import summarise

    confirmation = summarise(tracker.client, name, [t.number for t in order])
    return StudyData(name, objective, study.direction.name.lower(), rows, count_trials(study), problems, study, ranked,
                     confirmation)


def _fmt(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


LEADER_COLUMNS = ("study", "trial", "state", "params", "seeds", "objective", "test acc", "test bal-acc", "macro P",
                  "macro R", "macro F1", "epochs", "seconds", "MLflow run")


def _leader_cells(r: TrialRow, labels: dict | None = None) -> list[str]:
    cells = [r.study, str(r.number), r.state, r.params_text, str(r.seeds), r.cell("objective"),
             *(r.cell(k) for k in METRICS), _fmt(r.epochs), _fmt(r.seconds, 1), r.run_id or ""]
    return cells + [labels.get(r.data, "?")] if labels else cells


def _group_key(r: TrialRow) -> tuple:
    c = r.config
    return (c.get("model", "?"), c.get("pretrained", "?"), c.get("aug", "?"))


def grouped(data: StudyData) -> list[tuple[tuple, TrialRow]]:
    """Best complete trial (by the validation objective) of each model x pretrained x augmentation group."""
    best: dict[tuple, TrialRow] = {}
    for r in data.ranked:
        best.setdefault(_group_key(r), r)
    return sorted(best.items())


# ----------------------------------------------------------------------------- writing
def _group_rows(data: StudyData) -> tuple[list[str], list[list[str]]]:
    columns = ["model", "pretrained", "augmentation", "trial", "seeds", "Accuracy", "Precision", "Recall",
               "F1 (macro)", "balanced acc"]
    show_published = any(m in ("resnet50", "vit_s16") for (m, _, _), _ in grouped(data)) and data.name.startswith("seed")
    if show_published:
        columns += ["published Acc", "published P", "published R", "published F1*"]
    confirmed = {c.trial: c for c in data.confirmation.configs} if data.confirmation else {}
    if confirmed:
        columns += ["confirmed trial", "confirmed Accuracy", "confirmed F1 (macro)", "confirmed balanced acc"]
    by_number = {r.number: r for r in data.ranked}
    rows = []
    for (model, pretrained, aug), r in grouped(data):
        row = [model, pretrained, aug, r.number, r.seeds, *(r.cell(k) for k in
                                                  ("accuracy", "macro_precision", "macro_recall", "macro_f1",
                                                   "balanced_accuracy"))]
        if confirmed:
            # the group's best confirmed configuration (by the study's validation ranking)
            c = next((confirmed[n] for n in (x.number for x in data.ranked) if n in confirmed
                      and _group_key(by_number[n]) == (model, pretrained, aug)), None)
            row += [c.trial if c else ""] + [(iv.text(4) if (iv := c.interval(m)) else "") if c else ""
                                             for m in ("accuracy", "macro_f1", "balanced_accuracy")]
        if show_published:
            pub = PUBLISHED.get((model, str(pretrained).lower() == "true"))
            row += [f"{v:.4f}" for v in pub] if pub else ["", "", "", ""]
        rows.append(row)
    return columns, rows


CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 20px;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f0f3f8}img{max-width:100%;border:1px solid #eee;margin:6px 0}.warn{color:#a15c00}
.grid{display:flex;flex-wrap:wrap;gap:16px}.grid figure{margin:0;flex:1 1 420px}h2{border-bottom:1px solid #ddd}"""


def write_report(studies: list[StudyData], out_dir: Path, tracker: Tracker, top: int) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    html_parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>cvstudy report: "
                  f"{html.escape(', '.join(s.name for s in studies))}</title><style>{CSS}</style></head><body>",
                  f"<h1>cvstudy report: {html.escape(', '.join(s.name for s in studies))}</h1>"]
    md = [f"# cvstudy report: {', '.join(s.name for s in studies)}", ""]

    def img(name: str, png: bytes, caption: str) -> None:
        (out_dir / f"{name}.png").write_bytes(png)
        data_uri = base64.b64encode(png).decode()
        html_parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data_uri}'>"
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        md.append(f"![{caption}]({name}.png)")

    if len(studies) > 1:
        html_parts.append("<h2>Studies side by side</h2>")
        md += ["## Studies side by side", ""]
        columns = ["study", "objective", "complete", "pruned", "failed", "best trial", "best objective",
                   "test acc", "test bal-acc", "test macro F1"]
        columns.insert(5, "seeds")
        bests = [(s, (s.ranked or [None])[0]) for s in studies]
        labels = data_labels([b for _, b in bests if b])
        if labels:
            columns.append("data")
        rows = []
        for s, b in bests:
            rows.append([s.name, s.objective, s.counts.complete, s.counts.pruned, s.counts.failed,
                         b.seeds if b else "", b.number if b else "", b.cell("objective") if b else "",
                         *(b.cell(k) if b else "" for k in ("accuracy", "balanced_accuracy", "macro_f1"))]
                        + ([labels.get(b.data, "?") if b else ""] if labels else []))
        html_parts.append(html_table(columns, rows))
        md += [md_table(columns, rows), ""]
        if labels:
            html_parts.append(f"<p class='warn'>{html.escape(data_warning(labels))}</p>")
            md += [f"> {data_warning(labels)}", ""]
        img("comparison", comparison_figure(studies), "best validation objective vs complete trials, per study")

    all_rows = []
    for s in studies:
        all_rows += s.rows
        html_parts.append(f"<h2>Study {html.escape(s.name)}</h2>")
        md += [f"## Study {s.name}", ""]
        if s.single_seed:
            html_parts.append(f"<p class='warn'>{html.escape(single_seed_line(s))}</p>")
            md += [f"> {single_seed_line(s)}", ""]
        counts = ", ".join(f"{v} {k}" for k, v in dataclasses.asdict(s.counts).items() if v)
        seeds = f" Each trial averages {s.ranked[0].seeds} training seeds (mean ± std)." if not s.single_seed else ""
        html_parts.append(f"<p>Objective: {html.escape(s.objective)} ({s.direction}). Trials: {html.escape(counts)}."
                          f"{html.escape(seeds)}</p>")
        md += [f"Objective: {s.objective} ({s.direction}). Trials: {counts}.{seeds}", ""]
        for p in s.problems:
            html_parts.append(f"<p class='warn'>Optuna/MLflow mismatch: {html.escape(p)}</p>")
            md.append(f"> Optuna/MLflow mismatch: {p}")
        ranked = s.ranked[:top]
        labels = data_labels(s.ranked)
        columns = LEADER_COLUMNS + (("data",) if labels else ())
        if labels:
            html_parts.append(f"<p class='warn'>{html.escape(data_warning(labels))}</p>")
            md += [f"> {data_warning(labels)}", ""]
        cells = [_leader_cells(r, labels) for r in ranked]
        html_parts.append("<h3>Leaderboard</h3>" + html_table(columns, cells))
        md += ["### Leaderboard", "", md_table(columns, cells), ""]
        columns, rows = _group_rows(s)
        note = ("Best trial of each group, chosen on validation; test metrics on its selected checkpoint. "
                "F1 is scikit-learn's macro F1.")
        if any(c.startswith("published") for c in columns):
            note += (" Published: the original study's table, selected on the test set; its F1* is the harmonic mean "
                     "of macro precision and macro recall.")
        if s.confirmation:
            note += (" Confirmed: the group's best confirmed configuration retrained with fresh seeds "
                     "(cvstudy confirm), mean ± std over n seeds.")
        html_parts.append(f"<h3>Results by model, pretrained and augmentation</h3><p>{html.escape(note)}</p>"
                          + html_table(columns, rows))
        md += ["### Results by model, pretrained and augmentation", "", note, "", md_table(columns, rows), ""]
        if s.confirmation:
            c_cols, c_rows, p_cols, p_rows = confirmation_rows(s.confirmation)
            text = (f"`cvstudy confirm` retrained these configurations with the same fresh seeds each (seed i of one "
                    f"pairs with seed i of another), full epochs, selected on validation, tested once per run; "
                    f"MLflow experiment {s.name}-confirm.")
            html_parts.append(f"<h3>Confirmation with fresh seeds</h3><p>{html.escape(text)}</p>"
                              + html_table(c_cols, c_rows) + html_table(p_cols, p_rows))
            md += ["### Confirmation with fresh seeds", "", text, "", md_table(c_cols, c_rows), "",
                   md_table(p_cols, p_rows), ""]
            if s.confirmation.mixed_data:
                warning = "The confirmation's runs did not all use the same data (their digests differ)."
                html_parts.append(f"<p class='warn'>{html.escape(warning)}</p>")
                md += [f"> {warning}", ""]
            groups = [(c.label, list(c.per_seed["balanced_accuracy"].values())) for c in s.confirmation.configs]
            img(f"{s.name}-spread", spread_figure(f"{s.name}, confirmation", groups),
                f"{s.name}: confirmation, test balanced accuracy per seed")
        repeated = [(f"trial {r.number}", r.per_seed) for r in ranked if len(r.per_seed) > 1]
        if repeated:
            img(f"{s.name}-seeds", spread_figure(f"{s.name}, trials' seeds", repeated),
                f"{s.name}: each trial's seeds, test balanced accuracy")
        html_parts.append("<div class='grid'>")
        captions = {"confusion": "best trial: row-normalised test confusion matrix",
                    "recall": "best trial: per-class test recall", "history": "optimisation history",
                    "importances": "parameter importances (Optuna, fANOVA)", "parallel": "parallel coordinates"}
        for name, png in figures(s, tracker).items():
            img(f"{s.name}-{name}", png, f"{s.name}: {captions[name]}")
        html_parts.append("</div>")
        md.append("")
    html_parts.append("</body></html>")
    paths = {"html": out_dir / "report.html", "md": out_dir / "report.md", "csv": out_dir / "trials.csv"}
    paths["html"].write_text("\n".join(html_parts))
    paths["md"].write_text("\n".join(md) + "\n")
    with open(paths["csv"], "w", newline="") as fh:
        param_names = sorted({k for r in all_rows for k in r.params})
        writer = csv.writer(fh)
        writer.writerow(["study", "trial", "state", "seeds", "objective", "objective_std", *param_names,
                         "changed_by_overrides", *(f"test_{k}" for k in METRICS), *(f"test_{k}_std" for k in METRICS),
                         "epochs", "seconds", "data_digest_train", "data_digest_val", "data_digest_test",
                         "mlflow_run_id"])
        for r in all_rows:
            changed = "; ".join(f"{k}: sampled {a} -> {b}" for k, (a, b) in r.changed.items())
            writer.writerow([r.study, r.number, r.state, r.seeds, _fmt(r.value, 6), _fmt(r.std.get("objective"), 6),
                             *(r.params.get(k, "") for k in param_names), changed,
                             *(_fmt(r.test.get(k), 6) for k in METRICS), *(_fmt(r.std.get(k), 6) for k in METRICS),
                             _fmt(r.epochs), _fmt(r.seconds, 1), *(r.data or ("", "", "")), r.run_id or ""])
    return paths


def report(study_names: list[str], storage_url: str | None = None, tracking_uri: str | None = None,
           out: str | None = None, top: int = 10, console: Console | None = None) -> ReportResult:
    import optuna

    from .storage import default_storage, open_storage

    console = console or Console()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tracker = Tracker(tracking_uri)
    storage_url = storage_url or default_storage(tracker.uri)
    if storage_url.startswith("sqlite:///") and not Path(storage_url[len("sqlite:///"):]).exists():
        raise ReportError(f"{storage_url[len('sqlite:///'):]}: no Optuna storage here; run `cvstudy sweep` first "
                          "or pass --storage")
    storage = open_storage(storage_url)
    if not study_names:
        study_names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if not study_names:
            raise ReportError(f"no studies in {storage_url}; run `cvstudy sweep` first")
    studies = [_load(name, storage, tracker) for name in study_names]
    for s in studies:
        if not s.ranked:
            raise ReportError(f"study {s.name!r} has no complete trials yet ({s.counts})")
    for s in studies:
        table = Table(caption="value: validation objective; acc .. F1: test, macro P/R/F1", title=f"study {s.name}: top {min(top, len(s.ranked))} by {s.objective} "
                            f"({s.counts.complete} complete, {s.counts.pruned} pruned, {s.counts.failed} failed)")
        # Compact for an 80-column terminal; the HTML/Markdown/CSV carry every column and the parameters.
        table.add_column("trial", justify="right")
        for c in ("value", "acc", "bal-acc", "P", "R", "F1", "epochs", "run"):
            table.add_column(c, justify="left" if c == "run" else "right")
        for r in s.ranked[:top]:
            table.add_row(str(r.number), r.cell("objective", 3), *(r.cell(k, 3) for k in METRICS),
                          _fmt(r.epochs), (r.run_id or "")[:8])
        if s.single_seed:
            console.print(f"[yellow]{single_seed_line(s)}[/]", highlight=False)
        labels = data_labels(s.ranked)
        if labels:
            console.print(f"[yellow]{data_warning(labels)}[/]", highlight=False)
        console.print(table)
        for r in s.ranked[:top]:
            console.print(f"  trial {r.number}: {r.params_text}", highlight=False)
        for p in s.problems:
            console.print(f"[yellow]Optuna/MLflow mismatch:[/] {p}")
        if s.confirmation:
            from .confirm import comparison_lines, summary_table

            console.print(summary_table(s.confirmation))
            for line in comparison_lines(s.confirmation):
                console.print(line, highlight=False)
    out_dir = Path(out) if out else Path("reports") / "+".join(s.name for s in studies)
    paths = write_report(studies, out_dir, tracker, top)
    console.print(f"wrote {paths['html']}, {paths['md']}, {paths['csv']}")
    return ReportResult(paths, [p for s in studies for p in s.problems])
