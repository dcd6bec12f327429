"""Repeated seeds: a trial is K training seeds on one validation split, its objective their mean, its
pruning on the mean, each seed an MLflow run nested under the trial's run."""

import statistics

import optuna
import pytest
from mlflow.tracking import MlflowClient

from cvstudy.orchestrator.commands.report import report
from cvstudy.orchestrator.errors import StudyError
from cvstudy.orchestrator.sweep.manager import SweepSettings, sweep
from cvstudy.orchestrator.sweep.study import load_study_spec
from tests.conftest import mlflow_runs, run_cli
from tests.orchestrator.test_sweep import study_file

pytestmark = pytest.mark.slow  # starts processes, servers or sweeps (make test-fast skips it)


def _study(tmp_path):
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def _history(client, run_id, key):
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_repeats_nest_seed_runs_under_trial_runs_and_the_objective_is_their_mean(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = study_file(tmp_path, tiny_data, "  lr: [3.0e-3, 1.0e-2]", sampler="grid", pruner="none", epochs=2)
    path.write_text(path.read_text() + "repeats: 3\n")
    outcome = sweep(load_study_spec(path), SweepSettings(storage_url=f"sqlite:///{tmp_path / 'optuna.db'}", trials=2))
    assert outcome.counts.complete == 2
    runs = mlflow_runs(tmp_path, "tiny")
    trials = {r.info.run_id: r for r in runs if r.data.tags.get("cvstudy.role") == "trial"}
    seeds = [r for r in runs if r.data.tags.get("cvstudy.role") == "seed"]
    assert len(trials) == 2 and len(seeds) == 6
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for t in _study(tmp_path).trials:
        run = trials[t.user_attrs["mlflow_run_id"]]
        children = sorted(
            (s for s in seeds if s.data.tags["mlflow.parentRunId"] == run.info.run_id),
            key=lambda s: int(s.data.params["seed"]),
        )
        assert [s.data.params["seed"] for s in children] == ["0", "1", "2"] and t.user_attrs["seeds"] == [0, 1, 2]
        assert all(s.info.status == "FINISHED" and s.data.params["lr"] == run.data.params["lr"] for s in children)
        # one validation split for all seeds; three different models (first-epoch training losses)
        assert len({s.data.tags["cvstudy.data_digest.val"] for s in children}) == 1
        assert len({_history(client, s.info.run_id, "train/loss")[0] for s in children}) == 3
        # the objective is the mean of the seeds' selected validation values, and the trial run says so
        values = [s.data.metrics["val/best_balanced_accuracy"] for s in children]
        assert t.value == pytest.approx(statistics.mean(values), abs=1e-12)
        assert run.data.metrics["test/balanced_accuracy"] == pytest.approx(
            statistics.mean(s.data.metrics["test/balanced_accuracy"] for s in children), abs=1e-12
        )
        assert run.data.metrics["test/balanced_accuracy_std"] == pytest.approx(
            statistics.stdev(s.data.metrics["test/balanced_accuracy"] for s in children), abs=1e-12
        )
        assert run.data.metrics["seeds"] == 3 and run.info.status == "FINISHED"
        # each seed's interval over the test images is its own; the trial run carries the seeds' spread instead
        assert all("test/accuracy_ci_low" in s.data.metrics for s in children)
        assert not any(k.endswith(("_ci_low", "_ci_high", "_ci_low_std")) for k in run.data.metrics)
        # the trial run's curve is the seeds' mean, epoch by epoch
        per_seed = [_history(client, s.info.run_id, "val/balanced_accuracy") for s in children]
        assert _history(client, run.info.run_id, "val/balanced_accuracy") == pytest.approx(
            [statistics.mean(v) for v in zip(*per_seed)], abs=1e-12
        )
        # one checkpoint per trial, in the seed run best on validation
        kept = [s for s in children if s.data.tags.get("cvstudy.checkpoint") == "kept"]
        assert [k.info.run_id for k in kept] == [t.user_attrs["checkpoint_run_id"]]
        assert kept[0].data.metrics["val/best_balanced_accuracy"] == max(values)
    # the report: mean ± std with the number of seeds, the seeds' spread, no single-seed warning, and its
    # cross-check of trial runs against their nested seed runs finds nothing wrong
    result = report(["tiny"], storage_url=f"sqlite:///{tmp_path / 'optuna.db'}", out=str(tmp_path / "rep"))
    md = (tmp_path / "rep" / "report.md").read_text()
    assert not result.problems and "Single-seed" not in md and "Each trial averages 3 training seeds" in md
    row = next(line for line in md.splitlines() if line.startswith("| tiny | "))
    assert " | 3 | " in row and row.count(" ± ") == 6  # objective and five test metrics
    assert (tmp_path / "rep" / "tiny-seeds.png").exists()


def test_pruning_with_repeats_acts_on_the_mean_over_seeds(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # lr 1e-9 never learns: the median pruner stops it, judged on the mean of its two seeds at each epoch.
    path = study_file(
        tmp_path,
        tiny_data,
        "  lr: [3.0e-3, 1.0e-9]\n  label_smoothing: [0.0, 0.05, 0.1, 0.2]",
        sampler="grid",
        pruner="median",
        epochs=5,
    )
    path.write_text(path.read_text() + "repeats: 2\nobjective_stat: mean_minus_std\n")
    spec = load_study_spec(path)
    outcome = sweep(spec, SweepSettings(storage_url=f"sqlite:///{tmp_path / 'optuna.db'}", trials=8))
    assert outcome.counts.pruned >= 1
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    seeds = [r for r in mlflow_runs(tmp_path, "tiny") if r.data.tags.get("cvstudy.role") == "seed"]
    for t in _study(tmp_path).trials:
        children = [s for s in seeds if s.data.tags["mlflow.parentRunId"] == t.user_attrs["mlflow_run_id"]]
        assert len(children) == 2
        per_seed = [_history(client, s.info.run_id, "val/balanced_accuracy") for s in children]
        means = [statistics.mean(v) for v in zip(*per_seed)]
        # what Optuna's pruner saw at epoch e is the mean over both seeds at that epoch
        assert [t.intermediate_values[e] for e in sorted(t.intermediate_values)] == pytest.approx(means, abs=1e-12)
        if t.state.name == "PRUNED":
            assert {s.data.tags["cvstudy.trial_state"] for s in children} == {"PRUNED"}
            assert {s.info.status for s in children} == {"KILLED"}
        else:
            values = [s.data.metrics["val/best_balanced_accuracy"] for s in children]
            assert t.value == pytest.approx(statistics.mean(values) - statistics.stdev(values), abs=1e-12)


def test_repeats_are_checked_and_a_study_cannot_change_them(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = study_file(tmp_path, tiny_data, "  lr: [3.0e-3]", sampler="grid", pruner="none", epochs=1)
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text() + "repeats: 0\n")
    with pytest.raises(StudyError, match="bad.yaml: repeats must be a positive integer"):
        load_study_spec(bad)
    bad.write_text(path.read_text() + "objective_stat: median\n")
    with pytest.raises(StudyError, match="objective_stat must be one of mean, mean_minus_std"):
        load_study_spec(bad)
    assert run_cli(["sweep", "--study-file", path, "--trials", "1"], tmp_path).returncode == 0
    again = run_cli(["sweep", "--study-file", path, "--trials", "2", "--repeats", "3"], tmp_path)
    assert again.returncode == 2 and "was run with repeats 1" in again.stderr and "Traceback" not in again.stderr
