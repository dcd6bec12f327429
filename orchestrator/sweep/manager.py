"""``cvstudy sweep``: the study manager. Checks the input, creates or resumes the study and its MLflow
parent run, starts one worker per device (``worker``, ``supervise``) and reports the outcome.

Faults, and what happens (the trial lifecycle is ``trials``):
- a trial raises or its loss goes NaN/inf: Optuna FAIL, MLflow FAILED with the error tag; the sweep goes on.
- Ctrl-C / SIGTERM: the running trial is FAIL and re-queued, its run KILLED; exit 130; rerun resumes.
- a worker is SIGKILLed: its RUNNING trial is found on the next start on that host (its pid is gone) or
  by any live worker once its heartbeat stops; it is failed, its run KILLED, its params re-queued.
- the target (``--trials``) counts complete, pruned and failed trials, not ones superseded by a retry;
  trials are created under a storage-wide lock so concurrent workers never overshoot it.
"""

from __future__ import annotations

import contextlib
import logging
import time
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from mlflow.entities import Metric, RunTag
from optuna.trial import TrialState
from rich.console import Console

from cvstudy.trainers import models
from cvstudy.trainers.config import SELECT_METRICS
from cvstudy.trainers.data import Dataset, demo_note, load_dataset

from ..boundaries import check_name, redact
from ..errors import StoreError, SweepError
from ..tracking.client import Tracker
from ..tracking.models import BEST_ALIAS
from ..tracking.results import provenance_tags
from ..tracking.schema import Role, StudyAttr, Tag, TrialAttr, logged_name
from ..tracking.uris import (
    TRIALS_VIEW,
    browse_hint,
    is_http,
    resolve_tracking_uri,
    trials_view,
    ui_link,
    without_userinfo,
)
from . import pruning, warmstart
from .display import SweepDisplay
from .storage import AskLock, default_storage, open_storage
from .study import StudySpec
from .supervise import cpu_threads, resolve_devices, run_processes
from .trials import (
    Counts,
    best_trial,
    count_trials,
    current_trials,
    fail_lost_trials,
    leaderboard_markdown,
    register_best_trial,
    stale_callback,
)
from .worker import WorkerJob, run_worker

log = logging.getLogger("cvstudy")
NOTE_LIMIT = 5000  # characters: MLflow's limit on a tag's value in every store (the description is a tag)

__all__ = ["SweepError", "SweepOutcome", "SweepPlan", "sweep"]


@dataclass(frozen=True)
class SweepPlan:
    """A checked, created study that workers elsewhere (a SLURM job array) will run to its target."""

    study_name: str
    storage_url: str
    tracking_uri: str
    target: int
    parent_run_id: str
    counts: Counts


@dataclass
class SweepOutcome:
    study_name: str
    counts: Counts
    best: Any
    added: int
    parent_run_id: str
    interrupted: bool = False
    failed_errors: tuple[str, ...] = ()
    """The errors of the trials this sweep ran that failed, in trial order (a failure that was re-queued
    and retried is not among them)."""

    @property
    def all_failed(self) -> bool:
        """This sweep ran trials and every one of them failed."""
        return self.added > 0 and len(self.failed_errors) == self.added


@dataclass(frozen=True, kw_only=True)
class SweepSettings:
    """What a sweep is asked for beyond its study file: the command line's flags, checked there. The
    study file's own keys (keep_checkpoints, repeats, ...) reach the sweep through its ``StudySpec``."""

    study_name: str | None = None
    """The study's name (also the MLflow experiment); unset: the study file's name."""
    trials: int | None = None
    """Target number of counted trials; unset: the study file's (a grid sampler's: the grid's size)."""
    timeout: float | None = None
    """Seconds after which no new trial starts; unset: none."""
    storage_url: str | None = None
    """Optuna storage URL; unset: sqlite:///optuna.db beside the MLflow store."""
    devices: str | None = None
    """Comma-separated devices, one worker each; unset: every free device (``supervise.resolve_devices``)."""
    workers: int | None = None
    """Worker count when ``devices`` is unset."""
    tracking_uri: str | None = None
    """MLflow tracking URI; unset: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Training settings fixed for every trial (--epochs, --data, --seed, --set KEY=VALUE)."""
    offline: bool = False
    """Never download pretrained weights."""
    warm_start: str | None = None
    """STUDY[:K]: enqueue the best K complete trials of another study first."""

    @property
    def seed(self) -> int:
        """Seeds the sampler (worker i: seed + i): the training seed every trial is fixed to, else 0."""
        return int(self.overrides.get("seed", 0))


