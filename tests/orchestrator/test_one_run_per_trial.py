"""One MLflow run of role ``trial`` per counted trial, however a trial was interrupted: a retry continues
its run (from the saved state, or from epoch 0 when the run logged no epoch); a run with epochs and no
usable state is kept as ``superseded``, naming its successor. Then the chaos test: workers on one
journal storage, killed (SIGKILL, SIGTERM) and restarted at random, then run to the end."""

import random
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from cvstudy.orchestrator.report.data import load_study_data
from cvstudy.orchestrator.sweep import manager
from cvstudy.orchestrator.sweep.study import load_study_spec
from cvstudy.orchestrator.sweep.trials import count_trials, current_trials
from cvstudy.orchestrator.tracking import fitting
from cvstudy.orchestrator.tracking.client import Tracker
from tests.conftest import CVSTUDY, clean_env, run_cli, wait_for
from tests.orchestrator.test_sweep import study_file

pytestmark = pytest.mark.slow  # starts processes, servers or sweeps (make test-fast skips it)

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _client(tmp_path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def _runs(tmp_path, role: str) -> list:
    client = _client(tmp_path)
    exp = client.get_experiment_by_name("tiny")
    return client.search_runs([exp.experiment_id], f"tags.`cvstudy.role` = '{role}'", max_results=1000)


def _interrupted_sweep(tmp_path, spec, monkeypatch, where: str, after_epochs: int = 0) -> None:
    """Run the sweep in this process until a Ctrl-C arrives: in ``fit`` before its first epoch, or at the
    end of epoch ``after_epochs`` (``raise_if_interrupted``, called after each epoch is logged)."""
    with monkeypatch.context() as patch:
        if where == "before the first epoch":

            def interrupted(*args, **kwargs):
                raise KeyboardInterrupt

            patch.setattr(fitting, "fit", interrupted)
            patch.setattr(fitting, "fit_together", interrupted)
        else:
            calls = []

            def interrupt_after():
                calls.append(1)
                if len(calls) >= after_epochs:
                    raise KeyboardInterrupt

            patch.setattr(fitting, "raise_if_interrupted", interrupt_after)
        with pytest.raises(KeyboardInterrupt):
            manager.sweep(spec, manager.SweepSettings(storage_url=f"sqlite:///{tmp_path / 'optuna.db'}", trials=2))


def _one_trial_run_per_counted_trial(tmp_path) -> tuple[optuna.Study, dict]:
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    counted = [t for t in current_trials(study) if t.state in COUNTED]
    runs = {r.info.run_id: r for r in _runs(tmp_path, "trial")}
    assert sorted(runs) == sorted(t.user_attrs["mlflow_run_id"] for t in counted)
    assert not load_study_data("tiny", study._storage, Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")).problems
    return study, runs


def test_a_trial_interrupted_before_its_first_epoch_continues_its_run(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_study_spec(study_file(tmp_path, tiny_data, space="  lr: [3.0e-3]", pruner="none", sampler="grid"))
    _interrupted_sweep(tmp_path, spec, monkeypatch, "before the first epoch")
    (killed,) = _runs(tmp_path, "trial")
    assert killed.info.status == "KILLED" and "train/loss" not in killed.data.metrics

    manager.sweep(spec, manager.SweepSettings(storage_url=f"sqlite:///{tmp_path / 'optuna.db'}", trials=2))
    study, runs = _one_trial_run_per_counted_trial(tmp_path)
    assert count_trials(study).complete == 2 and count_trials(study).retried == 1
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 0)
    assert retry.user_attrs["mlflow_run_id"] == killed.info.run_id  # the same run, continued from epoch 0
    run = runs[killed.info.run_id]
    assert run.info.status == "FINISHED" and run.data.tags["cvstudy.trial_number"] == str(retry.number)
    assert "cvstudy.error" not in run.data.tags and "cvstudy.resumes" not in run.data.tags
    steps = [m.step for m in _client(tmp_path).get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(3))
    assert not _runs(tmp_path, "superseded")


def test_a_trial_interrupted_with_epochs_and_no_state_supersedes_its_run(tmp_path, tiny_data, monkeypatch):
    """A trial with repeats keeps no resume state: interrupted after an epoch, its retry trains in a new
    run, and the old run and its seed runs stay, KILLED, as ``superseded``, naming the new run."""
    monkeypatch.chdir(tmp_path)
    path = study_file(tmp_path, tiny_data, space="  lr: [3.0e-3]", pruner="none", sampler="grid")
    path.write_text(path.read_text() + "repeats: 2\n")
    spec = load_study_spec(path)
    _interrupted_sweep(tmp_path, spec, monkeypatch, "after an epoch", after_epochs=2)
    (killed,) = _runs(tmp_path, "trial")
    assert killed.info.status == "KILLED" and "train/loss" in killed.data.metrics
    old_seeds = {r.info.run_id for r in _runs(tmp_path, "seed")}
    assert len(old_seeds) == 2

    manager.sweep(spec, manager.SweepSettings(storage_url=f"sqlite:///{tmp_path / 'optuna.db'}", trials=2))
    study, runs = _one_trial_run_per_counted_trial(tmp_path)
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 0)
    new_run_id = retry.user_attrs["mlflow_run_id"]
    assert new_run_id != killed.info.run_id and runs[new_run_id].info.status == "FINISHED"
    superseded = {r.info.run_id: r for r in _runs(tmp_path, "superseded")}
    assert set(superseded) == {killed.info.run_id, *old_seeds}
    assert {r.data.tags["cvstudy.superseded_by"] for r in superseded.values()} == {new_run_id}
    assert {r.info.status for r in superseded.values()} == {"KILLED"}
    assert not old_seeds & {r.info.run_id for r in _runs(tmp_path, "seed")}


# ----------------------------------------------------------------------------- chaos
def _worker(tmp_path, path, journal) -> subprocess.Popen:
    cmd = [CVSTUDY, "sweep", "--study-file", str(path), "--trials", "8", "--storage", journal]
    with open(tmp_path / "workers.log", "a") as log:  # every worker's output, for a failure's diagnosis
        return subprocess.Popen(
            [*cmd, "--state-min-seconds", "0"], cwd=tmp_path, env=clean_env(), stdout=log, stderr=subprocess.STDOUT
        )


def _running_trials(journal: Path) -> list[tuple[int, bool]]:
    """(worker pid, whether it reported an epoch) of each RUNNING trial."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="tiny", storage=storage)
    return [
        (t.user_attrs["pid"], bool(t.intermediate_values))
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if "pid" in t.user_attrs
    ]


@pytest.mark.long
def test_workers_killed_and_restarted_at_random_leave_one_run_per_trial(tmp_path, tiny_data):
    # 12 epochs: trials long enough that kills land in them while a killed worker exits and restarts
    path = study_file(tmp_path, tiny_data, pruner="median", epochs=12)
    journal = f"journal:///{tmp_path / 'optuna.journal'}"
    rng = random.Random(0)  # which signal, and a delay of up to 1 s after the trial is seen
    workers = [_worker(tmp_path, path, journal) for _ in range(3)]
    for kill in range(6):
        # alternately: a trial that has not reported an epoch (its run may not exist yet), then one that has
        after_an_epoch = kill % 2 == 1
        try:
            wait_for(
                lambda late=after_an_epoch: any(e or not late for _, e in _running_trials(tmp_path / "optuna.journal")),
                timeout=60,
                every=0.1,
            )
        except AssertionError:
            break  # the study reached its target meanwhile
        time.sleep(rng.uniform(0.0, 1.0))
        pids = {pid for pid, e in _running_trials(tmp_path / "optuna.journal") if e or not after_an_epoch}
        i = next((i for i, w in enumerate(workers) if w.pid in pids), None)
        if i is None:
            continue  # that trial ended meanwhile
        workers[i].send_signal(rng.choice([signal.SIGKILL, signal.SIGTERM]))
        workers[i].wait(timeout=120)
        workers[i] = _worker(tmp_path, path, journal)
    for w in workers:
        assert w.wait(timeout=600) == 0
    last = run_cli(["sweep", "--study-file", path, "--trials", "8", "--storage", journal], cwd=tmp_path)
    assert last.returncode == 0 and "target reached" in last.stdout, last.stdout + last.stderr

    study = optuna.load_study(
        study_name="tiny",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal"))
        ),
    )
    counted = [t for t in current_trials(study) if t.state in COUNTED]
    assert len(counted) == 8  # the exact target
    assert count_trials(study).retried >= 3  # the kills landed in trials
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    client = _client(tmp_path)
    exp = client.get_experiment_by_name("tiny")
    every = client.search_runs([exp.experiment_id], max_results=1000)
    assert not [r.info.run_id for r in every if r.info.status == "RUNNING"]
    trial_runs = {r.info.run_id: r for r in every if r.data.tags.get("cvstudy.role") == "trial"}
    assert sorted(trial_runs) == sorted(t.user_attrs["mlflow_run_id"] for t in counted)
    for r in every:
        if r.data.tags.get("cvstudy.role") == "superseded":
            assert r.data.tags["cvstudy.superseded_by"] in trial_runs
    for t in counted:
        run_id = t.user_attrs["mlflow_run_id"]
        assert not client.list_artifacts(run_id, "state"), f"trial {t.number} left a state"
        steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
        assert steps == list(range(len(steps))), f"trial {t.number}: epochs {steps}"
        if t.state == TrialState.COMPLETE:
            assert len(steps) == t.user_attrs["epochs_run"]
