"""MLflow bookkeeping: where runs go, what each run records, and that no run is left RUNNING.

Default store: MLflow's own default, ``sqlite:///mlflow.db`` in the working directory with artifacts
under ``./mlruns``, so a plain ``mlflow ui`` started there shows every run. ``MLFLOW_TRACKING_URI``
or ``--tracking-uri`` override it (e.g. ``http://host:5000`` for a shared tracking server).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from trainers.config import TrainConfig
from trainers.loop import FitResult
from trainers.metrics import flat

TAG = "cvstudy"  # prefix of every tag cvstudy writes


# MLflow 3's UI opens an experiment in its GenAI view unless the experiment says it is model training.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
UI_DEFAULT = "http://127.0.0.1:5000"  # where a plain `mlflow ui` listens


def ui_link(tracking_uri: str, experiment_id: str, run_id: str | None = None, role: str | None = None,
            sort_metric: str | None = None, charts: bool = False) -> str:
    """A link into the MLflow UI's "Model training" view: one run's page, or the experiment's runs
    (optionally only those tagged ``cvstudy.role=<role>``, best first by ``sort_metric``, as charts)."""
    from urllib.parse import urlencode

    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else UI_DEFAULT
    if run_id:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    query = {"workflowType": "machine_learning"}
    if role:
        query["searchFilter"] = f"tags.`{TAG}.role` = '{role}'"
    if sort_metric:
        query.update(orderByKey=f"metrics.`{sort_metric}`", orderByAsc="false")
    if charts:
        query["compareRunsMode"] = "CHART"
    return f"{base}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def browse_hint(tracking_uri: str, link: str) -> str:
    start = ("`mlflow ui` (from this directory, no flags), then open" if not tracking_uri.startswith(("http://", "https://"))
             else "open")
    return f"browse: {start} {link}"


def resolve_tracking_uri(uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def git_sha() -> str:
    """The commit of the cvstudy checkout that runs (provenance), or 'unknown' outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance_tags(device: str | None = None) -> dict[str, str]:
    import timm
    import torch

    sha = git_sha()
    tags = {f"{TAG}.git_sha": sha, "mlflow.source.git.commit": sha, f"{TAG}.torch_version": torch.__version__,
            f"{TAG}.timm_version": timm.__version__, f"{TAG}.python": platform.python_version(),
            f"{TAG}.host": platform.node()}
    if device:
        tags[f"{TAG}.device"] = device
    return tags


class Tracker:
    """A thin owner of one MlflowClient: experiments by name, runs by context manager."""

    def __init__(self, tracking_uri: str | None = None):
        from mlflow.tracking import MlflowClient

        self.uri = resolve_tracking_uri(tracking_uri)
        if self.uri.startswith("sqlite:///"):
            # The first client on a new SQLite file creates MLflow's tables; two processes doing that at
            # once corrupt the migration. Serialise store creation across processes with a file lock.
            import fcntl

            lock_path = Path(self.uri[len("sqlite:///"):].split("?")[0] + ".lock")
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            with open(lock_path, "a+") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                self.client = MlflowClient(tracking_uri=self.uri)
                self.client.search_experiments(max_results=1)  # forces the store (and its tables) into being
        else:
            self.client = MlflowClient(tracking_uri=self.uri)

    def experiment_id(self, name: str) -> str:
        """Get or create (race-safe: several workers may ask at once)."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            if found.tags.get(EXPERIMENT_KIND[0]) is None:
                self.client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
            return found.experiment_id
        try:
            return self.client.create_experiment(name, tags=dict([EXPERIMENT_KIND]))
        except MlflowException:
            return self.client.get_experiment_by_name(name).experiment_id

    @contextmanager
    def run(self, experiment: str, run_name: str, tags: dict[str, str] | None = None,
            parent_run_id: str | None = None, ends: dict[type, str] | None = None) -> Iterator["TrackedRun"]:
        """A run that always ends terminal (statuses from ``trials.OUTCOMES``): COMPLETE on success
        (unless ended otherwise), INTERRUPTED on Ctrl-C / SIGTERM, FAIL with the error on any exception,
        except exception types named in ``ends`` (e.g. Optuna's TrialPruned -> PRUNED)."""
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        created = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=tags)
        with self.ending(TrackedRun(self.client, created.info.run_id), ends) as run:
            yield run

    @contextmanager
    def attach(self, run_id: str, tags: dict[str, str] | None = None, run_name: str | None = None,
               ends: dict[type, str] | None = None, clear: tuple[str, ...] = ()) -> Iterator["TrackedRun"]:
        """Continue an existing run (a trial resumed from its saved state): RUNNING again, with updated
        tags and the ``clear`` tags of its last ending removed, ending like ``run``."""
        from mlflow.exceptions import MlflowException

        self.client.update_run(run_id, status="RUNNING", name=run_name)
        for key in clear:
            try:
                self.client.delete_tag(run_id, key)
            except MlflowException:
                pass  # not set
        run = TrackedRun(self.client, run_id)
        run.set_tags(tags or {})
        with self.ending(run, ends) as run:
            yield run

    @contextmanager
    def ending(self, run: "TrackedRun", ends: dict[type, str] | None = None) -> Iterator["TrackedRun"]:
        try:
            yield run
        except KeyboardInterrupt:
            run.end("INTERRUPTED", {f"{TAG}.error": "interrupted"})
            raise
        except BaseException as err:
            outcome = next((o for kind, o in (ends or {}).items() if isinstance(err, kind)), "FAIL")
            run.end(outcome, {f"{TAG}.error": f"{type(err).__name__}: {err}"[:5000]} if outcome == "FAIL" else {})
            raise
        run.end("COMPLETE")


