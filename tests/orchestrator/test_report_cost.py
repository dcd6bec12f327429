"""Cost in the report: the Pareto front, time to accuracy and pruning's savings, each checked against
what the runs logged (``train_device_seconds``, ``epoch_seconds``, ``epochs_run``)."""

import csv
import statistics

import optuna
import pytest
from mlflow.tracking import MlflowClient

from cvstudy.orchestrator.commands.report import report
from cvstudy.orchestrator.report.cost import PruningSavings, cost_lines, pareto_front, pruning_savings, time_to_accuracy
from cvstudy.orchestrator.report.data import StudyData, TrialRow, load_study_data
from cvstudy.orchestrator.sweep.manager import SweepSettings, sweep
from cvstudy.orchestrator.sweep.study import load_study_spec
from cvstudy.orchestrator.sweep.trials import Counts
from cvstudy.orchestrator.tracking.client import Tracker
from cvstudy.orchestrator.tracking.schema import run_metrics
from cvstudy.trainers.config import COST_METRICS
from tests.orchestrator.test_sweep import GOOD_THEN_BAD, enqueue_first, study_file


def test_the_pareto_front_keeps_what_nothing_beats_on_both():
    points = [(0.9, 10.0), (0.8, 5.0), (0.7, 7.0), (0.9, 12.0), (0.6, 1.0), (0.8, 5.0)]
    assert pareto_front(points, maximize_value=True, minimize_cost=True) == {0, 1, 4, 5}
    assert pareto_front(points, maximize_value=True, minimize_cost=False) == {3}
    assert pareto_front(points, maximize_value=False, minimize_cost=True) == {4}


def _hand_built(direction: str) -> StudyData:
    """Eleven trials as the report reads them, finished out of number order (``finished``: seconds since the
    epoch): device seconds, epochs trained and planned chosen so every figure below is worked by hand."""

    def row(number, state, value, seconds, finished, epochs, planned=None):
        config = {} if planned is None else {"epochs": planned}
        return TrialRow("hand", number, state, value, {}, None, epochs=epochs, config=config,
                        device_seconds=seconds, finished=finished)  # fmt: skip

    rows = [
        row(0, "COMPLETE", 0.5, 120.0, 100.0, 4, 4),
        row(1, "PRUNED", None, 30.0, 300.0, 2, "4"),  # planned as the trial's config may hold it, text
        row(2, "COMPLETE", 0.7, 240.0, 200.0, 4, 4),
        row(3, "FAIL", None, 60.0, 400.0, 1, 4),
        row(4, "COMPLETE", 0.6, 180.0, 500.0, 4, 4),
        row(5, "RUNNING", None, 50.0, None, 1, 4),  # not finished: spent, but no point of the curve
        row(6, "PRUNED", 0.95, 60.0, 50.0, 1, 4),  # finished first; its last reported value is no result
        row(7, "PRUNED", None, None, 600.0, 0),  # no planned epochs: nothing saved; no device time logged
        row(8, "PRUNED", None, None, 700.0, None),  # no epochs known: not counted
        row(9, "COMPLETE", 0.1, None, None, 4, 4),  # no time or finish logged: no point, no rate
        row(10, "PRUNED", None, None, None, 0, 4),  # stopped before its first epoch ended: 4 saved
    ]
    return StudyData("hand", "balanced accuracy", direction, rows, Counts(), [], None)


def test_time_to_accuracy_on_a_hand_built_study():
    """Device seconds in finishing order: 60 (#6), 120 (#0), 240 (#2), 30 (#1), 60 (#3), 180 (#4); the first
    point comes with the first value, after 180 s."""
    assert time_to_accuracy(_hand_built("maximize")) == [
        (3.0, 0.5, 0), (7.0, 0.7, 2), (7.5, 0.7, 1), (8.5, 0.7, 3), (11.5, 0.7, 4)
    ]  # fmt: skip
    assert time_to_accuracy(_hand_built("minimize")) == [
        (3.0, 0.5, 0), (7.0, 0.5, 2), (7.5, 0.5, 1), (8.5, 0.5, 3), (11.5, 0.5, 4)
    ]  # fmt: skip


def test_pruning_savings_on_a_hand_built_study():
    """Pruned with epochs known: #6 (1 of 4 planned: 3 saved), #1 (2 of 4: 2 saved), #7 (0, none planned:
    none saved), #10 (0 of 4: 4 saved). Complete trials' rates: 120/4, 240/4, 180/4 s per epoch, mean 45;
    every trial's time: 740 s."""
    assert pruning_savings(_hand_built("maximize")) == PruningSavings(4, 3, 9, 45.0, 405.0, 740.0)
    data = _hand_built("maximize")
    data.rows[:] = [r for r in data.rows if r.state != "PRUNED"]
    assert pruning_savings(data) is None
    data = _hand_built("maximize")
    data.rows[:] = [r for r in data.rows if r.state != "COMPLETE"]
    assert pruning_savings(data) is None


def test_the_cost_sentences_on_a_hand_built_study():
    """405 s saved against 740 s spent: 405 / 1145 = 35 % of the study without pruning; the best value,
    0.7, first reached by trial 2 after 420 s; with a trial of 0.9 finishing last, 0.9 after all 12.5 min."""
    data = _hand_built("maximize")
    assert cost_lines(data) == [
        "The study's trials trained and validated for 12.3 device-minutes in all.",
        "Pruning stopped 4 trials after 3 epochs in all; run to the end they would have trained 9 more epochs, "
        "about 6.8 device-minutes at the complete trials' 45.0 s per epoch (35 % of the study's total without "
        "pruning).",
        "The best balanced accuracy (0.7000) was reached after 7.0 of 11.5 device-minutes (trial 2).",
    ]
    data.rows.append(TrialRow("hand", 11, "COMPLETE", 0.9, {}, None, device_seconds=60.0, finished=800.0))
    assert (
        cost_lines(data)[-1]
        == "The best balanced accuracy (0.9000) was reached after 12.5 of 12.5 device-minutes (trial 11)."
    )


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
