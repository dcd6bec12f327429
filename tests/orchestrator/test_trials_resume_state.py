"""Re-queueing an interrupted trial with its run's saved state (``requeue_with_state``), on an in-memory
Optuna study and a real MLflow store written and read with MLflow's own client: which run and epoch the
retry resumes, and the state deleted when no retry will resume it. The sweeps that interrupt trials for
real are in test_preemption.py and test_trials.py."""

from __future__ import annotations

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from cvstudy.orchestrator.sweep.trials import requeue_with_state

PARAMS = {"lr": 0.01}
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


def _study(*retry_of: int):
    """Trial 0 failed (interrupted); each number in ``retry_of`` already has a queued retry."""
    study = optuna.create_study()
    dist = {"lr": FloatDistribution(1e-5, 1.0, log=True)}
    study.add_trial(create_trial(state=TrialState.FAIL, params=PARAMS, distributions=dist))
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
