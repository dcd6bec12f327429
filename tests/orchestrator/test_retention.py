"""Checkpoint retention among workers: a trial still running has logged its checkpoint (tagged kept) before
Optuna hears it complete; another worker's retention must leave it, or a study's best may end with no model.
Read back with MLflow's own client, on a real SQLite store."""

from __future__ import annotations

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState, create_trial

from cvstudy.orchestrator.sweep.trials import retain_checkpoints
from cvstudy.orchestrator.tracking.schema import DELETED, KEPT, Tag, TrialAttr


def _trial_run(client: MlflowClient, experiment_id: str, number: int) -> str:
    """A trial's run as a worker leaves it once training has ended: its logged model, tagged kept."""
    run_id = client.create_run(experiment_id, tags={Tag.STUDY: "s", Tag.TRIAL_NUMBER: str(number)}).info.run_id
    model = client.create_logged_model(experiment_id, name="model", source_run_id=run_id)
    client.set_tag(run_id, Tag.MODEL_ID, model.model_id)
    client.set_tag(run_id, Tag.CHECKPOINT, KEPT)
    return run_id


def test_retention_leaves_the_checkpoint_of_a_trial_that_has_not_yet_been_told_complete(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("s", artifact_location=(tmp_path / "artifacts").as_uri())
    study = optuna.create_study(study_name="s", direction="maximize")
    runs = {}
    for number, value in enumerate([0.5, 0.7]):
        runs[number] = _trial_run(client, experiment_id, number)
        study.add_trial(
            create_trial(state=TrialState.COMPLETE, value=value, user_attrs={TrialAttr.MLFLOW_RUN_ID: runs[number]})
        )
    running = study.ask()  # trial 2: trained, its checkpoint logged, not yet told
    runs[2] = _trial_run(client, experiment_id, running.number)
    running.set_user_attr(TrialAttr.MLFLOW_RUN_ID, runs[2])

    def checkpoint(number: int) -> str:
        return client.get_run(runs[number]).data.tags[Tag.CHECKPOINT]

    assert retain_checkpoints(study, client, experiment_id, "s", keep=1) == [runs[0]]
    assert checkpoint(0).startswith(DELETED) and checkpoint(1) == KEPT
    assert checkpoint(2) == KEPT  # still running: not judged
    client.get_logged_model(client.get_run(runs[2]).data.tags[Tag.MODEL_ID])  # its model is still there

    study.tell(running, 0.9)  # it turns out the best
    assert retain_checkpoints(study, client, experiment_id, "s", keep=1) == [runs[1]]
    assert checkpoint(1).startswith(DELETED) and checkpoint(2) == KEPT
