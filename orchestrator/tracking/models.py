"""Checkpoints as MLflow logged models: logging one, finding its file, deleting it, and the registry.

A kept checkpoint is an MLflow 3 logged model of its run: a pyfunc written as code
(``pyfunc_model.py``) over the safetensors file, with its signature (uint8 N x H x W x 3 in, N x K
probabilities out). The weights live only there.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
import timm
import torch
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

import trainers

from . import artifacts, digests
from .schema import DELETED, KEPT, Tag, run_filter

MODEL_CHECKPOINT = "artifacts/checkpoint/model.safetensors"  # inside a logged model's artifacts
BEST_ALIAS = "best"


def log_model(client, run_id: str, checkpoint_dir: Path, image_shape: tuple | None, num_classes: int) -> str:
    """Log the checkpoint in ``checkpoint_dir`` as a logged model of ``run_id``; returns the model id."""

    h, w, c = image_shape or (-1, -1, 3)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, h, w, c))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]),
    )
    requirements = [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"timm=={timm.__version__}",
        "safetensors",
        "numpy",
    ]  # given: no slow inference pass
    experiment_id = client.get_run(run_id).info.experiment_id
    with tempfile.TemporaryDirectory(prefix="cvstudy-model-") as tmp:
        staged = shutil.copytree(checkpoint_dir, Path(tmp) / "checkpoint")  # -> artifacts/checkpoint/ in the model
        with warnings.catch_warnings():  # MLflow's advice to give an input example: the signature is given
            warnings.filterwarnings("ignore", message=r".*input example was not provided")
            mlflow.pyfunc.save_model(
                Path(tmp) / "model",
                python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                artifacts={"checkpoint": str(staged)},
                signature=signature,
                code_paths=[str(Path(trainers.__file__).parent)],
                pip_requirements=requirements,
            )
        model = client.create_logged_model(
            experiment_id, name="model", source_run_id=run_id, model_type="cvstudy image classifier"
        )
        try:
            client.log_model_artifacts(model.model_id, str(Path(tmp) / "model"))
        except BaseException:  # a full disk, an interrupt: no partial model stays behind
            try:
                artifacts.repository(model.artifact_location, client).delete_artifacts()
                client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            except Exception:  # noqa: BLE001 -- nothing was copied, or the store is down  # nosec B110
                pass
            raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    return model.model_id


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
