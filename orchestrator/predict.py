"""``cvstudy predict``: reload a run's logged checkpoint and predict the test split.

The checkpoint is read with safetensors (no pickles). Predictions go to a CSV with the original
study's columns (``True Label``, ``Predicted Label``) plus one probability column per class; the
metrics are recomputed and compared with the run's logged test metrics.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from rich.console import Console

from trainers.augment import BatchTransform
from trainers.data import load_dataset
from trainers.loop import load_checkpoint, predict_logits, resolve_device
from trainers.metrics import SCALARS, classification_metrics
from trainers.models import normalisation

from .tracking import TAG, Tracker, checkpoint_path


class PredictError(ValueError):
    """A run or study that cannot be predicted from; one line for the user."""


def best_run_id(study_name: str, storage_url: str | None, tracker: Tracker) -> str:
    import optuna

    from .storage import default_storage, open_storage
    from .trials import best_trial

    storage = open_storage(storage_url or default_storage(tracker.uri))
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise PredictError(f"no study named {study_name!r} in the storage") from None
    best = best_trial(study)
    if best is None:
        raise PredictError(f"study {study_name!r} has no complete trial yet")
    # A trial with repeats keeps one checkpoint, in the run of its seed best on validation.
    run_id = best.user_attrs.get("checkpoint_run_id") or best.user_attrs.get("mlflow_run_id")
    if not run_id:
        raise PredictError(f"the best trial ({best.number}) of {study_name!r} names no MLflow run")
    return run_id


def registered_run_id(model_uri: str, tracker: Tracker) -> str:
    """The run behind ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` in the Model Registry."""
    from mlflow.exceptions import MlflowException

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
        raise PredictError(f"{model_uri}: not in the model registry at {tracker.uri} "
                           f"({str(err).splitlines()[0][:200]})") from None
    if not version.run_id:
        raise PredictError(f"{model_uri}: version {version.version} names no cvstudy run")
    return version.run_id


def predict(run_id: str | None = None, study: str | None = None, storage_url: str | None = None,
            tracking_uri: str | None = None, data: str | None = None, out: str | None = None,
            model_uri: str | None = None, console: Console | None = None) -> dict:
    console = console or Console()
    tracker = Tracker(tracking_uri)
    if model_uri is not None:
        run_id = registered_run_id(model_uri, tracker)
    if run_id is None:
        if study is None:
            raise PredictError("pass --run-id ID, or --study NAME --best")
        run_id = best_run_id(study, storage_url, tracker)
    try:
        run = tracker.client.get_run(run_id)
    except Exception as err:  # noqa: BLE001
        raise PredictError(f"run {run_id}: not found at {tracker.uri} ({str(err).splitlines()[0][:200]})") from None
    seed_run = run.data.tags.get(f"{TAG}.checkpoint_run_id")
    if seed_run and seed_run != run_id:  # a trial averaging several seeds: its checkpoint is one seed's
        console.print(f"run {run_id} averages {run.data.tags.get(f'{TAG}.seeds', 'several')} seeds; predicting with "
                      f"the checkpoint of its seed best on validation, run {seed_run}", highlight=False)
        run_id, run = seed_run, tracker.client.get_run(seed_run)
    state = run.data.tags.get(f"{TAG}.checkpoint", "")
    if state.startswith("deleted"):
        raise PredictError(f"run {run_id}: its checkpoint was pruned from storage ({state}); predict with a kept "
                           "run (cvstudy report lists them) or raise --keep-checkpoints in the next sweep")
    try:
        path = checkpoint_path(tracker.client, run)
    except Exception as err:  # noqa: BLE001
        raise PredictError(f"run {run_id}: no checkpoint to load ({str(err).splitlines()[0][:200]})") from None
    model, config, meta = load_checkpoint(path)
    dataset = load_dataset(data if data is not None else config.data.data, *config.split[1:])
    if dataset.num_classes != meta["num_classes"]:
        raise PredictError(f"{dataset.source}: {dataset.num_classes} classes, but run {run_id} was trained on "
                           f"{meta['num_classes']}")
    # Same device and precision as training, so the numbers match the logged ones exactly.
    trained_on = run.data.tags.get("cvstudy.device", "cpu")
    try:
        device = resolve_device(trained_on)
    except ValueError:
        device = torch.device("cpu")
        console.print(f"[yellow]run trained on {trained_on}, predicting on cpu: metrics may differ in the last digits[/]")
    model = model.to(device)
    mean, std = normalisation(model)
    transform = BatchTransform("none", meta["img_size"], mean, std, channels_last=device.type == "cuda")
    logits = predict_logits(model, torch.from_numpy(dataset.test_x).to(device), transform,
                            amp=device.type == "cuda" and config.run.amp)
    probs = logits.softmax(1).cpu().numpy()
    pred = probs.argmax(1)
    metrics = classification_metrics(dataset.test_y, pred, dataset.num_classes)
    out_path = Path(out or f"predictions-{run_id[:8]}.csv")
    with open(out_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["True Label", "Predicted Label", *(f"prob_{c}" for c in range(dataset.num_classes))])
        for y, p, row in zip(dataset.test_y, pred, probs):
            writer.writerow([int(y), int(p), *(f"{v:.6f}" for v in row)])
    logged = {k: run.data.metrics.get(f"test_{k}") for k in SCALARS}
    for k in SCALARS:
        console.print(f"test {k.replace('_', ' ')}: {metrics[k]:.6f}  (logged {logged[k]:.6f})" if logged[k] is not None
                      else f"test {k}: {metrics[k]:.6f}", highlight=False)
    same = all(logged[k] is not None and logged[k] == metrics[k] for k in SCALARS)
    console.print("matches the run's logged test metrics exactly" if same
                  else "[yellow]differs from the run's logged test metrics[/]")
    console.print(f"wrote {out_path} ({len(pred)} predictions) from run {run_id}")
    return {"run_id": run_id, "metrics": metrics, "logged": logged, "same": same, "csv": out_path}
