"""Re-queueing an interrupted trial with its run's saved state (``requeue_with_state``), on an in-memory
Optuna study and a real MLflow store written and read with MLflow's own client: which run and epoch the
retry resumes, and the state deleted when no retry will resume it. The sweeps that interrupt trials for
real are in test_preemption.py and test_trials.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import warnings

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from cvstudy.orchestrator.processes import HOST
from cvstudy.orchestrator.sweep.storage import GRACE_SECONDS
from cvstudy.orchestrator.sweep.trials import checkpoint_run_id, fail_lost_trials, recover, requeue_with_state

PARAMS = {"lr": 0.01}
DISTRIBUTIONS = {"lr": FloatDistribution(1e-5, 1.0, log=True)}
STATE_TAGS = ("cvstudy.state_epoch", "cvstudy.state", "cvstudy.state_sha256")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("states")
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.create_experiment("lab", artifact_location=(root / "artifacts").as_uri())
    return client, experiment, root


def _run(store, epoch: int | None) -> str:
    """A run that saved its state after ``epoch`` epochs (a file under state/ and the tags a trainer
    writes), or saved none."""
    client, experiment, root = store
    run_id = client.create_run(experiment).info.run_id
    if epoch is not None:
        saved = root / f"state-{run_id}.pt"
        saved.write_bytes(b"weights")
        client.log_artifact(run_id, str(saved), "state")
        client.set_tag(run_id, "cvstudy.state_epoch", str(epoch))
        client.set_tag(run_id, "cvstudy.state", "state/state.pt")
        client.set_tag(run_id, "cvstudy.state_sha256", "0" * 64)
    return run_id


def _add(study, state=TrialState.FAIL, value=None, **attrs) -> None:
    """A trial of PARAMS in ``state``, its user attributes ``attrs``."""
    study.add_trial(
        create_trial(state=state, value=value, params=PARAMS, distributions=DISTRIBUTIONS, user_attrs=attrs)
    )


def _study(*retry_of: int):
    """Study "lab", whose trial 0 failed (interrupted); each number in ``retry_of`` already has a queued retry."""
    study = optuna.create_study(study_name="lab")
    _add(study)
    for number in retry_of:
        study.enqueue_trial(PARAMS, user_attrs={"retry_of": number})
    return study


def _queued(study) -> list[dict]:
    return [t.user_attrs for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]


def test_a_retry_resumes_the_runs_saved_state_from_its_epoch(store):
    client, _, _ = store
    run_id = _run(store, epoch=3)
    study = _study()
    assert requeue_with_state(study, 0, PARAMS, {"baseline": True, "seed": 7}, client, run_id) is True
    assert _queued(study) == [
        {"baseline": True, "retry_of": 0, "retries": 0, "resume_run_id": run_id, "resume_epoch": 3}
    ]
    assert client.get_run(run_id).data.tags["cvstudy.state_epoch"] == "3"  # kept for the retry


def test_a_trial_stopped_before_it_opened_a_run_passes_on_the_run_it_was_to_continue(store):
    client, _, _ = store
    run_id = _run(store, epoch=2)
    study = _study()
    assert requeue_with_state(study, 0, PARAMS, {"resume_run_id": run_id, "resume_epoch": 1}, client, None)
    assert _queued(study) == [{"retry_of": 0, "retries": 0, "resume_run_id": run_id, "resume_epoch": 2}]


def test_a_run_without_a_saved_state_or_that_cannot_be_read_is_resumed_from_the_start(store):
    client, _, _ = store
    study = _study()
    fresh = _run(store, epoch=None)
    assert requeue_with_state(study, 0, PARAMS, {}, client, fresh) is True
    assert _queued(study) == [{"retry_of": 0, "retries": 1, "resume_run_id": fresh}]
    gone = _study()
    assert requeue_with_state(gone, 0, PARAMS, {}, client, "0" * 32) is True  # no such run: no state to read
    assert _queued(gone) == [{"retry_of": 0, "retries": 1, "resume_run_id": "0" * 32}]


def test_a_trial_not_requeued_has_its_runs_saved_state_deleted_and_said_so(store):
    client, _, _ = store
    run_id = _run(store, epoch=3)
    study = _study(0)  # trial 0 already has its retry
    assert requeue_with_state(study, 0, PARAMS, {}, client, run_id) is False
    tags = client.get_run(run_id).data.tags
    assert [tags[t] for t in STATE_TAGS] == ["deleted: the trial was not re-queued"] * 3
    assert client.list_artifacts(run_id, "state") == []
    assert len(_queued(study)) == 1  # only the retry that was there


def test_a_trial_not_requeued_whose_run_saved_no_state_leaves_the_run_as_it_was(store):
    client, _, _ = store
    run_id = _run(store, epoch=None)
    before = client.get_run(run_id).data.tags
    assert requeue_with_state(_study(0), 0, PARAMS, {}, client, run_id) is False
    assert client.get_run(run_id).data.tags == before


# ----------------------------------------------------------------------------- a trial whose worker is gone
def _lost(store, run_status="RUNNING", epoch=2, named=True):
    """Study "lab"'s trial 0, FAIL in Optuna (its worker died), and its run: named on the trial (and no
    tags to find it by), or only findable by the study, trial-number and role tags its worker set before
    it died."""
    client, _, _ = store
    run_id = _run(store, epoch=epoch)
    if not named:
        for key, value in (("cvstudy.study", "lab"), ("cvstudy.trial_number", "0"), ("cvstudy.role", "trial")):
            client.set_tag(run_id, key, value)
    if run_status != "RUNNING":
        client.set_terminated(run_id, run_status)
    study = optuna.create_study(study_name="lab")
    _add(study, **({"mlflow_run_id": run_id} if named else {}))
    return study, study.trials[0], run_id


@pytest.mark.parametrize("named", [True, False], ids=["run named on the trial", "run found by its tags"])
def test_a_lost_trials_run_is_ended_interrupted_with_the_reason_and_its_retry_resumes_it(store, named):
    client, _, _ = store
    study, trial, run_id = _lost(store, named=named)
    recover(study, trial, client, "heartbeat stale")
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert (run.data.tags["cvstudy.trial_state"], run.data.tags["cvstudy.error"]) == ("INTERRUPTED", "heartbeat stale")
    assert _queued(study) == [{"retry_of": 0, "retries": 0, "resume_run_id": run_id, "resume_epoch": 2}]


def test_a_lost_trials_run_that_already_ended_keeps_its_status_and_is_still_resumed(store):
    client, _, _ = store
    study, trial, run_id = _lost(store, run_status="FINISHED")
    recover(study, trial, client, "heartbeat stale")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "cvstudy.error" not in run.data.tags
    assert _queued(study)[0]["resume_run_id"] == run_id


def test_a_lost_trial_whose_run_cannot_be_read_is_still_requeued():
    """The tracking store cannot be opened (as when its server is down): the retry is queued all the same,
    from the start."""
    client = MlflowClient(tracking_uri="sqlite:////nonexistent-folder/mlflow.db")
    study = _study()
    recover(study, study.trials[0], client, "worker pid 1 died")
    assert _queued(study) == [{"retry_of": 0, "retries": 1}]


def test_a_trials_checkpoint_is_its_best_seeds_run_else_its_own_run():
    def trial(**attrs):
        return create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs=attrs)

    assert checkpoint_run_id(trial(mlflow_run_id="own", checkpoint_run_id="seed2")) == "seed2"
    assert checkpoint_run_id(trial(mlflow_run_id="own")) == "own"
    assert checkpoint_run_id(trial()) is None


def _dead_pid() -> int:
    """A process of this host that has exited (and been reaped): its number names no process."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # nosec B603 -- a fixed command
    child.wait()
    return child.pid


