"""Multi-objective studies: Optuna keeps a value per objective, cvstudy prunes on the first one through
its pruning companion (Optuna's pruners refuse a multi-objective study), and every ranking (``@best``,
``predict --best``, ``confirm --top``, the report) follows one rule: Pareto front first, then the first
objective."""

import csv
import shutil

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from cvstudy.orchestrator.commands.predict import best_run_id
from cvstudy.orchestrator.errors import StudyError, SweepError
from cvstudy.orchestrator.sweep import pruning
from cvstudy.orchestrator.sweep.manager import SweepSettings, sweep
from cvstudy.orchestrator.sweep.study import load_study_spec, shipped_studies
from cvstudy.orchestrator.sweep.trials import first_value, ranked_complete
from cvstudy.orchestrator.tracking.client import Tracker
from cvstudy.orchestrator.tracking.schema import run_metrics
from cvstudy.trainers.config import COST_METRICS
from tests.conftest import mlflow_runs, run_cli
from tests.orchestrator.test_sweep import GOOD_THEN_BAD, enqueue_first, study_file

TWO = "objectives: {val_balanced_accuracy: maximize, gflops: minimize}"


def two_objective_file(tmp_path, data, space, pruner, sampler, epochs):
    path = study_file(tmp_path, data, space, pruner, sampler, epochs)
    path.write_text(path.read_text().replace("objective: val_balanced_accuracy", TWO))
    return path


