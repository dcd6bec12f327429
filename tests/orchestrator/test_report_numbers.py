"""Every number the report prints, checked by another route than the report's own code.

The study trains on data whose test labels were partly moved to other classes, so each run's test
metrics differ from its validation metrics (and from one another): a report that printed validation
figures, or one metric in another's column, fails here. The expected values come from MLflow's own
client (what the runs logged) and from scikit-learn applied to each run's logged test confusion matrix
(counts, expanded back into label pairs), never from cvstudy's report code.
"""

from __future__ import annotations

import csv
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_recall_fscore_support
from statsmodels.stats.proportion import proportion_confint

from cvstudy.orchestrator.commands.report import report
from cvstudy.orchestrator.sweep.manager import SweepSettings, sweep
from cvstudy.orchestrator.sweep.study import load_study_spec
from cvstudy.orchestrator.tracking.schema import run_metrics
from tests.conftest import make_arrays, write_dataset
from tests.orchestrator.test_sweep import study_file

# What each test-metric column holds, by its name in the files.
CSV_COLUMNS = {
    "test_accuracy": "accuracy",
    "test_balanced_accuracy": "balanced_accuracy",
    "test_macro_precision": "macro_precision",
    "test_macro_recall": "macro_recall",
    "test_macro_f1": "macro_f1",
}
LEADER_COLUMNS = {
    "test acc": "accuracy",
    "test bal-acc": "balanced_accuracy",
    "macro P": "macro_precision",
    "macro R": "macro_recall",
    "macro F1": "macro_f1",
}
GROUP_COLUMNS = {
    "Accuracy": "accuracy",
    "Precision": "macro_precision",
    "Recall": "macro_recall",
    "F1 (macro)": "macro_f1",
    "balanced acc": "balanced_accuracy",
}
CSV_PRINTED = 1e-6 / 2 + 1e-12  # trials.csv prints 6 decimals: half a unit of the last digit
CELL = re.compile(r"(\d+\.(\d+)) \[(\d+\.\d+), (\d+\.\d+)\]")  # 0.655 [0.626, 0.684]


def skewed_test_labels(arrays: dict) -> dict:
    """Move some test labels to another class: the model (which learns the colours) then scores
    differently on test than on validation, and its five test metrics differ from one another."""
    y = arrays["test_target.npy"].copy()
    classes = np.unique(y)
    first = [np.flatnonzero(y == c) for c in classes]
    y[first[0][:5]] = classes[1]  # five of class 0 now say class 1
    y[first[2][:2]] = classes[0]  # two of class 2 now say class 0
    return {**arrays, "test_target.npy": y}


def wilson_from_statsmodels(matrix: list[list[int]]) -> tuple[float, float]:
    """Accuracy's 95 % Wilson interval, by statsmodels, from the counts on the diagonal."""
    return proportion_confint(int(np.trace(matrix)), int(np.sum(matrix)), alpha=0.05, method="wilson")


def check_cell(cell: str, value: float, interval: tuple[float, float]) -> None:
    """A table's cell holds ``value [low, high]`` to the decimals it prints (half a unit of the last)."""
    found = CELL.fullmatch(cell)
    assert found, cell
    printed = 10 ** -len(found[2]) / 2 + 1e-12
    assert float(found[1]) == pytest.approx(value, abs=printed), cell
    assert (float(found[3]), float(found[4])) == pytest.approx(interval, abs=printed), cell