def sweep(
    spec: StudySpec,
    settings: SweepSettings | None = None,
    console: Console | None = None,
    launch: Callable[[SweepPlan], None] | None = None,
) -> SweepOutcome:
    """Run (or resume) a study until it holds ``trials`` counted trials; or, with ``launch``, check and
    create it here and hand it to workers elsewhere (``slurm``)."""
    settings = settings or SweepSettings()
    console = console or Console()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cli = dict(settings.overrides)
    named = settings.study_name
    study_name = check_name(named, "--study") if named else check_name(spec.name, f"{spec.path}: name")
    target = settings.trials or (spec.grid_size() if spec.sampler == "grid" else spec.trials)
    tracking_uri = resolve_tracking_uri(settings.tracking_uri)
    storage_url = settings.storage_url or default_storage(tracking_uri)
    device_list = resolve_devices(settings.devices, settings.workers, spec.trials_per_device)
    if launch is None:
        check_objectives_on(spec, device_list)
    check_inputs(spec, cli, settings.offline, console)  # before any trial or run exists

    reach_tracking_server(tracking_uri)  # an unreachable server stops here, before the study exists
    storage = open_storage(storage_url, on_stale=stale_callback(tracking_uri))  # a bad storage: before mlflow.db
    warm_start = settings.warm_start
    warm = warmstart.plan(spec, storage, warm_start, study_name, target) if warm_start else None  # checked first too
    tracker = Tracker(tracking_uri)
    study, parent, before = _open_study(spec, study_name, storage, storage_url, tracker, warm, console)
    with _parent_ended_on_error(tracker, parent):  # never left RUNNING by a failure
        if before.counted >= target:
            return _target_reached(spec, study_name, study, storage_url, tracker, parent, before, target, console)
        if launch is not None:
            launch(SweepPlan(study_name, storage_url, tracker.uri, target, parent, before))
            return SweepOutcome(study_name, before, best_trial(study), 0, parent)
        device_list = device_list[: target - before.counted]  # no more workers than trials left
        console.print(
            f"study {study_name!r} ({spec.path}), storage {redact(storage_url)}, MLflow {tracker.shown}, "
            f"devices {', '.join(device_list)}: {before.done} of {target} trials done"
        )
        failed_before = {t.number for t in current_trials(study) if t.state == TrialState.FAIL}
        deadline = time.time() + settings.timeout if settings.timeout else None
        jobs = _worker_jobs(
            spec, study_name, storage_url, tracking_uri, parent, device_list, target, deadline, cli, settings.seed
        )
        display = SweepDisplay(console, study_name, target, spec.metrics, len(jobs))
        display.set_counts(before, best_trial(study))
        interrupted = False
        try:
            with display:
                _run_workers(jobs, study, storage, tracker, display, console)
        except KeyboardInterrupt:
            interrupted = True
        after = count_trials(study)
        failed = [t for t in current_trials(study) if t.state == TrialState.FAIL and t.number not in failed_before]
        outcome = SweepOutcome(
            study_name,
            after,
            best_trial(study),
            after.done - before.done,
            parent,
            interrupted,
            tuple(t.user_attrs.get(TrialAttr.ERROR, "no error recorded") for t in failed),
        )
        if not interrupted:
            _finish(spec, study, outcome, storage_url, tracker, display, console)
            return outcome
        try:  # best effort: the store may be what went away, and the interrupt is what this ends in
            _finish(spec, study, outcome, storage_url, tracker, display, console)
        except Exception as err:  # noqa: BLE001 -- the next sweep's start ends what is left
            log.warning("the study's run could not be ended: %s", str(err).splitlines()[0][:200])
        raise KeyboardInterrupt


def _worker_jobs(
    spec: StudySpec,
    study_name: str,
    storage_url: str,
    tracking_uri: str,
    parent: str | None,
    device_list: list[str],
    target: int,
    deadline: float | None,
    cli: dict,
    seed: int,
) -> list[WorkerJob]:
    """One worker job per device; ``deadline`` is the sweep's end in seconds since the epoch, or None."""
    threads = cpu_threads(device_list)
    return [
        WorkerJob(
            spec=spec,
            study_name=study_name,
            storage_url=storage_url,
            tracking_uri=tracking_uri,
            parent_run_id=parent,
            device=device,
            target=target,
            deadline=deadline,
            cli=cli,
            worker_index=i,
            seed=seed,
            threads=threads,
        )
        for i, device in enumerate(device_list)
    ]


