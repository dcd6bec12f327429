"""MLflow bookkeeping: experiments, runs that always end terminal, and what each run records.

``Tracker`` owns one ``MlflowClient``; ``TrackedRun`` is one run's writer (config, inputs, epochs,
result, checkpoint, ending). Where runs go by default is ``uris.resolve_tracking_uri``.
"""

from __future__ import annotations

import fcntl
import logging
import subprocess  # git rev-parse, an argument list, no shell  # nosec B404
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cvstudy.trainers.config import TrainConfig

from .. import sqlite_files
from ..boundaries import redact
from ..errors import disk_full
from ..processes import stop_waiting_on_servers
from .figures import confusion_figure, plt
from .schema import (
    MODEL_TRAINING,
    OUTCOMES,
    Role,
    Tag,
    logged_name,
    run_filter,
    run_metrics,
)
from .uris import resolve_tracking_uri, sqlite_path

# MLflow's error codes for a store that is down or busy (SQLAlchemy's OperationalError, e.g. "database is
# locked", becomes TEMPORARILY_UNAVAILABLE; a tracking server answering 503 likewise).
UNAVAILABLE_CODES = ("TEMPORARILY_UNAVAILABLE", "SERVICE_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")

log = logging.getLogger("cvstudy")


def git_sha() -> str:
    """The commit of the cvstudy checkout that runs (provenance), or 'unknown' outside git."""
    try:
        out = subprocess.run(  # a fixed command: whichever git the user's PATH names  # nosec B603 B607
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def end_run(client, run_id: str | None, outcome: str, tags: dict | None = None, only_if_running: bool = False) -> None:
    """Record ``outcome`` on an MLflow run: its tag, its status (from ``OUTCOMES``) and any extra tags."""
    if not run_id:
        return

    if only_if_running and client.get_run(run_id).info.status != "RUNNING":
        return
    result = OUTCOMES[outcome]
    all_tags = {Tag.TRIAL_STATE: result.trial_state, **(tags or {})}
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
    client.set_terminated(run_id, result.run_status)


def server_gone(err: BaseException) -> bool:
    """Whether ``err`` says a tracking server did not answer (refused, timed out, after MLflow's retries)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def store_unavailable(err: BaseException) -> bool:
    """Whether ``err`` says the tracking store failed (a SQLite database locked past its busy timeout, a
    database or tracking server that does not answer), not the run: such a trial is retried."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, MlflowException) and seen.error_code in UNAVAILABLE_CODES:
            return True
        if isinstance(seen, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def trial_run_id(client, study_name: str, number: int) -> str | None:
    """The MLflow run of trial ``number`` when the trial does not name it (its worker died between
    creating the run and recording its id): found by its study and trial-number tags."""
    exp = client.get_experiment_by_name(study_name)
    if exp is None:
        return None
    runs = study_runs(client, exp.experiment_id, study_name, run_filter(trial_number=str(number), role=Role.TRIAL))
    return next(iter(runs), None)


def logged_epochs(run: Run) -> bool:
    """Whether ``run`` logged at least one epoch (every epoch logs ``train_loss``)."""
    return "train_loss" in run_metrics(run)


def metric_history(client, run_id: str, metric: str) -> list:
    """Every logged value of ``metric`` (cvstudy's name) in a run, under its MLflow name or, for a run
    logged before metric sections existed, its flat one."""
    return client.get_metric_history(run_id, logged_name(metric)) or client.get_metric_history(run_id, metric)


def child_runs(client, run_id: str) -> list[str]:
    """The runs nested under ``run_id`` (a trial's seed runs)."""
    experiment_id = client.get_run(run_id).info.experiment_id
    return [r.info.run_id for r in client.search_runs([experiment_id], run_filter(parent_run_id=run_id))]


def supersede(client, run_ids: list[str], by_run_id: str) -> None:
    """Take runs of an interrupted trial out of the trial views: role ``superseded``, naming the run that
    replaced them. Nothing is deleted; their status stays as it ended (KILLED), and one that never
    ended (its store failed as it ended) ends INTERRUPTED now."""
    for run_id in run_ids:
        end_run(client, run_id, "INTERRUPTED", only_if_running=True)
        client.log_batch(run_id, tags=[RunTag(Tag.ROLE, Role.SUPERSEDED), RunTag(Tag.SUPERSEDED_BY, by_run_id)])


def study_runs(client, experiment_id: str, study_name: str, where: str = "") -> dict[str, Run]:
    """The study's MLflow runs (optionally filtered further), by run id: one paged search, no per-run fetch."""
    query = run_filter(study=study_name) + (f" and {where}" if where else "")
    runs, token = {}, None
    while True:
        page = client.search_runs([experiment_id], query, max_results=5000, page_token=token)
        runs.update({r.info.run_id: r for r in page})
        token = page.token
        if not token:
            return runs


class Tracker:
    """A thin owner of one MlflowClient: experiments by name, runs by context manager."""

    def __init__(self, tracking_uri: str | None = None):

        self.uri = resolve_tracking_uri(tracking_uri)
        database = sqlite_path(self.uri)
        if database is None:
            self.client = MlflowClient(tracking_uri=self.uri)
            return
        sqlite_files.used(database)
        # The first client on a new SQLite file creates MLflow's tables; two processes doing that at
        # once corrupt the migration. Serialise store creation across processes with a file lock.
        lock_path = Path(f"{database}.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            self.client = MlflowClient(tracking_uri=self.uri)
            self.client.search_experiments(max_results=1)  # forces the store (and its tables) into being

    @property
    def shown(self) -> str:
        """The tracking URI as it may be printed: without secrets."""
        return redact(self.uri)

    def experiment_id(self, name: str) -> str:
        """Get or create (race-safe: several workers may ask at once)."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            if found.tags.get(Tag.EXPERIMENT_KIND) is None:
                self.client.set_experiment_tag(found.experiment_id, Tag.EXPERIMENT_KIND, MODEL_TRAINING)
            return found.experiment_id
        try:
            return self.client.create_experiment(name, tags={Tag.EXPERIMENT_KIND: MODEL_TRAINING})
        except MlflowException:  # created by another worker meanwhile
            again = self.client.get_experiment_by_name(name)
            if again is None:
                raise
            return again.experiment_id

    def create_run(
        self, experiment: str, run_name: str, tags: dict[str, Any] | None = None, parent_run_id: str | None = None
    ) -> str:
        """A new RUNNING run (nested under ``parent_run_id`` if given); returns its id."""
        tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            tags[Tag.PARENT_RUN_ID] = parent_run_id
        return self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=tags).info.run_id

    @contextmanager
    def run(
        self,
        experiment: str,
        run_name: str,
        tags: dict[str, Any] | None = None,
        parent_run_id: str | None = None,
        ends: dict[type, str] | None = None,
    ) -> Iterator[TrackedRun]:
        """A run that always ends terminal (statuses from ``schema.OUTCOMES``): COMPLETE on success
        (unless ended otherwise), INTERRUPTED on Ctrl-C / SIGTERM, FAIL with the error on any exception,
        except exception types named in ``ends`` (e.g. Optuna's TrialPruned -> PRUNED)."""
        run_id = self.create_run(experiment, run_name, tags, parent_run_id)
        with self.ending(TrackedRun(self.client, run_id), ends) as run:
            yield run

    @contextmanager
    def attach(
        self,
        run_id: str,
        tags: dict[str, Any] | None = None,
        run_name: str | None = None,
        ends: dict[type, str] | None = None,
        clear: tuple[str, ...] = (),
    ) -> Iterator[TrackedRun]:
        """Continue an existing run (a trial resumed from its saved state): RUNNING again, with updated
        tags and the ``clear`` tags of its last ending removed, ending like ``run``."""
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
    def ending(self, run: TrackedRun, ends: dict[type, str] | None = None) -> Iterator[TrackedRun]:
        try:
            yield run
        except KeyboardInterrupt:
            run.end("INTERRUPTED", {Tag.ERROR: "interrupted"})
            raise
        except BaseException as err:
            full = disk_full(err)
            gone = isinstance(err, Exception) and server_gone(err)
            if gone:
                stop_waiting_on_servers()  # ending it is best effort now; the next start ends it otherwise
            if full is not None or gone:
                why = full or "the tracking server stopped answering"
                try:  # the environment stopped it, not its configuration: interrupted, resumable
                    run.end("INTERRUPTED", {Tag.ERROR: f"interrupted: {why}"[:5000]})
                except Exception as store_err:  # noqa: BLE001 -- a store on the full disk: the next start ends it
                    log.warning("run %s could not be ended: %s", run.run_id, str(store_err).splitlines()[0][:200])
                raise
            outcome = next((o for kind, o in (ends or {}).items() if isinstance(err, kind)), "FAIL")
            run.end(outcome, {Tag.ERROR: f"{type(err).__name__}: {err}"[:5000]} if outcome == "FAIL" else {})
            raise
        run.end("COMPLETE")


class TrackedRun:
    """One MLflow run's writer."""

    def __init__(self, client, run_id: str):
        self.client = client
        self.run_id = run_id
        self.finished = False

    def set_tags(self, tags: dict) -> None:

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])  # one transaction

    def log_config(self, config: TrainConfig) -> None:
        """The resolved config as params and as config.json."""
        params = [Param(k, str(v)) for k, v in config.to_flat().items()]
        self.client.log_batch(self.run_id, params=params)
        self.client.log_dict(self.run_id, config.to_flat(), "config.json")

    def log_metrics(self, values: dict[str, float], step: int | None = None) -> None:
        """``values`` by cvstudy's names, logged under their MLflow names (``schema.logged_name``)."""
        now = int(time.time() * 1000)
        metrics = [Metric(logged_name(k), float(v), now, step or 0) for k, v in values.items() if k != "epoch"]
        for i in range(0, len(metrics), 500):  # MLflow's batch limit is 1000 entries
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 500])

    def log_epoch(self, row: dict) -> None:
        """An epoch's scalars as metrics at step ``epoch``; per-class values stay out of the metrics (one
        chart each in MLflow's view): ``log_result`` logs them as one table."""
        self.log_metrics({k: v for k, v in row.items() if not is_per_class(k)}, step=int(row["epoch"]))

    def log_confusion(self, matrix, title: str, extra: dict, class_names: list[str] | None = None) -> None:
        """The test confusion matrix as confusion_matrix.json (counts) and .png (row-normalised)."""
        cm = {
            "labels": class_names or [str(i) for i in range(len(matrix))],
            "matrix": matrix,
            "rows": "true class",
            "columns": "predicted class",
            "split": "test",
            **extra,
        }
        self.client.log_dict(self.run_id, cm, "confusion_matrix.json")
        fig = confusion_figure(matrix, cm["labels"], title=title)
        self.client.log_figure(self.run_id, fig, "confusion_matrix.png")
        plt.close(fig)

    def end(self, outcome: str, tags: dict | None = None) -> None:
        """End the run once, as ``outcome`` (a key of ``schema.OUTCOMES``), with extra tags."""
        if not self.finished:
            end_run(self.client, self.run_id, outcome, tags)
            self.finished = True


def is_per_class(metric: str) -> bool:
    """``val_recall_class_3``: one class's value, logged in ``per_class.json`` rather than as a metric."""
    return "_class_" in metric