@pytest.mark.slow
def test_the_two_objective_demo_study_over_two_models(tmp_path, tiny_data):
    """Done-when: the shipped 4-trial study over resnet18/resnet34 runs with two directions and two values
    per complete trial, every trial run has the cost metrics, and the report shows the Pareto front."""
    shutil.copy(shipped_studies() / "tradeoff.yaml", tmp_path / "tradeoff.yaml")
    args = ["--data", str(tiny_data), "--trials", "4", "--epochs", "2", "--seed", "0"]
    proc = run_cli(["sweep", "--study-file", "tradeoff.yaml", *args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.load_study(study_name="tradeoff", storage=storage)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["val_balanced_accuracy", "gflops"]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete and all(len(t.values) == 2 for t in complete)
    assert {t.params["model"] for t in study.trials} <= {"resnet18", "resnet34"}
    runs = {r.info.run_id: r for r in mlflow_runs(tmp_path, "tradeoff") if r.data.tags["cvstudy.role"] == "trial"}
    assert len(runs) == 4
    for t in complete:
        metrics = run_metrics(runs[t.user_attrs["mlflow_run_id"]])
        assert set(COST_METRICS) <= set(metrics)
        assert t.values[1] == pytest.approx(metrics["gflops"])  # the second objective is what the run logged

    # the pruning companion judged every trial's epochs and ended as its trial did
    companion = optuna.load_study(study_name="tradeoff:pruning", storage=storage)
    judged = {t.user_attrs["judges_trial"]: t for t in companion.trials}
    assert set(judged) == {t.number for t in study.trials}
    for t in study.trials:
        twin = judged[t.number]
        assert twin.number == t.user_attrs["pruning_trial"] and twin.state == t.state
        history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(
            t.user_attrs["mlflow_run_id"], "val/balanced_accuracy"
        )
        assert twin.intermediate_values == {m.step + 1: pytest.approx(m.value) for m in history}  # epochs done

    # one rule everywhere: the best is the best first objective among the Pareto-optimal trials
    ranked = ranked_complete(study)
    front = {t.number for t in study.best_trials}  # Optuna's own Pareto front, the oracle
    best = max((t for t in complete if t.number in front), key=lambda t: (t.values[0], -t.number))
    assert ranked[0].number == best.number
    assert [t.number for t in ranked[: len(front)]] == sorted(front, key=lambda n: (-study.trials[n].values[0], n))
    version = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_model_version_by_alias("tradeoff", "best")
    assert version.tags["cvstudy.trial"] == str(best.number) and "gflops" in version.tags
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert best_run_id("tradeoff", storage, tracker) == best.user_attrs["mlflow_run_id"]

    proc = run_cli(["report"], cwd=tmp_path)  # every study in the storage: the companion is none of them
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "reports" / "tradeoff"
    md = (out / "report.md").read_text()
    assert "Objectives: val_balanced_accuracy (maximize), gflops (minimize)" in md
    assert f"### Pareto front\n\n{len(front)} of {len(complete)} complete trials are Pareto-optimal" in md
    assert (out / "tradeoff-pareto.png").stat().st_size > 5000
    with open(out / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {int(r["trial"]) for r in rows if r["pareto_optimal"] == "yes"} == front


@pytest.mark.slow
@pytest.mark.parametrize("pruner", ["median", "hyperband"])  # hyperband: what studies/tradeoff.yaml ships
def test_a_pruner_prunes_in_a_two_objective_study(tmp_path, tiny_data, monkeypatch, pruner):
    monkeypatch.chdir(tmp_path)
    # lr 1e-9 never learns: after the median pruner's 5 startup trials, or at a Hyperband rung that has seen
    # the good ones, such a trial is stopped
    path = two_objective_file(tmp_path, tiny_data, "  lr: [3.0e-3, 1.0e-9]\n  seed: [0, 1, 2]", pruner, "grid", 6)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    enqueue_first(storage, GOOD_THEN_BAD, directions=("maximize", "minimize"))
    outcome = sweep(load_study_spec(path), SweepSettings(storage_url=storage, trials=6))
    study = optuna.load_study(study_name="tiny", storage=storage)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and outcome.counts.pruned == len(pruned)
    runs = {r.info.run_id: r for r in mlflow_runs(tmp_path, "tiny")}
    companion = optuna.load_study(study_name="tiny:pruning", storage=storage)
    for t in pruned:
        run = runs[t.user_attrs["mlflow_run_id"]]
        epoch = int(run.data.tags["cvstudy.pruned_at_epoch"])
        assert run.info.status == "KILLED" and run.data.params["lr"] == "1e-09" and epoch < 6
        assert t.user_attrs["epochs_run"] == epoch and t.values is None
        twin = companion.trials[t.user_attrs["pruning_trial"]]
        assert twin.state == TrialState.PRUNED and max(twin.intermediate_values) == epoch
    assert not companion.get_trials(states=(TrialState.RUNNING,))


def test_one_ranking_rule_pareto_front_first_then_the_first_objective():
    study = optuna.create_study(directions=["maximize", "minimize"])
    dist = {"x": FloatDistribution(0, 1)}
    # (val_balanced_accuracy, gflops) of trials 0..4
    for values in [(0.90, 2.0), (0.85, 0.5), (0.90, 1.0), (0.80, 0.4), (0.70, 3.0)]:
        study.add_trial(create_trial(params={"x": 0.5}, distributions=dist, values=list(values)))
    # trial 2 ties trial 0 on accuracy and is cheaper: it is the best; trial 0 is dominated by it
    assert {t.number for t in study.best_trials} == {1, 2, 3}  # Optuna agrees with the hand-worked front
    assert [t.number for t in ranked_complete(study)] == [2, 1, 3, 0, 4]

    single = optuna.create_study(direction="minimize")
    for value in (0.3, 0.1, 0.2, 0.1):
        single.add_trial(create_trial(params={"x": 0.5}, distributions=dist, value=value))
    assert [t.number for t in ranked_complete(single)] == [1, 3, 2, 0]  # one objective: its order

    # Optuna gives a pruned trial its last reported value: better than all, and still never ranked
    pruned = single.ask()
    pruned.report(0.01, 1)
    single.tell(pruned, state=TrialState.PRUNED)
    assert single.trials[-1].values == [0.01] and [t.number for t in ranked_complete(single)] == [1, 3, 2, 0]


def test_a_trials_first_value_is_none_until_it_has_values():
    single = optuna.create_study(direction="minimize")
    single.add_trial(create_trial(params={}, distributions={}, value=0.1))
    running = single.ask()
    assert first_value(single.trials[running.number]) is None and first_value(single.trials[0]) == 0.1
    two = optuna.create_study(directions=["maximize", "minimize"])  # where FrozenTrial.value raises
    two.add_trial(create_trial(params={}, distributions={}, values=[0.8, 2.0]))
    assert first_value(two.trials[0]) == 0.8


def test_a_companion_trial_left_running_by_a_killed_worker_is_failed(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    prune = pruning.Pruning(study, storage, optuna.pruners.MedianPruner())
    alive, dead = study.ask(), study.ask()
    judges = prune.judge(alive), prune.judge(dead)
    for judge in judges:
        judge.report(0.5, 1)
    study.tell(dead, state=TrialState.FAIL)  # its worker was SIGKILLed and the trial recovered
    assert prune.end_orphans(study) == [judges[1].judged.number]
    states = [t.state for t in prune.companion.trials]
    assert states == [TrialState.RUNNING, TrialState.FAIL]
    assert pruning.is_companion("s:pruning") and not pruning.is_companion("s")


def test_objectives_are_checked_when_the_study_file_is_read(tmp_path, tiny_data):
    cases = {
        "objectives: {gflops: minimize, val_balanced_accuracy: maximize}": "the first objective is judged every epoch",
        "objectives: {val_balanced_accuracy: maximize, test_accuracy: maximize}": "a test metric cannot be",
        "objectives: {val_balanced_accuracy: maximize, gflops: smaller}": "objectives.gflops must be one of",
        "objectives: {val_balanced_accuracy: maximize}\ndirection: maximize": "either objectives or",
    }
    path = study_file(tmp_path, tiny_data, "  lr: [3.0e-3]", "none", "grid", 1)
    template = path.read_text()
    for text, message in cases.items():
        path.write_text(template.replace("objective: val_balanced_accuracy", text))
        with pytest.raises(StudyError, match=f"^{path}: .*{message}"):
            load_study_spec(path)


@pytest.mark.slow
def test_a_study_keeps_its_objectives(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    single = load_study_spec(study_file(tmp_path, tiny_data, "  lr: [3.0e-3]", "none", "grid", 1))
    sweep(single, SweepSettings(storage_url=storage, trials=1))
    two = load_study_spec(two_objective_file(tmp_path, tiny_data, "  lr: [3.0e-3]", "none", "grid", 1))
    with pytest.raises(SweepError, match="was created to maximize, but .* asks to maximize and minimize"):
        sweep(two, SweepSettings(storage_url=storage, trials=2))


def test_peak_memory_is_refused_as_an_objective_on_the_cpu(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = study_file(tmp_path, tiny_data, "  lr: [3.0e-3]", "none", "grid", 1)
    path.write_text(
        path.read_text().replace(
            "objective: val_balanced_accuracy",
            "objectives: {val_balanced_accuracy: maximize, peak_memory_mb: minimize}",
        )
    )
    with pytest.raises(SweepError, match="peak_memory_mb is the trial's own peak only on CUDA; on cpu"):
        sweep(
            load_study_spec(path),
            SweepSettings(storage_url=f"sqlite:///{tmp_path / 'optuna.db'}", devices="cpu", trials=1),
        )
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()