def _open_study(spec: StudySpec, study_name: str, storage, storage_url: str, tracker: Tracker, warm, console):
    """Under the ask lock: the study and its parent run (created or loaded), its warm start enqueued, its
    lost trials failed and re-queued; returns (study, parent run id, counts before this sweep)."""
    with AskLock(storage_url, study_name).hold():
        study, parent = ensure_study(spec, study_name, storage, storage_url, tracker)
        with _parent_ended_on_error(tracker, parent):
            if warm is not None:
                added = warmstart.enqueue(study, warm)
                if added:
                    console.print(f"warm start: enqueued the {added} best trial(s) of study {warm.source!r} first")
            fail_lost_trials(study, tracker.client)
            if len(spec.objectives) > 1:
                pruning.end_orphans(study, pruning.open_companion(study, storage))
            return study, parent, count_trials(study)


@contextlib.contextmanager
def _parent_ended_on_error(tracker: Tracker, parent: str):
    """A sweep that fails once its parent run is RUNNING again ends the run FAILED (a bug), or KILLED when
    interrupted or stopped by a store or a full disk (a rerun resumes), instead of leaving it RUNNING; a
    sweep that ends by itself ends it in ``_finish``."""
    try:
        yield
    except BaseException as err:
        try:
            if tracker.client.get_run(parent).info.status == "RUNNING":
                # interrupted, or stopped by its environment (a full disk, a store): KILLED, as a rerun resumes
                stopped = isinstance(err, (KeyboardInterrupt, StoreError))
                tracker.client.set_terminated(parent, "KILLED" if stopped else "FAILED")
        except Exception as store_err:  # noqa: BLE001 -- the store itself failed: the next start ends it
            log.warning("could not end the study's run %s: %s", parent, str(store_err).splitlines()[0][:200])
        raise


def reach_tracking_server(tracking_uri: str, timeout: float = 10) -> None:
    """An MLflow tracking server must answer its health check; SweepError in one line otherwise."""
    if not is_http(tracking_uri):
        return
    url = f"{without_userinfo(tracking_uri.rstrip('/'))}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # nosec B310 -- an http(s) URL, checked above
            return
    except OSError as err:
        raise StoreError(
            f"--tracking-uri {redact(tracking_uri)}: the MLflow tracking server does not answer "
            f"({getattr(err, 'reason', err)})"
        ) from None


def check_objectives_on(spec: StudySpec, device_list: list[str]) -> None:
    """An objective must mean the same for every trial: on the CPU, ``peak_memory_mb`` is the worker
    process's peak resident set, earlier trials included, so it is refused there."""
    cpu = [d for d in device_list if not d.startswith("cuda")]
    if "peak_memory_mb" in spec.metrics and cpu:
        raise SweepError(
            f"{spec.path}: objectives.peak_memory_mb is the trial's own peak only on CUDA; on {cpu[0]} it is "
            "the worker process's peak, earlier trials included: optimise it on GPUs (--devices cuda:0,...)"
        )


def check_inputs(spec: StudySpec, cli: dict, offline: bool, console: Console) -> Dataset:
    """Everything that can be wrong with the input: every configuration the space can reach, the data,
    and the weights of every model the space names (downloaded here unless offline)."""
    candidates = spec.candidate_configs(cli)
    data = load_dataset(*candidates[0].split)
    if note := demo_note(data):
        console.print(f"[yellow]{note}[/]")
    checked = set()
    for config in candidates:
        key = (config.network.model, config.network.pretrained, config.network.weights, config.network.cifar_stem)
        if key not in checked:
            checked.add(key)
            models.check(config.network, data.num_classes, offline=offline)  # downloads missing weights
    return data


