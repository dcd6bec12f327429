"""What a training run writes to the store and reads back, the side of tracking that imports the trainer
core and torch: provenance (torch and timm versions), a run's inputs (config, data digests, weights
origin, dataset inputs), its final result (test metrics, per-class table, confusion matrix, predictions,
the model) and its resume state read back. ``client``, ``models`` and ``states`` are the store without
them, so `cvstudy report` and the other readers start without importing torch (a checked contract:
pyproject.toml's import-linter section)."""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
import timm
import torch
from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelOutput, LoggedModelStatus
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

import cvstudy.trainers as trainers
from cvstudy.trainers.config import TrainConfig
from cvstudy.trainers.data import DEMO_SOURCE
from cvstudy.trainers.loop import FitResult
from cvstudy.trainers.metrics import flat
from cvstudy.trainers.models import resolve_weights, weights_origin
from cvstudy.trainers.state import TrainState

from . import artifacts, digests
from .client import TrackedRun, git_sha
from .figures import per_class_figure, plt
from .schema import KEPT, PREDICTIONS_ARTIFACT, Tag
from .states import STATE_PATH


def provenance_tags(device: str | None = None) -> dict[str, str]:

    sha = git_sha()
    tags = {
        Tag.GIT_SHA: sha,
        Tag.GIT_COMMIT: sha,
        Tag.TORCH_VERSION: torch.__version__,
        Tag.TIMM_VERSION: timm.__version__,
        Tag.PYTHON: platform.python_version(),
        Tag.HOST: platform.node(),
    }
    if device:
        tags[Tag.DEVICE] = device
    return tags


def run_tags(config: TrainConfig, data_source: str, extra: dict | None = None) -> dict[str, str]:
    tags = {**provenance_tags(), Tag.MODEL: config.network.model, Tag.DATA: data_source}
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags


def log_inputs(run: TrackedRun, config: TrainConfig, data) -> None:
    """What a run trains on: its config (params + config.json), data digests and weights origin
    (tags), and its splits as MLflow dataset inputs."""
    run.log_config(config)
    run.set_tags({**data_tags(data), **weights_tags(config)})
    log_datasets(run, data)


def log_datasets(run: TrackedRun, data) -> None:
    """The run's train, validation and test splits as MLflow dataset inputs (the UI's Dataset column):
    each with its content digest, its source, and a profile of image count, shape and class counts."""

    name = "demo" if data.source == DEMO_SOURCE else Path(data.source).name
    inputs = []
    for split, digest in data.digests.items():
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        profile = {
            "num_images": len(x),
            "image_shape": list(x.shape[1:]),
            "class_counts": np.bincount(y, minlength=data.num_classes).tolist(),
        }
        dataset = Dataset(
            name=f"{name}-{split}",
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": data.source}),
            profile=json.dumps(profile),
        )
        inputs.append(DatasetInput(dataset, tags=[InputTag(Tag.DATA_CONTEXT, split)]))
    run.client.log_inputs(run.run_id, datasets=inputs)