class TrackedRun:
    def __init__(self, client, run_id: str):
        self.client = client
        self.run_id = run_id
        self.finished = False

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])  # one transaction

    def log_config(self, config: TrainConfig) -> None:
        """The resolved config as params and as config.json."""
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in config.to_flat().items()]
        self.client.log_batch(self.run_id, params=params)
        self.client.log_dict(self.run_id, config.to_flat(), "config.json")

    def log_inputs(self, config: TrainConfig, data) -> None:
        """What a run trains on: its config (params + config.json), data digests and weights origin
        (tags), and its splits as MLflow dataset inputs."""
        self.log_config(config)
        self.set_tags({**data_tags(data), **weights_tags(config)})
        self.log_datasets(data)

    def log_datasets(self, data) -> None:
        """The run's train, validation and test splits as MLflow dataset inputs (the UI's Dataset column):
        each with its content digest, its source, and a profile of image count, shape and class counts."""
        import json

        import numpy as np
        from mlflow.entities import Dataset, DatasetInput, InputTag

        from trainers.data import DEMO_SOURCE

        name = "demo" if data.source == DEMO_SOURCE else Path(data.source).name
        inputs = []
        for split, digest in data.digests.items():
            x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
            profile = {"num_images": len(x), "image_shape": list(x.shape[1:]),
                       "class_counts": np.bincount(y, minlength=data.num_classes).tolist()}
            dataset = Dataset(name=f"{name}-{split}", digest=digest, source_type="local",
                              source=json.dumps({"uri": data.source}), profile=json.dumps(profile))
            inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", split)]))
        self.client.log_inputs(self.run_id, datasets=inputs)

    def log_metrics(self, values: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step or 0) for k, v in values.items() if k != "epoch"]
        for i in range(0, len(metrics), 500):  # MLflow's batch limit is 1000 entries
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 500])

    def log_epoch(self, row: dict) -> None:
        self.log_metrics(row, step=int(row["epoch"]))

    def log_result(self, result: FitResult, image_shape: tuple | None = None,
                   class_names: list[str] | None = None) -> None:
        """Final metrics, confusion matrix (PNG + JSON), the checkpoint as an MLflow model, provenance."""
        self.log_metrics(final_metrics(result))
        self.set_tags({f"{TAG}.stop_reason": result.stop_reason, f"{TAG}.device": result.device,
                       f"{TAG}.img_size": result.img_size})
        if result.weights is not None:
            self.set_tags({f"{TAG}.weights": result.weights.summary()[:5000]})
        self.client.log_dict(self.run_id, result.history, "history.json")
        self.log_confusion(result.test["confusion_matrix"], f"test, best epoch {result.best_epoch}",
                           {"best_epoch": result.best_epoch}, class_names)
        if result.checkpoint is not None:
            model_id = self.log_model(result.checkpoint.parent, image_shape, len(result.test["confusion_matrix"]))
            self.set_tags({f"{TAG}.checkpoint": "kept", f"{TAG}.model_id": model_id})

    def log_model(self, checkpoint_dir: Path, image_shape: tuple | None, num_classes: int) -> str:
        """The checkpoint as an MLflow 3 logged model of this run: a pyfunc written as code
        (``pyfunc_model.py``) over the safetensors file, with its signature (uint8 N x H x W x 3 in,
        N x K probabilities out). The weights live only there. Returns the model id."""
        import mlflow
        import numpy as np
        import timm
        import torch
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import ModelSignature
        from mlflow.types.schema import Schema, TensorSpec

        h, w, c = image_shape or (-1, -1, 3)
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, h, w, c))]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]))
        here = Path(__file__).resolve().parent
        requirements = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                        f"timm=={timm.__version__}", "safetensors", "numpy"]  # given: no slow inference pass
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        with tempfile.TemporaryDirectory(prefix="cvstudy-model-") as tmp:
            staged = shutil.copytree(checkpoint_dir, Path(tmp) / "checkpoint")  # -> artifacts/checkpoint/ in the model
            with warnings.catch_warnings():  # MLflow's advice to give an input example: the signature is given
                warnings.filterwarnings("ignore", message=r".*input example was not provided")
                mlflow.pyfunc.save_model(Path(tmp) / "model", python_model=str(here / "pyfunc_model.py"),
                                         artifacts={"checkpoint": str(staged)}, signature=signature,
                                         code_paths=[str(here.parent / "trainers")], pip_requirements=requirements)
            model = self.client.create_logged_model(experiment_id, name="model", source_run_id=self.run_id,
                                                    model_type="cvstudy image classifier")
            self.client.log_model_artifacts(model.model_id, str(Path(tmp) / "model"))
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step=0)])
        return model.model_id

    def log_confusion(self, matrix, title: str, extra: dict, class_names: list[str] | None = None) -> None:
        """The test confusion matrix as confusion_matrix.json (counts) and .png (row-normalised)."""
        import matplotlib.pyplot as plt

        cm = {"labels": class_names or [str(i) for i in range(len(matrix))], "matrix": matrix, "rows": "true class",
              "columns": "predicted class", "split": "test", **extra}
        self.client.log_dict(self.run_id, cm, "confusion_matrix.json")
        fig = confusion_figure(matrix, cm["labels"], title=title)
        self.client.log_figure(self.run_id, fig, "confusion_matrix.png")
        plt.close(fig)

    def end(self, outcome: str, tags: dict | None = None) -> None:
        """End the run once, as ``outcome`` (a key of ``trials.OUTCOMES``), with extra tags."""
        from .trials import end_run

        if not self.finished:
            end_run(self.client, self.run_id, outcome, tags)
            self.finished = True