def ensure_study(spec: StudySpec, study_name: str, storage, storage_url: str, tracker: Tracker):
    """Create or load the study, check it matches the study file, and find or create its MLflow parent run."""
    study = optuna.create_study(study_name=study_name, storage=storage, directions=spec.directions, load_if_exists=True)
    directions = [d.name.lower() for d in study.directions]
    if directions != spec.directions:
        raise SweepError(
            f"study {study_name!r} in {redact(storage_url)} was created to {' and '.join(directions)}, "
            f"but {spec.path} asks to {' and '.join(spec.directions)}; use another --study name"
        )
    for key, value in ((StudyAttr.REPEATS, spec.repeats), (StudyAttr.OBJECTIVE_STAT, spec.objective_stat)):
        if study.user_attrs.get(key, value) != value:
            raise SweepError(
                f"study {study_name!r} was run with {key} {study.user_attrs[key]}, but {spec.path} (or the "
                f"command line) asks for {value}: trials would not compare; use another --study name"
            )
        study.set_user_attr(key, value)
    recorded = study.user_attrs.get(StudyAttr.OBJECTIVES)  # None: a study this sweep creates
    if recorded is not None and recorded != list(spec.metrics):
        raise SweepError(
            f"study {study_name!r} optimises {', '.join(recorded)}, but {spec.path} asks for "
            f"{', '.join(spec.metrics)}; use another --study name"
        )
    if spec.baseline and not study.get_trials(deepcopy=False):
        study.enqueue_trial(
            {k: v for k, v in spec.baseline.items() if k in {d.name for d in spec.space}},
            user_attrs={TrialAttr.BASELINE: True},
        )
    study.set_user_attr(StudyAttr.OBJECTIVE, spec.objective)
    study.set_user_attr(StudyAttr.OBJECTIVES, list(spec.metrics))
    study.set_user_attr(StudyAttr.STUDY_FILE, str(spec.path))
    if spec.reproduces:
        study.set_user_attr(StudyAttr.REPRODUCES, spec.reproduces)
    with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(spec.metrics))  # optuna-dashboard and Optuna's plots name the objectives
    return study, _parent_run(spec, study_name, study, storage_url, tracker)


def _parent_run(spec: StudySpec, study_name: str, study: optuna.Study, storage_url: str, tracker: Tracker) -> str:
    """The study's MLflow parent run: RUNNING again if it exists in this tracking store, else created."""
    parent = study.user_attrs.get(StudyAttr.PARENT_RUN_ID)
    if parent:
        try:
            tracker.client.get_run(parent)
            tracker.client.update_run(parent, status="RUNNING")
            return parent
        except Exception:  # noqa: BLE001 -- the parent lives in another tracking store: make a new one  # nosec B110
            pass
    tags = {
        **provenance_tags(),
        Tag.STUDY: study_name,
        Tag.ROLE: Role.STUDY,
        Tag.STORAGE: redact(storage_url),
        Tag.NOTE: spec.description or f"Optuna study {study_name}",
    }
    parent = tracker.create_run(study_name, f"study-{study_name}", tags)
    study.set_user_attr(StudyAttr.PARENT_RUN_ID, parent)
    # the experiment's description on MLflow's experiment page: the study file's, with where the study is
    described = f"{spec.description or f'Optuna study {study_name}'} (study file {spec.path.name}; cvstudy sweep)"
    tracker.client.set_experiment_tag(tracker.experiment_id(study_name), Tag.NOTE, described)
    tracker.client.log_dict(
        parent,
        {
            "objective": spec.objective,
            "direction": spec.direction,
            "objectives": dict(spec.objectives),
            "fixed": spec.fixed,
            "space": [d.__dict__ for d in spec.space],
            "pruner": spec.pruner,
            "sampler": spec.sampler,
            "repeats": spec.repeats,
            "objective_stat": spec.objective_stat,
        },
        "study.json",
    )
    tracker.client.log_artifact(parent, str(spec.path))
    return parent


def _run_workers(
    jobs: list[WorkerJob],
    study: optuna.Study,
    storage,
    tracker: Tracker,
    display: SweepDisplay,
    console: Console,
) -> None:
    """One worker in this process, on the sweep's own ``storage`` (one connection pool a process: 32
    processes with two each exhausted PostgreSQL's default 100 connections), or one spawned process per
    device, each opening its own."""
    if len(jobs) > 1:
        run_processes(jobs, display, lambda: (count_trials(study), best_trial(study)), console)
        return

    def events(event: dict) -> None:
        if event["kind"] == "end":
            display.set_counts(count_trials(study), best_trial(study))
        display.event(event)

    run_worker(jobs[0], events, storage=storage, tracker=tracker)