def log_result(
    run: TrackedRun,
    result: FitResult,
    image_shape: tuple | None = None,
    test_labels=None,
    class_names: list[str] | None = None,
) -> None:
    """Final metrics, confusion matrix (PNG + JSON), the test predictions (with ``test_labels``, for
    ``cvstudy compare``), the checkpoint as an MLflow model, provenance."""
    run.log_metrics(final_metrics(result))
    if test_labels is not None and "predictions" in result.test:
        run.client.log_dict(
            run.run_id,
            {
                "split": "test",
                "classes": len(result.test["confusion_matrix"]),
                "labels": [int(v) for v in test_labels],
                "predictions": [int(v) for v in result.test["predictions"]],
            },
            PREDICTIONS_ARTIFACT,
        )
    run.set_tags({Tag.STOP_REASON: result.stop_reason, Tag.DEVICE: result.device, Tag.IMG_SIZE: result.img_size})
    if result.execution is not None:
        ran = result.execution.describe()
        run.set_tags(
            {
                Tag.AMP_DTYPE: ran["amp_dtype"],
                Tag.MEMORY_FORMAT: ran["memory_format"],
                Tag.COMPILED: ran["compiled"],
                Tag.DATA_ON: ran["data_on"],
            }
        )
    if result.weights_report is not None:
        run.set_tags({Tag.WEIGHTS: result.weights_report.summary()[:5000]})
    if result.checks:
        run.set_tags({Tag.check(name): said[:5000] for name, said in result.checks.items()})
    run.client.log_dict(run.run_id, result.history, "history.json")
    table = per_class_table(result, class_names)
    run.client.log_table(run.run_id, table, PER_CLASS_ARTIFACT)
    figure = per_class_figure(table, f"per class, best epoch {result.best_epoch}")
    run.client.log_figure(run.run_id, figure, PER_CLASS_FIGURE)
    plt.close(figure)
    run.log_confusion(
        result.test["confusion_matrix"],
        f"test, best epoch {result.best_epoch}",
        {"best_epoch": result.best_epoch},
        class_names,
    )
    if result.checkpoint is not None:
        model_id = log_model(
            run.client, run.run_id, result.checkpoint.parent, image_shape, len(result.test["confusion_matrix"])
        )
        run.set_tags(
            {Tag.CHECKPOINT: KEPT, Tag.MODEL_ID: model_id, Tag.MODEL_SHA256: digests.sha256(result.checkpoint)}
        )


def data_tags(data) -> dict[str, str]:
    return {Tag.data_digest(split): digest for split, digest in data.digests.items()}


def weights_tags(config: TrainConfig) -> dict[str, str]:
    """Where the run's initial weights come from: ``scratch``, a file path, or ``hub <repo>@<commit>``
    (cache only: the command checked, and if needed downloaded, the weights before any run existed)."""
    path = resolve_weights(config.network)
    return {Tag.WEIGHTS_ORIGIN: weights_origin(path) if path is not None else "scratch"}


PER_CLASS_ARTIFACT = "per_class.json"
PER_CLASS_FIGURE = "per_class.png"


def per_class_table(result: FitResult, class_names: list[str] | None = None) -> dict[str, list]:
    """Per class: its test images, test precision, recall and F1 (the selected checkpoint's) and the
    selected epoch's validation recall: one table (``per_class.json``) instead of 40 scalar metrics."""
    test, val = result.test, result.val
    classes = len(test["confusion_matrix"])
    return {
        "class": class_names or [str(c) for c in range(classes)],
        "test_images": [int(sum(row)) for row in test["confusion_matrix"]],
        "test_precision": list(test["precision_per_class"]),
        "test_recall": list(test["recall_per_class"]),
        "test_f1": list(test["f1_per_class"]),
        "val_recall": list(val["recall_per_class"]),
    }


def final_metrics(result: FitResult) -> dict[str, float]:
    """What a run records at its end: test metrics, the selected epoch's validation metrics, epochs
    (per-class values: ``per_class_table``)."""
    return {
        **flat(result.test, "test", per_class=()),
        **{f"best_{k}": v for k, v in flat(result.val, "val", per_class=()).items()},
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        **result.cost,  # trainers.cost.COST_METRICS
    }


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


def load_state(client, run_id: str) -> TrainState:
    """Download, check and read a run's current state. Raises LookupError when it has none or it cannot
    be read, ``DamagedFile`` when its bytes are not the ones written (``Tag.STATE_SHA256``)."""
    tags = client.get_run(run_id).data.tags
    artifact = tags.get(Tag.STATE, "")
    if not STATE_PATH.fullmatch(artifact):
        raise LookupError(f"run {run_id} has no resume state")
    try:
        path = client.download_artifacts(run_id, f"{artifact}/{TrainState.FILE}")
    except Exception as err:  # noqa: BLE001 -- a missing file or an unreachable store
        raise LookupError(f"run {run_id}: its resume state {artifact} cannot be read ({err})") from None
    digests.verify(path, tags.get(Tag.STATE_SHA256), f"run {run_id}: its resume state {artifact}/{TrainState.FILE}")
    try:
        return TrainState.load(path)
    except Exception as err:  # noqa: BLE001 -- a file from before digests, unreadable
        raise LookupError(f"run {run_id}: its resume state {artifact} cannot be read ({err})") from None
