"""Cost in the report: the Pareto front, time to accuracy and pruning's savings, each checked against
what the runs logged (``train_device_seconds``, ``epoch_seconds``, ``epochs_run``)."""

import csv
import statistics

import optuna
import pytest
from mlflow.tracking import MlflowClient

from cvstudy.orchestrator.commands.report import report
from cvstudy.orchestrator.report.cost import pareto_front, pruning_savings, time_to_accuracy
from cvstudy.orchestrator.report.data import load_study_data
from cvstudy.orchestrator.sweep.manager import SweepSettings, sweep
from cvstudy.orchestrator.sweep.study import load_study_spec
from cvstudy.orchestrator.tracking.client import Tracker
from cvstudy.orchestrator.tracking.schema import run_metrics
from cvstudy.trainers.config import COST_METRICS
from tests.orchestrator.test_sweep import GOOD_THEN_BAD, enqueue_first, study_file


def test_the_pareto_front_keeps_what_nothing_beats_on_both():
    points = [(0.9, 10.0), (0.8, 5.0), (0.7, 7.0), (0.9, 12.0), (0.6, 1.0), (0.8, 5.0)]
    assert pareto_front(points, maximize_value=True, minimize_cost=True) == {0, 1, 4, 5}
    assert pareto_front(points, maximize_value=True, minimize_cost=False) == {3}
    assert pareto_front(points, maximize_value=False, minimize_cost=True) == {4}


def test_time_to_accuracy_and_pruning_savings_add_up_the_runs_logged_device_time(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # lr 1e-9 never learns: the median pruner stops those trials after min_epochs
    path = study_file(tmp_path, tiny_data, "  lr: [3.0e-3, 1.0e-9]\n  seed: [0, 1, 2]", "median", "grid", epochs=6)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    enqueue_first(storage, GOOD_THEN_BAD)
    sweep(load_study_spec(path), SweepSettings(storage_url=storage, trials=6))
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    data = load_study_data("tiny", optuna.storages.RDBStorage(storage), tracker)

    client = MlflowClient(tracking_uri=tracker.uri)
    logged = {}  # trial number -> (state, device seconds as logged, epochs run)
    for r in data.rows:
        run = client.get_run(r.run_id)
        m = run_metrics(run)
        seconds = m.get("train_device_seconds")
        if seconds is None:  # a pruned run ends before its final metrics: its epochs' own times
            seconds = sum(h.value for h in client.get_metric_history(r.run_id, "cost/epoch_seconds"))
        logged[r.number] = (r.state, seconds, int(m["epochs_run"]))
    assert {s for s, _, _ in logged.values()} == {"COMPLETE", "PRUNED"}
    complete = [n for n, (s, _, _) in logged.items() if s == "COMPLETE"]
    assert all(set(COST_METRICS) <= set(run_metrics(client.get_run(data.rows[n].run_id))) for n in complete)

    curve = time_to_accuracy(data)
    assert curve[-1][0] == pytest.approx(sum(s for _, s, _ in logged.values()) / 60)
    assert [c[1] for c in curve] == sorted(c[1] for c in curve)  # best so far never falls (maximised)

    savings = pruning_savings(data)
    pruned = [v for v in logged.values() if v[0] == "PRUNED"]
    assert savings.pruned == len(pruned) and savings.epochs_trained == sum(e for _, _, e in pruned)
    assert savings.epochs_saved == sum(6 - e for _, _, e in pruned)
    rate = statistics.fmean(s / e for st, s, e in logged.values() if st == "COMPLETE")
    assert savings.seconds_per_epoch == pytest.approx(rate)
    assert savings.seconds_saved == pytest.approx(savings.epochs_saved * rate)

    result = report(["tiny"], storage_url=storage)
    with open(result.paths["csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert set(COST_METRICS) <= set(rows[0])
    md = result.paths["md"].read_text()
    assert "### Cost" in md and "Pruning stopped" in md and "device-minutes" in md
    assert (result.paths["md"].parent / "tiny-cost.png").exists() and (
        result.paths["md"].parent / "tiny-time.png"
    ).exists()