def _target_reached(
    spec: StudySpec,
    study_name: str,
    study: optuna.Study,
    storage_url: str,
    tracker: Tracker,
    parent: str,
    counts: Counts,
    target: int,
    console: Console,
) -> SweepOutcome:
    console.print(
        f"study {study_name!r}: {counts.done} trials ({counts.complete} complete, {counts.pruned} pruned, "
        f"{counts.failed} failed) of target {target}: target reached, nothing to add "
        f"(pass --trials N to raise the target)"
    )
    with AskLock(storage_url, study_name).hold():
        _describe(tracker, parent, study, spec)
        _register(tracker, study_name, study, spec, console)
        tracker.client.set_terminated(parent, "FINISHED")
    _browse(tracker, study_name, spec, console)
    return SweepOutcome(study_name, counts, best_trial(study), 0, parent)


def _finish(
    spec: StudySpec,
    study: optuna.Study,
    outcome: SweepOutcome,
    storage_url: str,
    tracker: Tracker,
    display: SweepDisplay,
    console: Console,
) -> None:
    """The parent run's summary and ending, the registry, and the link to the runs. The best complete
    trial is registered however the sweep ends (interrupted too: `predict --model models:/<study>@best`
    and `mlflow models serve` work after Ctrl-C; registering is a few metadata writes). Sweeps on several
    machines finish together: one at a time writes the parent run's summary and registers the best
    model (two inserts of one tag collide; two registrations would add two versions)."""
    best, parent = outcome.best, outcome.parent_run_id
    with AskLock(storage_url, outcome.study_name).hold():
        if best is not None:
            tracker.client.log_batch(
                parent,
                metrics=[
                    Metric(logged_name(f"best_{metric}"), value, int(time.time() * 1000), 0)
                    for metric, value in zip(spec.metrics, best.values)
                ],
                tags=[
                    RunTag(Tag.BEST_TRIAL, str(best.number)),
                    RunTag(Tag.BEST_RUN_ID, best.user_attrs.get(TrialAttr.MLFLOW_RUN_ID, "")),
                ],
            )
        _describe(tracker, parent, study, spec)
        tracker.client.set_terminated(parent, "KILLED" if outcome.interrupted else "FINISHED")
        display.summary(outcome)
        _register(tracker, outcome.study_name, study, spec, console)
    _browse(tracker, outcome.study_name, spec, console)


def _describe(tracker: Tracker, parent: str, study: optuna.Study, spec: StudySpec) -> None:
    """The parent run's description (MLflow's run page renders it as Markdown): the study file's words,
    then the leaderboard of its trials so far."""
    words = spec.description or f"Optuna study {study.study_name}"
    text = f"{words}\n\n{leaderboard_markdown(study, list(spec.metrics))}"
    tracker.client.set_tag(parent, Tag.NOTE, text[:NOTE_LIMIT])


def _register(tracker: Tracker, study_name: str, study: optuna.Study, spec: StudySpec, console: Console) -> None:
    """The study's best model in the Model Registry (``models:/<study>@best``), said in one line."""
    try:
        version = register_best_trial(tracker.client, study_name, study, spec.metrics)
    except Exception as err:  # noqa: BLE001 -- a registry that refuses must not fail a finished sweep
        console.print(f"[yellow]model registry: {str(err).splitlines()[0][:200]}[/]", highlight=False)
        return
    if version is not None:
        console.print(
            f"best model: models:/{study_name}@{BEST_ALIAS} = models:/{study_name}/{version.version} "
            f"(trial {version.tags.get(Tag.TRIAL)}); load it with mlflow.pyfunc.load_model, serve it "
            f"with `mlflow models serve -m models:/{study_name}@{BEST_ALIAS} --env-manager local`",
            highlight=False,
        )


def _browse(tracker: Tracker, study_name: str, spec: StudySpec, console: Console) -> None:
    """The command and link that show the study's trial runs in the MLflow UI, best first, as charts,
    the objectives' first (a view saved in the experiment: rewritten on every sweep, so it follows the
    study file)."""
    experiment_id = tracker.experiment_id(study_name)
    key, view = trials_view(Role.TRIAL, list(spec.objectives), SELECT_METRICS)
    tracker.client.set_experiment_tag(experiment_id, key, view)
    link = ui_link(tracker.uri, experiment_id, view=TRIALS_VIEW)
    console.print(browse_hint(tracker.uri, link), highlight=False, soft_wrap=True)
