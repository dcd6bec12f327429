"""Trials that survive preemption: a sweep SIGTERMed and then SIGKILLed mid-trial resumes each trial from
its saved epoch, in the same MLflow run, with the saved epochs replayed to Optuna."""

import signal
import sqlite3
import subprocess

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from cvstudy.orchestrator.sweep.trials import count_trials, current_trials
from tests.conftest import CVSTUDY, clean_env, run_cli, wait_for
from tests.orchestrator.test_sweep import study_file

pytestmark = pytest.mark.slow  # starts processes, servers or sweeps (make test-fast skips it)

EPOCHS = 8


def _trial_runs(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    return client, client.search_runs([exp.experiment_id], "tags.`cvstudy.role` = 'trial'", max_results=100)


def _running_run(tmp_path):
    _, runs = _trial_runs(tmp_path)
    running = [r for r in runs if r.info.status == "RUNNING"]
    return running[0] if running else None


def _epochs_logged(tmp_path) -> int:
    client, _ = _trial_runs(tmp_path)
    run = _running_run(tmp_path)
    return len(client.get_metric_history(run.info.run_id, "train/loss")) if run else 0


def _report_rows(tmp_path, storage: str):
    from cvstudy.orchestrator.report.data import load_study_data
    from cvstudy.orchestrator.sweep.storage import open_storage
    from cvstudy.orchestrator.tracking.client import Tracker

    return load_study_data("tiny", open_storage(storage), Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")).rows


def _saved_epoch(tmp_path) -> int:
    run = _running_run(tmp_path)
    value = run.data.tags.get("cvstudy.state_epoch", "") if run else ""
    return int(value) if value.isdigit() else 0


def _interrupt(tmp_path, path, sig, ready, *extra) -> None:
    """Start the sweep, wait until ``ready(tmp_path)``, send ``sig``."""
    proc = subprocess.Popen(
        [CVSTUDY, "sweep", "--study-file", str(path), "--trials", "2", *extra],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for(lambda: ready(tmp_path), timeout=300, every=0.2)
    proc.send_signal(sig)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == (130 if sig == signal.SIGTERM else -signal.SIGKILL), out


def test_a_preempted_trial_resumes_from_its_saved_epoch_in_the_same_mlflow_run(tmp_path, tiny_data):
    path = study_file(tmp_path, tiny_data, pruner="none", epochs=EPOCHS)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    # SIGTERM, what SLURM sends on preemption: the newest epoch's state, held in memory (the default writes
    # at most once a minute), is written on the way out
    _interrupt(tmp_path, path, signal.SIGTERM, lambda p: _epochs_logged(p) >= 3)  # epoch 2's state is taken
    study = optuna.load_study(study_name="tiny", storage=storage)
    first = study.trials[0]
    assert first.state == TrialState.FAIL and study.trials[1].state == TrialState.WAITING
    retry = study.trials[1].user_attrs
    run_id = first.user_attrs["mlflow_run_id"]
    assert retry["retry_of"] == 0 and retry["resume_run_id"] == run_id and retry["resume_epoch"] >= 2
    client, runs = _trial_runs(tmp_path)
    assert [r.info.status for r in runs] == ["KILLED"]
    # the queued retry has not run: the report leaves its settings and operations empty (not the defaults')
    waiting = next(r for r in _report_rows(tmp_path, storage) if r.state == "WAITING")
    assert waiting.params == {} and waiting.augmentation == {} and waiting.seconds is None

    # SIGKILL: no chance to write anything; with states written every epoch, the last one is what remains
    _interrupt(
        tmp_path, path, signal.SIGKILL, lambda p: _saved_epoch(p) > retry["resume_epoch"], "--state-min-seconds", "0"
    )
    proc = run_cli(["sweep", "--study-file", path, "--trials", "2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resumes its interrupted run after epoch" in proc.stdout

    study = optuna.load_study(study_name="tiny", storage=storage)
    assert count_trials(study).complete == 2 and count_trials(study).retried == 2
    counted = current_trials(study)
    client, runs = _trial_runs(tmp_path)
    # one MLflow run per counted trial: the preempted trial's run was continued twice, not replaced
    assert sorted(r.info.run_id for r in runs) == sorted(t.user_attrs["mlflow_run_id"] for t in counted)
    run = client.get_run(run_id)
    resumed = next(t for t in counted if t.user_attrs["mlflow_run_id"] == run_id)
    assert run.info.status == "FINISHED" and run.data.tags["cvstudy.resumes"] == "2"
    assert (
        run.data.tags["cvstudy.trial_number"] == str(resumed.number)
        and run.info.run_name == f"trial-{resumed.number:03d}"
    )
    assert "cvstudy.error" not in run.data.tags and run.data.tags["cvstudy.trial_state"] == "COMPLETE"
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == list(range(EPOCHS))  # contiguous, none repeated
    # Optuna sees the whole curve on the counted trial: the saved epochs replayed, then the new ones,
    # equal to what the run logged at each step
    logged = {m.step + 1: m.value for m in client.get_metric_history(run_id, "val/balanced_accuracy")}
    assert resumed.intermediate_values == logged
    assert resumed.value == run.data.metrics["val/best_balanced_accuracy"]
    # its seconds count every epoch the run trained, the pauses between excluded: the resumed trial's own
    # wall time, plus the epochs before it as the run logged them (as its device seconds count them)
    row = next(r for r in _report_rows(tmp_path, storage) if r.number == resumed.number)
    before = sum(
        m.value
        for m in client.get_metric_history(run_id, "cost/epoch_seconds")
        if m.step < resumed.user_attrs["resume_epoch"]
    )
    own = (resumed.datetime_complete - resumed.datetime_start).total_seconds()
    assert before > 0 and row.seconds == pytest.approx(own + before, abs=1e-6)
    # a finished trial keeps no state
    assert run.data.tags["cvstudy.state_epoch"].startswith("deleted")
    assert not client.list_artifacts(run_id, "state")


def test_states_between_writes_are_held_in_memory_and_written_when_interrupted(tmp_path, monkeypatch):
    """``state_every: 3``: epochs 1 and 2 stay in memory, an interruption writes epoch 2; epoch 3 is
    written and replaces it; the run's tag names only a fully written file; ``min_seconds`` holds back
    a due write."""
    import torch

    from cvstudy.orchestrator.tracking.client import TrackedRun, Tracker
    from cvstudy.orchestrator.tracking.results import load_state
    from cvstudy.orchestrator.tracking.states import StateKeeper
    from cvstudy.trainers.config import TrainConfig
    from cvstudy.trainers.state import RandomState, TrainState

    monkeypatch.chdir(tmp_path)  # MLflow puts a SQLite store's artifacts in ./mlruns
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = TrackedRun(tracker.client, tracker.client.create_run(tracker.experiment_id("s")).info.run_id)
    keeper = StateKeeper(run, TrainConfig.from_flat({"model": "test_resnet"}), persist_every=3, min_seconds=0)
    weights = torch.zeros(4)

    def state(epoch):
        weights.fill_(epoch)  # the live tensor changes every step: a held state must be a copy
        return TrainState(
            epoch=epoch,
            step=10 * epoch,
            model={"w": weights},
            optimizer={"state": {}, "param_groups": []},
            random=RandomState(device=torch.Generator().get_state(), host={"seed": 0}),
            history=[{"epoch": e} for e in range(epoch)],
            best_row=None,
            best_val=None,
            best_state=None,
            stale_epochs=0,
        )

    def tags():
        return tracker.client.get_run(run.run_id).data.tags

    keeper(state(1))
    keeper(state(2))
    weights.fill_(99)
    assert "cvstudy.state" not in tags() and not tracker.client.list_artifacts(run.run_id, "state")
    keeper.flush()  # what SIGTERM / Ctrl-C does
    assert tags()["cvstudy.state"] == "state/epoch-0002" and tags()["cvstudy.state_epoch"] == "2"
    saved = load_state(tracker.client, run.run_id)
    assert saved.epoch == 2 and saved.step == 20 and torch.equal(saved.model["w"], torch.full((4,), 2.0))
    keeper(state(3))
    assert tags()["cvstudy.state"] == "state/epoch-0003"
    assert [a.path for a in tracker.client.list_artifacts(run.run_id, "state")] == ["state/epoch-0003"]
    keeper.flush()  # nothing newer than what is written
    assert load_state(tracker.client, run.run_id).epoch == 3
    keeper.min_seconds = 3600  # at most one write an hour: epoch 6 is due but held in memory
    keeper(state(6))
    assert tags()["cvstudy.state_epoch"] == "3" and keeper.pending.epoch == 6


def _study(tmp_path):
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")


@pytest.mark.long
def test_a_trial_whose_tracking_store_fails_is_retried_in_the_same_run(tmp_path, tiny_data):
    """The MLflow store locked past SQLite's busy timeout under a running trial (until the trial fails): the
    trial is re-queued like an interrupted one, not counted as a failed configuration, and its retry
    continues the same run from its saved epoch."""
    path = study_file(
        tmp_path, tiny_data, "  lr: [3.0e-3]", "none", "grid", epochs=10
    )  # the lock lands by epoch ~3; the rest resumes
    cmd = [CVSTUDY, "sweep", "--study-file", str(path), "--trials", "1", "--state-min-seconds", "0"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _saved_epoch(tmp_path) >= 2, timeout=300, every=0.2)
        held = sqlite3.connect(tmp_path / "mlflow.db", timeout=60)
        held.execute("BEGIN EXCLUSIVE")  # no other connection reads or writes until it ends
        try:  # held until the worker has given up on the store (after MLflow's own timeout, whatever it is)
            wait_for(lambda: any(t.state.name == "FAIL" for t in _study(tmp_path).trials), timeout=300, every=0.5)
        finally:
            held.rollback()
            held.close()
        out = proc.communicate(timeout=600)[0].decode()
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    counts = count_trials(study)
    assert (counts.complete, counts.failed, counts.retried) == (1, 0, 1), out[-3000:]
    assert "the tracking store failed; re-queued to resume" in out
    failed, retry = study.trials
    assert "TEMPORARILY_UNAVAILABLE" in failed.user_attrs["error"] or "locked" in failed.user_attrs["error"]
    assert retry.user_attrs["mlflow_run_id"] == failed.user_attrs["mlflow_run_id"]  # one run per trial
    assert retry.user_attrs["resume_epoch"] >= 2
    client, runs = _trial_runs(tmp_path)
    assert [r.info.status for r in runs] == ["FINISHED"]
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")]
    assert sorted(set(steps)) == list(range(10))