def confusion_figure(matrix, labels, title: str = ""):
    """Row-normalised confusion matrix with counts, as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k), dpi=110)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if m[i, j]:
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), labels, fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}\n(colour: row-normalised; numbers: counts)", fontsize=8)
    fig.tight_layout()
    return fig


def fit_and_log(run: TrackedRun, config: TrainConfig, data, on_epoch=None, checkpoint: bool = True,
                resume=None, state=None) -> FitResult:
    """The one way cvstudy trains: ``fit`` with every epoch, the result and the checkpoint logged to
    ``run``. ``on_epoch(row) -> bool`` may ask to stop (then the test split is evaluated on the selected
    checkpoint, as at the end), or raise to abandon the run (the sweep's pruning raises
    ``optuna.TrialPruned``: no test evaluation, no checkpoint; the epochs so far are logged).
    ``checkpoint=False`` logs no model (confirmation runs: their statistics are the point).
    ``state`` (a ``states.StateKeeper``) keeps the run's resume state in its artifacts, written again on
    Ctrl-C / SIGTERM and deleted when the run finishes; ``resume`` continues from one in the same run,
    its curves at the following steps."""
    from trainers.loop import fit

    from .states import delete_state

    logged: set[int] = set()
    if resume is None:
        run.log_inputs(config, data)
    else:  # epochs recorded after the saved state are recomputed, bit for bit: record each step once
        logged = {m.step for m in run.client.get_metric_history(run.run_id, "train_loss")}

    def hook(row: dict) -> bool:
        if int(row["epoch"]) not in logged:
            run.log_epoch(row)
        return bool(on_epoch(row)) if on_epoch is not None else False

    with tempfile.TemporaryDirectory(prefix="cvstudy-ckpt-") as checkpoint_dir:
        try:
            result = fit(config, data, hook, checkpoint_dir=checkpoint_dir if checkpoint else None, resume=resume,
                         on_state=state)
        except KeyboardInterrupt:
            if state is not None:
                state.flush()  # the newest epoch, if it was only held in memory
            raise
        run.log_result(result, data.train_x.shape[1:])
    if state is not None:
        delete_state(run.client, run.run_id)
    return result


MODEL_CHECKPOINT = "artifacts/checkpoint/model.safetensors"  # inside a logged model's artifacts


def checkpoint_path(client, run) -> Path:
    """Download a run's checkpoint: from its logged model (``cvstudy.model_id``), else, for runs logged
    before checkpoints were MLflow models, from the run's ``checkpoint/`` artifacts."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    model_id = run.data.tags.get(f"{TAG}.model_id")
    if model_id:
        model = client.get_logged_model(model_id)
        repo = get_artifact_repository(model.artifact_location, tracking_uri=client.tracking_uri)
        return Path(repo.download_artifacts(MODEL_CHECKPOINT))
    return Path(client.download_artifacts(run.info.run_id, "checkpoint/model.safetensors"))


def data_tags(data) -> dict[str, str]:
    return {f"{TAG}.data_digest.{split}": digest for split, digest in data.digests.items()}


def weights_tags(config: TrainConfig) -> dict[str, str]:
    """Where the run's initial weights come from: ``scratch``, a file path, or ``hub <repo>@<commit>``
    (cache only: the command checked, and if needed downloaded, the weights before any run existed)."""
    from trainers.models import resolve_weights, weights_origin

    path = resolve_weights(config.model)
    return {f"{TAG}.weights_origin": weights_origin(path) if path is not None else "scratch"}


def final_metrics(result: FitResult) -> dict[str, float]:
    """What a run records at its end: test metrics, the selected epoch's validation metrics, epochs."""
    return {**flat(result.test, "test"),
            **{f"best_{k}": v for k, v in flat(result.val, "val", per_class=("recall",)).items()},
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "num_params": result.num_params}


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    import numpy as np

    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def run_tags(config: TrainConfig, data_source: str, extra: dict | None = None) -> dict[str, str]:
    tags = {**provenance_tags(), f"{TAG}.model": config.model.model, f"{TAG}.data": data_source}
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags

