"""``cvstudy predict``: reload a run's logged checkpoint and predict the test split.

The checkpoint is read with safetensors (no pickles). Predictions go to a CSV with the original
study's columns (``True Label``, ``Predicted Label``) plus one probability column per class; the
metrics are recomputed and compared with the run's logged test metrics.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from mlflow.exceptions import MlflowException
from rich.console import Console

from cvstudy.trainers.data import load_dataset
from cvstudy.trainers.inference import Classifier
from cvstudy.trainers.loop import resolve_device
from cvstudy.trainers.metrics import SCALARS, classification_metrics

from ..errors import CheckFailed, ConfigError, PredictError, StoreError
from ..sweep.storage import default_storage, find_study, open_storage
from ..sweep.trials import best_trial, checkpoint_run_id
from ..tracking.client import Tracker
from ..tracking.models import checkpoint_path, checkpoint_state, is_deleted
from ..tracking.schema import Tag, run_metrics


def best_run_id(study_name: str, storage_url: str | None, tracker: Tracker) -> str:
    study = find_study(open_storage(storage_url or default_storage(tracker.uri)), study_name)
    if study is None:
        raise PredictError(f"no study named {study_name!r} in the storage")
    best = best_trial(study)
    if best is None:
        raise PredictError(f"study {study_name!r} has no complete trial yet")
    run_id = checkpoint_run_id(best)
    if not run_id:
        raise PredictError(f"the best trial ({best.number}) of {study_name!r} names no MLflow run")
    return run_id


def registered_run_id(model_uri: str, tracker: Tracker) -> str:
    """The run behind ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` in the Model Registry."""
    ref = model_uri.removeprefix("models:/")
    name, at, alias = ref.partition("@")
    try:
        if at:
            version = tracker.client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = ref.rpartition("/")
            if not name or not number.isdigit():
                raise PredictError(f"{model_uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
            version = tracker.client.get_model_version(name, number)
    except MlflowException as err:
        said = str(err).splitlines()[0][:200]
        raise PredictError(
            f"{model_uri}: not in the model registry at {tracker.shown} ({said}); a sweep registers its "
            f"study's best as models:/STUDY@best once a trial completes; a study's trials are also reached "
            f"by `--study STUDY --best` (or --run-id ID)"
        ) from None
    if not version.run_id:
        raise PredictError(f"{model_uri}: version {version.version} names no cvstudy run")
    return version.run_id


def predict(
    run_id: str | None = None,
    study: str | None = None,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    data: str | None = None,
    out: str | None = None,
    model_uri: str | None = None,
    console: Console | None = None,
) -> dict:
    console = console or Console()
    tracker = Tracker(tracking_uri)
    run, path = checkpoint_of(
        tracker, console, run_id=run_id, study=study, storage_url=storage_url, model_uri=model_uri
    )
    run_id = run.info.run_id
    classifier, exact = load_classifier(run, path, console)
    device = classifier.device
    dataset = load_dataset(data if data is not None else classifier.config.dataset.data, *classifier.config.split[1:])
    if dataset.num_classes != classifier.num_classes:
        raise PredictError(
            f"{dataset.source}: {dataset.num_classes} classes, but run {run_id} was trained on {classifier.num_classes}"
        )
    probs = classifier.probabilities(dataset.test_x)
    pred = probs.argmax(1)
    metrics = classification_metrics(dataset.test_y, pred, dataset.num_classes)
    out_path = Path(out or f"predictions-{run_id[:8]}.csv")
    write_predictions(out_path, dataset.test_y, pred, probs)
    logged = {k: run_metrics(run).get(f"test_{k}") for k in SCALARS}
    for k in SCALARS:
        console.print(
            f"test {k.replace('_', ' ')}: {metrics[k]:.6f}  (logged {logged[k]:.6f})"
            if logged[k] is not None
            else f"test {k}: {metrics[k]:.6f}",
            highlight=False,
        )
    same = all(logged[k] is not None and logged[k] == metrics[k] for k in SCALARS)
    own_test_set = run.data.tags.get(Tag.data_digest("test")) == dataset.digests["test"]
    if not own_test_set:
        console.print("[yellow]other data than the run's test set: not compared with its logged test metrics[/]")
    elif same:
        console.print("matches the run's logged test metrics exactly")
    elif not exact:
        console.print("[yellow]differs from the run's logged test metrics (another device: not exact)[/]")
    else:  # the run's own test set on its own device: the check failed
        failed = out_path.with_name(f"{out_path.stem}.FAILED{out_path.suffix}")
        out_path.replace(failed)
        raise CheckFailed(
            f"run {run_id}: its checkpoint's predictions of its own test set on {device} do not reproduce its "
            f"logged test metrics (test accuracy {metrics['accuracy']:.6f}, logged {logged['accuracy']}); the "
            f"checkpoint or the data changed; predictions kept as {failed}"
        )
    console.print(f"wrote {out_path} ({len(pred)} predictions) from run {run_id}")
    return {"run_id": run_id, "metrics": metrics, "logged": logged, "same": same, "csv": out_path}


def checkpoint_of(
    tracker: Tracker,
    console: Console,
    run_id: str | None = None,
    study: str | None = None,
    storage_url: str | None = None,
    model_uri: str | None = None,
):
    """The run holding the checkpoint named by a run id, a study's best trial, or a registered model, and
    the checkpoint's local path (downloaded)."""
    if model_uri is not None:
        run_id = registered_run_id(model_uri, tracker)
    if run_id is None:
        if study is None:
            raise PredictError("pass --run-id ID, or --study NAME --best")
        run_id = best_run_id(study, storage_url, tracker)
    run = checkpoint_run(tracker, run_id, console)
    try:
        path = checkpoint_path(tracker.client, run)
    except StoreError:  # a damaged model file: the storage's fault, said as it is (exit 3)
        raise
    except Exception as err:  # noqa: BLE001 -- no model, or an unreachable artifact store
        raise PredictError(f"run {run.info.run_id}: no checkpoint to load ({str(err).splitlines()[0][:200]})") from None
    return run, path


def load_classifier(run, path: Path, console: Console) -> tuple[Classifier, bool]:
    """The checkpoint on the device and precision the run trained with, so that its numbers match the
    logged ones exactly; on the CPU where this machine lacks that device (then ``exact`` is False)."""
    trained_on = run.data.tags.get(Tag.DEVICE, "cpu")
    exact = True  # on the run's device the predictions reproduce its logged test metrics to the bit
    try:
        device = resolve_device(trained_on)
    except ConfigError:  # a CUDA device this machine does not have
        device, exact = torch.device("cpu"), False
        console.print(
            f"[yellow]run trained on {trained_on}, predicting on cpu: metrics may differ in the last digits[/]"
        )
    return Classifier(path, device), exact


def checkpoint_run(tracker: Tracker, run_id: str, console: Console):
    """The run holding ``run_id``'s checkpoint: itself, or for a trial averaging seeds, its seed best on
    validation. Refuses a run whose checkpoint was deleted."""
    try:
        run = tracker.client.get_run(run_id)
    except Exception as err:  # noqa: BLE001 -- unknown id, or an unreachable tracking server
        raise PredictError(f"run {run_id}: not found at {tracker.shown} ({str(err).splitlines()[0][:200]})") from None
    seed_run = run.data.tags.get(Tag.CHECKPOINT_RUN_ID)
    if seed_run and seed_run != run_id:  # a trial averaging several seeds: its checkpoint is one seed's
        console.print(
            f"run {run_id} averages {run.data.tags.get(Tag.SEEDS, 'several')} seeds; predicting with "
            f"the checkpoint of its seed best on validation, run {seed_run}",
            highlight=False,
        )
        run_id, run = seed_run, tracker.client.get_run(seed_run)
    state = checkpoint_state(run)
    if is_deleted(state):
        raise PredictError(
            f"run {run_id}: its checkpoint was pruned from storage ({state}); predict with a kept "
            "run (cvstudy report lists them) or raise --keep-checkpoints in the next sweep"
        )
    return run


def write_predictions(path: Path, labels, predicted, probabilities) -> None:
    """The original study's columns (True Label, Predicted Label) and one probability column per class."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["True Label", "Predicted Label", *(f"prob_{c}" for c in range(probabilities.shape[1]))])
        for y, p, row in zip(labels, predicted, probabilities):
            writer.writerow([int(y), int(p), *(f"{v:.6f}" for v in row)])