def test_running_trials_whose_worker_died_here_or_stopped_beating_are_failed_and_requeued(store):
    """Trial 0's worker is this test, alive; trial 1's was a process of this host that is gone; trial 2's,
    on another host, last beat two grace periods ago; trial 3, on another host, beats; trial 4 is
    complete, its worker gone too. Each lost trial's run is ended with the reason."""
    client, _, _ = store
    study = optuna.create_study(study_name="lab")
    dead = _dead_pid()
    runs = [_run(store, epoch=None) for _ in range(5)]
    workers = [
        {"host": HOST, "pid": os.getpid()},
        {"host": HOST, "pid": dead},
        {"host": "elsewhere", "pid": 99, "heartbeat": time.time() - 2 * GRACE_SECONDS},
        {"host": "elsewhere", "pid": 98, "heartbeat": time.time()},
        {"host": HOST, "pid": dead},
    ]
    for number, (attrs, run_id) in enumerate(zip(workers, runs)):
        state, value = (TrialState.COMPLETE, 0.5) if number == 4 else (TrialState.RUNNING, None)
        _add(study, state, value, **attrs, mlflow_run_id=run_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fail_lost_trials(study, client) == [1, 2]
    assert not [w for w in caught if "could not be cast" in str(w.message)]  # told FAIL, not an empty value
    states = [t.state for t in study.get_trials(deepcopy=False)][:5]
    assert states == [TrialState.RUNNING, TrialState.FAIL, TrialState.FAIL, TrialState.RUNNING, TrialState.COMPLETE]
    assert [a["retry_of"] for a in _queued(study)] == [1, 2]
    errors = [client.get_run(run_id).data.tags.get("cvstudy.error") for run_id in runs]
    assert errors[0] is None and errors[3:] == [None, None]
    assert errors[1] == f"worker pid {dead} on {HOST} died"
    assert re.fullmatch(r"heartbeat stale for 12[01] s \(worker pid 99 on elsewhere\)", errors[2]), errors[2]


def test_a_trial_finished_since_it_was_read_as_running_keeps_its_result(store, monkeypatch):
    """Trial 0's worker was slow, not dead: between the read and the write it completed. It stays
    complete, with no retry to supersede it; trial 1, lost too, is still recovered."""
    client, _, _ = store
    study = optuna.create_study(study_name="lab")
    for _ in range(2):
        _add(study, TrialState.RUNNING, host="elsewhere", pid=97, heartbeat=time.time() - 2 * GRACE_SECONDS)
    read = study.get_trials(deepcopy=True, states=(TrialState.RUNNING,))
    study.tell(0, 0.9)  # the worker finishes
    monkeypatch.setattr(study, "get_trials", lambda deepcopy=True, states=None: read)  # what was read before
    assert fail_lost_trials(study, client) == [1]
    monkeypatch.undo()
    assert [t.state for t in study.trials[:2]] == [TrialState.COMPLETE, TrialState.FAIL]
    assert [a["retry_of"] for a in _queued(study)] == [1]
