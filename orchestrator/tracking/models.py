"""Checkpoints as MLflow logged models: finding one's file, deleting it, and the registry (logging one:
``results.log_model``, the side that imports torch).

A kept checkpoint is an MLflow 3 logged model of its run: a pyfunc written as code
(``pyfunc_model.py``) over the safetensors file, with its signature (uint8 N x H x W x 3 in, N x K
probabilities out). The weights live only there.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.exceptions import MlflowException

from . import artifacts, digests
from .schema import DELETED, KEPT, Tag, run_filter

MODEL_CHECKPOINT = "artifacts/checkpoint/model.safetensors"  # inside a logged model's artifacts
BEST_ALIAS = "best"


def checkpoint_path(client, run) -> Path:
    """Download a run's checkpoint from its logged model (``Tag.MODEL_ID``) and check it against the
    digest recorded when it was logged (``DamagedFile`` when they differ)."""
    model_id = run.data.tags.get(Tag.MODEL_ID)
    if not model_id:
        raise LookupError(f"run {run.info.run_id} logged no model")
    location = client.get_logged_model(model_id).artifact_location
    path = Path(artifacts.repository(location, client).download_artifacts(MODEL_CHECKPOINT))
    what = f"run {run.info.run_id}: its logged model {model_id}'s {MODEL_CHECKPOINT}"
    digests.verify(path, run.data.tags.get(Tag.MODEL_SHA256), what)
    return path


def checkpoint_state(run) -> str:
    """The run's ``Tag.CHECKPOINT``: ``kept``, ``deleted: <why>`` or empty (none logged)."""
    return run.data.tags.get(Tag.CHECKPOINT, "")


def is_deleted(tag_value: str) -> bool:
    return tag_value.startswith(DELETED)


def delete_checkpoints(client, experiment_id: str, study_runs, keep_run_ids: set, why: str) -> list[str]:
    """Delete the logged model of every run in ``study_runs`` (runs of one study whose checkpoint is
    kept) that is not in ``keep_run_ids``, and tag the run with ``why``. Returns the runs pruned."""
    deleted = []
    for run in study_runs:
        if run.info.run_id in keep_run_ids:
            continue
        model_id = run.data.tags.get(Tag.MODEL_ID)
        try:
            if model_id:  # delete the model's files, then the model
                location = client.get_logged_model(model_id).artifact_location
                artifacts.repository(location, client).delete_artifacts()
                client.delete_logged_model(model_id)
        except (FileNotFoundError, MlflowException):
            pass  # deleted already (another worker got there first)
        client.set_tag(run.info.run_id, Tag.CHECKPOINT, f"{DELETED}: {why}")
        deleted.append(run.info.run_id)
    return deleted


KEPT_FILTER = run_filter(checkpoint=KEPT)


def register_best(
    client, name: str, run_id: str | None, trial_number: int, objective: str, value: float, metrics: dict[str, float]
):
    """Register the logged model of ``run_id`` (a study's best trial) as a version of the registered
    model ``name`` (a new version only when the best changed), tagged with its trial, objective and test
    metrics (``{name: value}``), and point the alias ``best`` at it. Returns the model version, or None
    when the run logged no model."""
    model_id = client.get_run(run_id).data.tags.get(Tag.MODEL_ID) if run_id else None
    if not model_id:
        return None
    try:
        client.create_registered_model(
            name,
            description=f"The best model of the cvstudy study {name} (selected on {objective}); alias @{BEST_ALIAS}.",
        )
    except MlflowException:
        pass  # exists already
    try:
        current = client.get_model_version_by_alias(name, BEST_ALIAS)
        if current.tags.get(Tag.MODEL_ID) == model_id:
            return current
    except MlflowException:
        pass  # no version yet
    tags = {
        Tag.STUDY: name,
        Tag.TRIAL: str(trial_number),
        Tag.MODEL_ID: model_id,
        Tag.OBJECTIVE: objective,
        objective: f"{value:.6f}",
        **{k: f"{v:.6f}" for k, v in metrics.items()},
    }
    version = client.create_model_version(
        name, source=f"models:/{model_id}", run_id=run_id, tags=tags, model_id=model_id
    )
    client.set_registered_model_alias(name, BEST_ALIAS, version.version)
    return version