def sklearn_metrics(matrix: list[list[int]]) -> dict[str, float]:
    """The five test metrics from a confusion matrix (rows true, columns predicted), by scikit-learn on
    the label pairs the counts stand for."""
    pairs = [(t, p) for t, row in enumerate(matrix) for p, n in enumerate(row) for _ in range(n)]
    y_true, y_pred = np.array(pairs).T
    labels = np.arange(len(matrix))
    p, r, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return {
        "accuracy": accuracy_score(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
        "macro_precision": p,
        "macro_recall": r,
        "macro_f1": f1,
    }


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A real 3-trial sweep of a tiny model on skewed-test data, and its report; the oracle's values."""
    root = tmp_path_factory.mktemp("report-numbers")
    data = write_dataset(root / "data", skewed_test_labels(make_arrays(n_test=12)))
    before = os.getcwd()
    os.chdir(root)
    try:
        spec = load_study_spec(study_file(root, data, "  lr: [3.0e-3, 1.0e-2, 5.0e-2]", "none", "grid", epochs=3))
        storage = f"sqlite:///{root / 'optuna.db'}"
        sweep(spec, SweepSettings(storage_url=storage, trials=3))
        result = report(["tiny"], storage_url=storage)
        result.paths = {k: (root / p).resolve() for k, p in result.paths.items()}
    finally:
        os.chdir(before)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = {}
    for run in client.search_runs([experiment.experiment_id]):
        if run.data.tags.get("cvstudy.role") != "trial":
            continue
        matrix = json.loads(Path(client.download_artifacts(run.info.run_id, "confusion_matrix.json", root)).read_text())
        metrics = run_metrics(run)  # the bootstrap intervals as the run logged them (tests/trainers checks them)
        intervals = {k: (metrics[f"test_{k}_ci_low"], metrics[f"test_{k}_ci_high"]) for k in CSV_COLUMNS.values()}
        intervals["accuracy"] = wilson_from_statsmodels(matrix["matrix"])
        runs[run.info.run_id] = {"run": run, "sklearn": sklearn_metrics(matrix["matrix"]), "intervals": intervals}
    return result, runs


def test_the_premise_test_metrics_differ_from_validation_and_from_one_another(reported):
    """Without this the checks below could not tell a swapped column from a right one. Balanced accuracy
    is macro recall by definition (the mean of per-class recalls), so four values differ, not five."""
    _, runs = reported
    assert len(runs) == 3
    metrics = [run_metrics(e["run"]) for e in runs.values()]
    for m in metrics:
        assert m["test_balanced_accuracy"] == pytest.approx(m["test_macro_recall"], abs=1e-12)
        assert abs(m["test_balanced_accuracy"] - m["val_balanced_accuracy"]) > 1e-3
    distinct = ("accuracy", "balanced_accuracy", "macro_precision", "macro_f1")
    for i, a in enumerate(distinct):  # every pair of columns told apart by at least one run
        for b in distinct[i + 1 :]:
            assert any(abs(m[f"test_{a}"] - m[f"test_{b}"]) > 1e-3 for m in metrics), (a, b)
        if f"val_{a}" in metrics[0]:
            assert any(abs(m[f"test_{a}"] - m[f"val_{a}"]) > 1e-3 for m in metrics), a


def test_logged_test_metrics_are_scikit_learns_on_the_logged_confusion_matrix(reported):
    _, runs = reported
    for entry in runs.values():
        m = run_metrics(entry["run"])
        for key, expected in entry["sklearn"].items():
            assert m[f"test_{key}"] == pytest.approx(expected, abs=1e-9), key


def test_trials_csv_holds_each_runs_test_metrics_in_its_own_column(reported):
    result, runs = reported
    with open(result.paths["csv"]) as fh:
        rows = {r["mlflow_run_id"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(runs)
    for run_id, entry in runs.items():
        for column, key in CSV_COLUMNS.items():
            assert float(rows[run_id][column]) == pytest.approx(entry["sklearn"][key], abs=CSV_PRINTED), column
            low, high = float(rows[run_id][f"{column}_ci_low"]), float(rows[run_id][f"{column}_ci_high"])
            assert (low, high) == pytest.approx(entry["intervals"][key], abs=CSV_PRINTED), column
            assert low <= entry["sklearn"][key] <= high, column
        objective = run_metrics(entry["run"])  # the objective: validation, as Optuna recorded it
        assert rows[run_id]["trial"] == entry["run"].data.tags["cvstudy.trial_number"]
        assert float(rows[run_id]["objective"]) != pytest.approx(objective["test_balanced_accuracy"], abs=1e-3)


def _md_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            head = [c.strip() for c in line.strip("|").split("|")]
            body = []
            for row in lines[i + 2 :]:
                if not row.startswith("| "):
                    break
                body.append([c.strip() for c in row.strip("|").split("|")])
            tables.append((head, body))
    return tables


class _HtmlTables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _find(tables, first_column: str, wanted: str):
    found = [(head, body) for head, body in tables if head and head[0] == first_column and wanted in head]
    assert len(found) == 1, [t[0] for t in tables]
    return found[0]


def _check_leaderboard(head, body, runs) -> None:
    by_run = {row[head.index("MLflow run")]: row for row in body}
    assert set(by_run) == set(runs)
    for run_id, entry in runs.items():
        for column, key in LEADER_COLUMNS.items():
            check_cell(by_run[run_id][head.index(column)], entry["sklearn"][key], entry["intervals"][key])


def _check_grouped(head, body, runs) -> None:
    """One group (one model, no pretrained, no augmentation): its row is the best trial's."""
    by_trial = {e["run"].data.tags["cvstudy.trial_number"]: e for e in runs.values()}
    assert len(body) == 1
    row = body[0]
    entry = by_trial[row[head.index("trial")]]
    best = max(runs.values(), key=lambda e: e["run"].data.metrics["val/balanced_accuracy"])
    assert entry["run"].data.metrics["val/balanced_accuracy"] == best["run"].data.metrics["val/balanced_accuracy"]
    for column, key in GROUP_COLUMNS.items():
        check_cell(row[head.index(column)], entry["sklearn"][key], entry["intervals"][key])


def test_the_markdown_leaderboard_and_grouped_table_hold_the_runs_test_metrics(reported):
    result, runs = reported
    tables = _md_tables(result.paths["md"].read_text())
    _check_leaderboard(*_find(tables, "study", "MLflow run"), runs)
    _check_grouped(*_find(tables, "model", "balanced acc"), runs)


def test_the_html_report_holds_the_same_numbers(reported):
    result, runs = reported
    parser = _HtmlTables()
    parser.feed(result.paths["html"].read_text())
    tables = [(t[0], t[1:]) for t in parser.tables if t]
    _check_leaderboard(*_find(tables, "study", "MLflow run"), runs)
    _check_grouped(*_find(tables, "model", "balanced acc"), runs)


def test_the_leaderboard_is_ordered_by_validation_not_test(reported):
    result, runs = reported
    head, body = _find(_md_tables(result.paths["md"].read_text()), "study", "MLflow run")
    order = [row[head.index("MLflow run")] for row in body]
    by_validation = sorted(runs, key=lambda r: -runs[r]["run"].data.metrics["val/balanced_accuracy"])
    values = [runs[r]["run"].data.metrics["val/balanced_accuracy"] for r in order]
    assert values == sorted(values, reverse=True)
    assert order[0] in [r for r in by_validation if runs[r]["run"].data.metrics["val/balanced_accuracy"] == values[0]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", r) for r in order)


@pytest.mark.parametrize(
    ("low", "high", "shown"),
    [
        (0.626, 0.684, "0.655 [0.626, 0.684]"),  # half-width 0.029: three decimals give it two digits
        (0.6551, 0.6609, "0.6550 [0.6551, 0.6609]"),  # 0.0029: four
        (0.35, 0.95, "0.66 [0.35, 0.95]"),  # 0.30: never fewer than two
    ],
)
def test_a_cell_is_rounded_to_what_its_interval_supports(low, high, shown):
    from cvstudy.orchestrator.report.data import TrialRow

    row = TrialRow("s", 0, "COMPLETE", 0.5, {}, "r", test={"accuracy": 0.65504}, intervals={"accuracy": (low, high)})
    assert row.cell("accuracy") == shown


def test_trials_logged_before_intervals_show_none_and_the_report_says_which():
    from cvstudy.orchestrator.report.data import TrialRow
    from cvstudy.orchestrator.report.tables import interval_line

    old = TrialRow("s", 3, "COMPLETE", 0.5, {}, "r", test={"accuracy": 0.65504})
    new = TrialRow("s", 4, "COMPLETE", 0.5, {}, "q", test={"accuracy": 0.6}, intervals={"accuracy": (0.5, 0.7)})
    assert old.cell("accuracy") == "0.6550"
    line = interval_line([new, old])
    assert "95 % interval" in line and "1 of 2 trials were logged before" in line and "trial 3)" in line
    assert "logged before" not in interval_line([new])


def test_the_paper_table_holds_the_best_trials_test_metrics_with_their_intervals(reported):
    result, runs = reported
    best = max(runs.values(), key=lambda e: e["run"].data.metrics["val/balanced_accuracy"])
    top = best["run"].data.metrics["val/balanced_accuracy"]
    leaders = [e for e in runs.values() if e["run"].data.metrics["val/balanced_accuracy"] == top]
    with open(result.paths["table_csv"]) as fh:
        (row,) = list(csv.DictReader(fh))  # one model, not pretrained: one group, one row
    assert (row["model"], row["pretrained"], row["seeds"]) == ("test_resnet", "False", "1")
    entry = next(e for e in leaders if f"trial {e['run'].data.tags['cvstudy.trial_number']}" in row["source"])
    expected = entry["sklearn"]
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
        assert float(row[key]) == pytest.approx(expected[key], abs=CSV_PRINTED), key
        low, high = float(row[f"{key}_ci_low"]), float(row[f"{key}_ci_high"])
        assert (low, high) == pytest.approx(entry["intervals"][key], abs=CSV_PRINTED), key
    p, r = expected["macro_precision"], expected["macro_recall"]
    assert float(row["harmonic_f1"]) == pytest.approx(2 * p * r / (p + r), abs=CSV_PRINTED)
    # the LaTeX: booktabs rules, one row per group with as many cells as the header, names escaped
    tex = result.paths["table_tex"].read_text()
    lines = tex.splitlines()
    assert r"\toprule" in lines and r"\midrule" in lines and r"\bottomrule" in lines
    body = lines[lines.index(r"\midrule") + 1 : lines.index(r"\bottomrule")]
    header = lines[lines.index(r"\toprule") + 1]
    assert len(body) == 1 and body[0].count(" & ") == header.count(" & ") == 8
    assert body[0].startswith(r"test\_resnet & False & $") and r"\pm" not in body[0]  # one seed: an interval
    md = result.paths["table_md"].read_text()
    check_cell(md.splitlines()[2].split(" | ")[2], expected["accuracy"], entry["intervals"]["accuracy"])


def test_a_confirmed_row_is_the_mean_and_std_over_its_seeds_and_names_are_escaped():
    import statistics

    from cvstudy.orchestrator.report.confirmation import Confirmed, ConfirmSummary
    from cvstudy.orchestrator.report.data import StudyData, TrialRow
    from cvstudy.orchestrator.report.paper import latex, latex_escape, paper_rows

    seeds = {
        "accuracy": {1000: 0.70, 1001: 0.74, 1002: 0.66},
        "macro_precision": {1000: 0.60, 1001: 0.80, 1002: 0.70},
        "macro_recall": {1000: 0.50, 1001: 0.70, 1002: 0.90},
        "macro_f1": {1000: 0.55, 1001: 0.75, 1002: 0.65},
    }
    trial = TrialRow(
        "s", 4, "COMPLETE", 0.8, {}, "r", test={"accuracy": 0.9}, config={"model": "my_net&co", "pretrained": True}
    )
    confirmed = Confirmed(4, "trial 4", "", False, "c", per_seed=seeds)
    study = StudyData(
        "s",
        "val_balanced_accuracy",
        "maximize",
        [trial],
        None,
        [],
        None,
        [trial],
        ConfirmSummary("s", [confirmed], confirmed, []),
    )
    (row,) = paper_rows([study])
    assert row.seeds == 3 and row.model == "my_net&co"
    for key, values in seeds.items():
        assert row.figures[key].value == pytest.approx(statistics.mean(values.values()), abs=1e-12)
        assert row.figures[key].std == pytest.approx(statistics.stdev(values.values()), abs=1e-12)
    harmonic = [2 * 0.60 * 0.50 / 1.10, 2 * 0.80 * 0.70 / 1.50, 2 * 0.70 * 0.90 / 1.60]  # per seed, then the mean
    assert row.figures["harmonic_f1"].value == pytest.approx(statistics.mean(harmonic), abs=1e-12)
    assert row.figures["accuracy"].text() == "0.700 ± 0.040"
    assert latex_escape("a_b&c%d#e$f") == r"a\_b\&c\%d\#e\$f"
    assert r"my\_net\&co & True & $0.700 \pm 0.040$" in latex([row])


def test_the_runs_set_up_checks_reach_their_tags_and_the_reports_opening_lines(reported):
    """test_resnet on 16 px images ends on a 1 x 1 feature map: every run says so in a tag, and the report
    says it once for the study, above its tables, and tags the study's parent run."""
    result, runs = reported
    for entry in runs.values():
        said = entry["run"].data.tags["cvstudy.check.small_input"]
        assert said.startswith("small input: at 16 px test_resnet's features are 1 x 1 positions")
    md = result.paths["md"].read_text()
    assert "Check: 3 of 3 complete trials (trial " in md and md.index("Check:") < md.index("Leaderboard")
    parent = result.paths["md"].parents[2] / "mlflow.db"  # reports/tiny/report.md -> the project directory
    client = MlflowClient(f"sqlite:///{parent}")
    study_runs = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "tags.`cvstudy.role` = 'study'"
    )
    assert study_runs[0].data.tags["cvstudy.check.small_input"].startswith("3 of 3 complete trials")


def _row(number, value, test_bal, interval=None):
    from cvstudy.orchestrator.report.data import TrialRow

    intervals = {"balanced_accuracy": interval} if interval else {}
    return TrialRow("s", number, "COMPLETE", value, {}, "r", test={"balanced_accuracy": test_bal}, intervals=intervals)


def _study(rows, direction="maximize"):
    from cvstudy.orchestrator.report.data import StudyData

    return StudyData("s", "val_balanced_accuracy", direction, rows, None, [], None, rows)


def test_leaders_whose_test_intervals_overlap_are_flagged_and_separated_ones_are_not():
    from cvstudy.orchestrator.report.checks import leaders_overlap

    overlapping = _study([_row(3, 0.9, 0.70, (0.66, 0.74)), _row(5, 0.8, 0.68, (0.64, 0.72))])
    said = leaders_overlap(overlapping)
    assert said is not None and "trial 3 [0.660, 0.740], trial 5 [0.640, 0.720]" in said and "s#3 s#5" in said
    apart = _study([_row(3, 0.9, 0.80, (0.77, 0.83)), _row(5, 0.8, 0.68, (0.64, 0.72))])
    assert leaders_overlap(apart) is None


def test_validation_and_test_disagreeing_on_the_top_trials_order_is_flagged():
    from scipy.stats import kendalltau

    from cvstudy.orchestrator.report.checks import order_disagrees

    values, reversed_test = [0.90, 0.85, 0.80, 0.75], [0.60, 0.65, 0.70, 0.62]
    tau = kendalltau(values, reversed_test).statistic  # 6 pairs: 2 concordant ((1,3), (2,3)), 4 not: -2/6
    assert tau == pytest.approx(-1 / 3)
    said = order_disagrees(_study([_row(i, v, t) for i, (v, t) in enumerate(zip(values, reversed_test))]))
    assert said is not None and "Kendall's tau -0.33" in said
    agreeing = [0.70, 0.66, 0.65, 0.60]
    assert order_disagrees(_study([_row(i, v, t) for i, (v, t) in enumerate(zip(values, agreeing))])) is None
    # a loss: lower is better on validation, so the same test order now agrees
    losses = [0.10, 0.15, 0.20, 0.25]
    assert (
        order_disagrees(_study([_row(i, v, t) for i, (v, t) in enumerate(zip(losses, agreeing))], "minimize")) is None
    )


def test_the_published_columns_follow_what_the_study_recorded_not_its_name():
    """A study that recorded ``reproduces: dsba-cv-study`` gets the published figures beside its groups (the
    original study's table: ResNet50 from scratch 0.68 accuracy, F1 0.7002); a study merely named seed
    does not."""
    from cvstudy.orchestrator.report.data import StudyData, TrialRow
    from cvstudy.orchestrator.report.tables import group_rows

    row = TrialRow("s", 0, "COMPLETE", 0.7, {}, "r", config={"model": "resnet50", "pretrained": "False", "aug": "none"})

    def columns_and_row(name, reproduces):
        study = StudyData(
            name, "val_balanced_accuracy", "maximize", [row], None, [], None, [row], reproduces=reproduces
        )
        columns, (cells,) = group_rows(study)
        return dict(zip(columns, cells))

    shown = columns_and_row("other-name", "dsba-cv-study")
    assert (shown["published Acc"], shown["published F1*"]) == ("0.6800", "0.7002")
    assert "published Acc" not in columns_and_row("seed", "")


def _flat(key: str) -> str:
    """A metric's name as cvstudy logged it before MLflow sections (test/accuracy -> test_accuracy,
    val/best_loss -> best_val_loss, cost/gflops -> gflops, train/lr -> lr), written out for this test."""
    section, slash, name = key.partition("/")
    if not slash:
        return key
    if section == "cost" or name == "lr":
        return name
    if name.startswith("best_"):
        return f"best_{section}_{name[len('best_') :]}"
    return f"{section}_{name}"


def test_a_store_an_older_cvstudy_wrote_with_flat_metric_names_reports_the_same_numbers(
    reported, tmp_path, monkeypatch
):
    """Runs logged before metric sections hold flat names (test_accuracy, not test/accuracy): the study
    is copied, its MLflow store's metric names rewritten to that spelling in SQL, and reported again."""
    import shutil
    import sqlite3

    result, _ = reported
    root = result.paths["csv"].parents[2]  # <root>/reports/tiny/trials.csv
    old = tmp_path / "old"
    shutil.copytree(root, old, ignore=shutil.ignore_patterns("reports"))
    with sqlite3.connect(old / "mlflow.db") as db:
        for table in ("metrics", "latest_metrics"):
            for (key,) in db.execute(f"SELECT DISTINCT key FROM {table}").fetchall():  # noqa: S608 -- two names
                db.execute(f"UPDATE {table} SET key = ? WHERE key = ?", (_flat(key), key))  # noqa: S608
        keys = {k for (k,) in db.execute("SELECT DISTINCT key FROM latest_metrics")}
    assert "test_accuracy" in keys and not [k for k in keys if "/" in k]  # the old layout, nothing else
    monkeypatch.chdir(old)
    again = report(["tiny"], storage_url=f"sqlite:///{old / 'optuna.db'}")
    with open(result.paths["csv"]) as fh:
        new_rows = list(csv.DictReader(fh))
    with open(old / again.paths["csv"]) as fh:
        old_rows = list(csv.DictReader(fh))
    assert old_rows == new_rows and len(new_rows) == 3
    assert all(float(r["test_balanced_accuracy"]) > 0 for r in old_rows)
