"""One sweep worker: on one device, create trials under the ask lock and train each through the shared
core, one MLflow run per trial, until the study reaches its target. Workers on one machine are
processes (``supervise``); workers on many machines are ``cvstudy sweep`` commands sharing a storage.

A trial's life (Optuna's ask-and-tell, ``Worker.run``):
1. Under the ask lock: fail lost trials, count, ``study.ask()``; the lock is released once the trial exists.
2. ``_trial``, with the trial's heartbeat beating:
   ``_plan``: sample, build the effective configuration, load its data, find a saved state to resume;
   ``_open_run``: a new MLflow run, or the interrupted trial's run continued (``_continuation``);
   ``_train``: one seed (with a resume state) or a configuration's seeds; pruning raises out of it;
   ``_record``: the objective over seeds and the test metrics, on the trial and its run.
3. ``study.tell``: COMPLETE with its values, PRUNED, or FAIL (an interrupted trial is re-queued first,
   then the interrupt goes on); then checkpoint retention, under the lock, when it completed.
"""

from __future__ import annotations

import gc
import logging
import os
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import optuna
import torch
from optuna.trial import TrialState

from cvstudy.trainers.config import COST_METRICS, TrainConfig
from cvstudy.trainers.data import Dataset, DatasetCache
from cvstudy.trainers.loop import FitResult
from cvstudy.trainers.metrics import SCALARS
from cvstudy.trainers.state import TrainState

from ..boundaries import redact
from ..errors import DamagedFile, StoreError, disk_full
from ..processes import HOST, raise_if_interrupted, resident_mib, stop_waiting_on_servers, task_identity
from ..stats import mean_std
from ..tracking.client import (
    TrackedRun,
    Tracker,
    child_runs,
    end_run,
    logged_epochs,
    server_gone,
    store_unavailable,
    supersede,
)
from ..tracking.fitting import fit_and_log, fit_seeds_and_log, seed_configs
from ..tracking.results import load_state, provenance_tags
from ..tracking.schema import Role, Tag, TrialAttr
from ..tracking.states import StateKeeper, delete_state
from .pruning import Judge, Pruning
from .storage import AskLock, Heartbeat, open_storage
from .study import StudySpec
from .trials import (
    count_trials,
    fail_lost_trials,
    first_value,
    requeue_with_state,
    retain_checkpoints,
    stale_callback,
)

log = logging.getLogger("cvstudy")
PRUNED_ENDS: dict[type, str] = {optuna.TrialPruned: "PRUNED"}  # how a pruned trial's MLflow run ends


@dataclass
class WorkerJob:
    """Everything a worker needs; plain data so it crosses a process boundary."""

    spec: StudySpec
    study_name: str
    storage_url: str
    tracking_uri: str
    parent_run_id: str | None
    device: str
    target: int
    deadline: float | None
    cli: dict = field(default_factory=dict)
    worker_index: int = 0
    seed: int = 0
    """The sweep's sampler seed; this worker's sampler takes seed + worker_index."""
    threads: int | None = None


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler for workers that ask and tell. Once the grid is covered, its ``after_trial``
    calls ``study.stop()``, which raises outside ``study.optimize`` after the trial is stored (Optuna
    documents this in GridSampler's note; optuna#5141). A worker stops on its own trial count, so the
    request to stop is dropped; any other error goes on."""

    def after_trial(self, study, trial, state, values) -> None:
        try:
            super().after_trial(study, trial, state, values)
        except RuntimeError as err:
            if "Study.stop" not in str(err):
                raise


@contextmanager
def heartbeats_by_hand():
    """Without Optuna's warnings that heartbeats are meant for ``study.optimize`` and that its stale check
    is experimental: workers ask and tell, and beat for each asked trial themselves (``storage.Heartbeat``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def make_sampler(spec: StudySpec, seed: int | None) -> optuna.samplers.BaseSampler:
    if spec.sampler == "grid":
        return AskTellGridSampler(spec.grid, seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed, multivariate=True, constant_liar=True, n_startup_trials=min(10, max(3, spec.trials // 3))
    )


def make_pruner(spec: StudySpec, epochs: int) -> optuna.pruners.BasePruner:
    """The study's pruner rule (in a multi-objective study, its pruning companion's: ``pruning``)."""
    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=spec.min_epochs)
    return optuna.pruners.HyperbandPruner(
        min_resource=spec.min_epochs, max_resource=max(epochs, spec.min_epochs + 1), reduction_factor=3
    )


def job_storage(job: WorkerJob):
    """The job's Optuna storage; trials it finds stale (RDB heartbeats) are recovered by ``stale_callback``."""
    return open_storage(job.storage_url, on_stale=stale_callback(job.tracking_uri))


def load_study(job: WorkerJob, storage) -> tuple[optuna.Study, Pruning]:
    """The job's study with its sampler, and its pruning (Optuna's pruner, or a multi-objective study's
    pruning companion judged by the same rule)."""
    epochs = job.spec.config_for({}, job.cli).optim.epochs
    seed = job.seed + job.worker_index
    pruner = make_pruner(job.spec, epochs)
    multi = len(job.spec.objectives) > 1  # Optuna's pruners refuse a multi-objective study's reports
    study = optuna.load_study(
        study_name=job.study_name,
        storage=storage,
        sampler=make_sampler(job.spec, seed),
        pruner=optuna.pruners.NopPruner() if multi else pruner,
    )
    return study, Pruning(study, storage, pruner)


@dataclass
class TrialPlan:
    """What one trial trains, decided before its run exists."""

    params: dict
    """The sampled values of the searched settings."""
    config: TrainConfig
    """The effective configuration: sampled values after overrides and flags."""
    data: Dataset
    tags: dict
    saved: TrainState | None
    """The interrupted trial's saved state this trial continues from, if any."""
    continued: str | None = None
    """The interrupted trial's MLflow run this trial trains in (from ``saved``, or from epoch 0)."""
    superseded: list[str] = field(default_factory=list)
    """Earlier runs of this trial's parameters that its run replaces (tagged once it exists)."""


def run_worker(job: WorkerJob, events: Callable[[dict], None], storage=None, tracker: Tracker | None = None) -> None:
    """Run trials on ``job.device`` until the study reaches its target or the deadline passes."""
    if job.threads:
        torch.set_num_threads(job.threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported once, by the display
    storage = storage or job_storage(job)
    study, pruning = load_study(job, storage)
    Worker(job, events, storage, study, tracker or Tracker(job.tracking_uri), pruning).run()


class Worker:
    def __init__(
        self,
        job: WorkerJob,
        events: Callable[[dict], None],
        storage,
        study: optuna.Study,
        tracker: Tracker,
        pruning: Pruning,
    ):
        self.job, self.events, self.storage, self.study = job, events, storage, study
        self.tracker, self.pruning = tracker, pruning
        self.spec, self.metric = job.spec, job.spec.objective
        self.datasets = DatasetCache()
        self.experiment_id = tracker.experiment_id(job.study_name)
        self.lock = AskLock(job.storage_url, job.study_name)
        self.stopped_by: StoreError | None = None

    def run(self) -> None:
        job = self.job
        while job.deadline is None or time.time() < job.deadline:
            raise_if_interrupted()
            with self.lock.hold():  # one worker at a time counts and creates: never more than the target
                with heartbeats_by_hand():
                    optuna.storages.fail_stale_trials(self.study)  # RDB: trials whose heartbeat stopped
                fail_lost_trials(self.study, self.tracker.client)
                self.pruning.end_orphans(self.study)
                if count_trials(self.study).counted >= job.target:
                    break
                with heartbeats_by_hand():
                    trial = self.study.ask()
                for key, value in (
                    (TrialAttr.HOST, HOST),
                    (TrialAttr.PID, os.getpid()),
                    (TrialAttr.DEVICE, job.device),
                ):
                    trial.set_user_attr(key, value)  # at once: if this worker dies, the next start recovers it
                judge = self.pruning.judge(trial)  # under the lock, so no worker takes its judge for an orphan
            ended = self._ask_told(trial, judge)
            self._finished(ended)
            if self.stopped_by is not None:
                raise_if_interrupted()  # a SIGTERM that came meanwhile is what ends the worker: exit 130
                raise self.stopped_by
        self.events({"kind": "worker_done", "worker": job.worker_index})

    # ------------------------------------------------------------------ one trial
    def _ask_told(self, trial: optuna.Trial, judge: Judge) -> optuna.trial.FrozenTrial:
        """Train the asked trial and tell the study how it ended; an interrupt is raised on once its
        trial is re-queued and told FAIL. Any other failure is the trial's: FAIL, and the sweep goes on."""
        with Heartbeat(self.storage, self.study, trial):  # from the moment the trial exists to its tell
            params = {d.name: d.suggest(trial) for d in self.spec.space}  # first: a retry needs them
            try:
                values = self._trial(trial, params, judge)
            except optuna.TrialPruned:
                judge.end(TrialState.PRUNED)
                return self.study.tell(trial, state=TrialState.PRUNED)  # Optuna keeps the last reported value
            except KeyboardInterrupt:  # at any step; its run (if any) ended INTERRUPTED on the way out, state kept
                judge.end(TrialState.FAIL)
                run_id = trial.user_attrs.get(TrialAttr.MLFLOW_RUN_ID)
                requeue_with_state(self.study, trial.number, params, trial.user_attrs, self.tracker.client, run_id)
                self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            except BaseException as err:
                judge.end(TrialState.FAIL)
                self._failed(trial, params, err)
                ended = self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                if not isinstance(err, Exception):
                    raise  # SystemExit and the like end the worker, the trial recorded as failed
                return ended
            judge.end(TrialState.COMPLETE, values[0])
            return self.study.tell(trial, values if len(values) > 1 else values[0])

    def _failed(self, trial: optuna.Trial, params: dict, err: BaseException) -> None:
        """A failure that is the environment's (a full disk, a store or server gone), not the trial's
        configuration: re-queue the trial to resume, and stop this worker where every next trial would
        meet the same failure."""
        full, gone = disk_full(err), isinstance(err, Exception) and server_gone(err)
        if gone:
            stop_waiting_on_servers()  # what is left to do here is best effort
        if isinstance(err, Exception) and (store_unavailable(err) or full is not None):
            self._retry_after_store_failure(trial, params, "the disk is full" if full else "the tracking store failed")
        if full is not None:
            self.stopped_by = full  # every next trial would meet the same disk: this worker stops
        elif gone:  # and the same silent server
            self.stopped_by = StoreError(
                f"--tracking-uri {redact(self.tracker.uri)}: the MLflow tracking server stopped answering "
                f"under trial {trial.number}, which is re-queued; rerun once it answers"
            )

    def _retry_after_store_failure(self, trial: optuna.Trial, params: dict, why: str) -> None:
        """The tracking store or the disk failed under the trial (not its configuration): re-queue it like
        an interrupted one, resuming its run; if it is not re-queued (retries spent), end its run."""
        client, run_id = self.tracker.client, trial.user_attrs.get(TrialAttr.MLFLOW_RUN_ID)
        log.warning("trial %d: %s; re-queued to resume", trial.number, why)
        try:
            requeued = requeue_with_state(self.study, trial.number, params, trial.user_attrs, client, run_id)
        except Exception as err:  # noqa: BLE001 -- the storage is on the full disk: the next start re-queues it
            log.warning("trial %d could not be re-queued: %s", trial.number, str(err).splitlines()[0][:200])
            return
        if not requeued:
            try:
                end_run(client, run_id, "FAIL", {Tag.ERROR: trial.user_attrs.get(TrialAttr.ERROR, "")}, True)
            except Exception as err:  # noqa: BLE001 -- the store is still down: the run stays as it has it
                log.warning("trial %d: its run %s could not be ended: %s", trial.number, run_id, err)

    def _trial(self, trial: optuna.Trial, params: dict, judge: Judge) -> list[float]:
        plan = self._plan(trial, params)
        self.events(
            {
                "kind": "start",
                "worker": self.job.worker_index,
                "device": self.job.device,
                "trial": trial.number,
                "epochs": plan.config.optim.epochs,
                "params": {k: plan.config.to_flat()[k] for k in plan.params},
                "resumed_epoch": plan.saved.epoch if plan.saved else 0,
            }
        )
        pruned_at: list[int] = []
        with self._open_run(trial, plan) as run:
            trial.set_user_attr(TrialAttr.MLFLOW_RUN_ID, run.run_id)
            if plan.superseded:
                supersede(self.tracker.client, plan.superseded, run.run_id)
            try:
                results, checkpoint_run_id, summary = self._train(trial, plan, run, pruned_at, judge)
            except optuna.TrialPruned:
                self._pruned(trial, run, pruned_at[0])
                raise
            except Exception as err:
                trial.set_user_attr(TrialAttr.ERROR, f"{type(err).__name__}: {err}"[:1000])
                environment = store_unavailable(err) or disk_full(err) is not None  # a retry resumes from it
                if self.spec.repeats == 1 and not environment:
                    delete_state(self.tracker.client, run.run_id, "the trial failed")
                raise
            finally:
                release_device_memory(self.job.device)
                trial.set_user_attr(TrialAttr.WORKER_MEMORY, memory_after_trial(self.job.device))
            return self._record(trial, run, results, checkpoint_run_id, summary)

    def _plan(self, trial: optuna.Trial, params: dict) -> TrialPlan:
        job = self.job
        config = self.spec.config_for(params, {**job.cli, "device": job.device})
        flat = config.to_flat()  # what trains: the sampled values after overrides and flags
        data = self.datasets.get(config)
        trial.set_user_attr(TrialAttr.CONFIG, flat)
        tags = {
            **provenance_tags(job.device),
            Tag.STUDY: job.study_name,
            Tag.TRIAL_NUMBER: str(trial.number),
            Tag.STORAGE: redact(job.storage_url),
            Tag.MODEL: config.network.model,
            Tag.DATA: data.source,
            Tag.COMMAND: "sweep",
        }
        task = task_identity()
        if task:  # which SLURM array task trained it (scancel / sacct by this id)
            trial.set_user_attr(TrialAttr.SLURM_TASK, task)
            tags[Tag.SLURM_TASK] = task
        if TrialAttr.WARM_START in trial.user_attrs:
            tags[Tag.WARM_START] = str(trial.user_attrs[TrialAttr.WARM_START])
        if TrialAttr.RETRY_OF in trial.user_attrs:
            tags[Tag.RETRY_OF_TRIAL] = str(trial.user_attrs[TrialAttr.RETRY_OF])
        if self.spec.repeats > 1:
            tags[Tag.REPEATS] = str(self.spec.repeats)
        continued, saved, superseded = self._continuation(trial.user_attrs, flat)
        if saved is not None:  # what it resumes from, as found now (the re-queue may not have read it)
            trial.set_user_attr(TrialAttr.RESUME_EPOCH, saved.epoch)
        return TrialPlan(params, config, data, tags, saved, continued, superseded)

    def _continuation(self, attrs: dict, flat: dict) -> tuple[str | None, TrainState | None, list[str]]:
        """For a retry: the interrupted trial's run it continues (from its saved state, or from epoch 0
        when that run logged no epoch and its params agree), that state, and the runs it supersedes
        (the old run when it is replaced; its seed runs whenever the retry trains its seeds afresh)."""
        client, run_id = self.tracker.client, attrs.get(TrialAttr.RESUME_RUN_ID)
        if not run_id:
            return None, None, []
        saved = None
        if self.spec.repeats == 1:
            # Read now, not only when the re-queue saw a saved epoch: a trial re-queued because the
            # tracking store was down could not read its run then, and the store is usually back by now.
            saved = saved_state(client, run_id, flat)
            if saved is None and attrs.get(TrialAttr.RESUME_EPOCH):  # of no use: restart from epoch 0
                delete_state(client, run_id, "its trial restarted from epoch 0")
        if saved is not None:
            return run_id, saved, []
        run, children = client.get_run(run_id), child_runs(client, run_id)
        agree = all(run.data.params.get(k, str(v)) == str(v) for k, v in flat.items())
        if not logged_epochs(run) and agree:
            return run_id, None, children
        return None, None, [run_id, *children]

    def _open_run(self, trial: optuna.Trial, plan: TrialPlan) -> AbstractContextManager[TrackedRun]:
        """The trial's MLflow run: the interrupted trial's run continued (one run per trial), or a new one."""
        name, ends = run_name(trial), PRUNED_ENDS
        tags = {**plan.tags, Tag.ROLE: Role.TRIAL}
        if plan.continued is None:
            return self.tracker.run(self.job.study_name, name, tags, self.job.parent_run_id, ends)
        if plan.saved is not None:
            resumes = int(self.tracker.client.get_run(plan.continued).data.tags.get(Tag.RESUMES, 0)) + 1
            tags[Tag.RESUMES] = resumes
        return self.tracker.attach(plan.continued, tags, name, ends, clear=(Tag.TRIAL_STATE, Tag.ERROR))

    def _train(
        self, trial: optuna.Trial, plan: TrialPlan, run: TrackedRun, pruned_at: list[int], judge: Judge
    ) -> tuple[list[FitResult], str, dict]:
        """Train the trial's seeds; returns (results, the run keeping the checkpoint, summary over seeds)."""

        def on_epoch(row: dict) -> bool:  # with repeats, ``row`` is the epoch's mean over seeds
            epoch = row["epoch"] + 1
            judge.report(row[self.metric], epoch)
            self.events(
                {
                    "kind": "epoch",
                    "worker": self.job.worker_index,
                    "trial": trial.number,
                    "epoch": epoch,
                    "value": row[self.metric],
                    "images_per_second": row.get("images_per_second"),
                    "epoch_seconds": row.get("epoch_seconds"),
                }
            )
            if judge.should_prune():  # abandon: no test evaluation, no checkpoint for a pruned trial
                pruned_at.append(epoch)
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")
            return False

        if plan.saved is not None:
            for row in plan.saved.history:  # the saved epochs' values, as the interrupted trial reported them
                judge.report(row[self.metric], row["epoch"] + 1)
                judge.should_prune()  # records rungs (successive halving); its "no" was given then
        if self.spec.repeats == 1:
            keeper = StateKeeper(run, plan.config, self.spec.state_every, self.spec.state_min_seconds)
            return [fit_and_log(run, plan.config, plan.data, on_epoch, resume=plan.saved, state=keeper)], run.run_id, {}
        seeds = fit_seeds_and_log(
            self.tracker,
            self.job.study_name,
            run,
            run_name(trial),
            seed_configs(plan.config, self.spec.repeats),
            plan.data,
            on_epoch,
            plan.tags,
            ends=PRUNED_ENDS,
        )
        trial.set_user_attr(TrialAttr.SEED_RUN_IDS, seeds.run_ids)
        return seeds.results, seeds.run_ids[seeds.best], seeds.summary

    def _pruned(self, trial: optuna.Trial, run: TrackedRun, epoch: int) -> None:
        run.log_metrics({"epochs_run": epoch})
        run.end("PRUNED", {Tag.PRUNED_AT_EPOCH: epoch})
        trial.set_user_attr(TrialAttr.EPOCHS_RUN, epoch)
        if self.spec.repeats == 1:
            delete_state(self.tracker.client, run.run_id, "the trial was pruned")

    def _record(
        self, trial: optuna.Trial, run: TrackedRun, results: list[FitResult], checkpoint_run_id: str, summary: dict
    ) -> list[float]:
        """The trial's objectives over its seeds, and its test metrics, on the trial and its run."""
        values = [self.spec.aggregate([objective_value(r, m) for r in results], m) for m in self.spec.metrics]
        repeats = self.spec.repeats
        for key in SCALARS:
            trial.set_user_attr(TrialAttr.test(key), summary.get(f"test_{key}", results[0].test[key]))
            if repeats > 1:
                trial.set_user_attr(TrialAttr.test_std(key), summary[f"test_{key}_std"])
        if repeats > 1:
            mean, std = mean_std([objective_value(r, self.metric) for r in results])
            trial.set_user_attr(TrialAttr.SEEDS, [r.config.run.seed for r in results])
            trial.set_user_attr(TrialAttr.OBJECTIVE_MEAN, mean)
            trial.set_user_attr(TrialAttr.OBJECTIVE_STD, std)
            run.log_metrics({"objective_mean": mean, "objective_std": std})
        trial.set_user_attr(TrialAttr.CHECKPOINT_RUN_ID, checkpoint_run_id)
        trial.set_user_attr(TrialAttr.EPOCHS_RUN, max(r.epochs_run for r in results))
        run.end("COMPLETE", {Tag.OBJECTIVE: values[0]})
        return values

    def _finished(self, frozen: optuna.trial.FrozenTrial) -> None:
        """After the tell: keep the best trials' checkpoints (when this one completed), and say how it ended."""
        job = self.job
        if frozen.state == TrialState.COMPLETE:
            try:
                with self.lock.hold():  # one worker at a time decides what to delete
                    retain_checkpoints(
                        self.study, self.tracker.client, self.experiment_id, job.study_name, job.spec.keep_checkpoints
                    )
            except Exception as err:  # noqa: BLE001 -- an unreachable artifact store must not stop the sweep
                log.warning("checkpoint retention skipped after trial %d: %s", frozen.number, err)
        self.events(
            {
                "kind": "end",
                "worker": job.worker_index,
                "trial": frozen.number,
                "state": frozen.state.name,
                "value": first_value(frozen),
                "error": frozen.user_attrs.get(TrialAttr.ERROR),
            }
        )


def objective_value(result: FitResult, metric: str) -> float:
    """One seed's value of an objective: a validation metric of its selected epoch, or a cost metric."""
    if metric in COST_METRICS:
        return result.cost[metric]
    return result.val["loss"] if metric == "val_loss" else result.val[metric.removeprefix("val_")]


def run_name(trial: optuna.Trial) -> str:
    return f"trial-{trial.number:03d}"


def saved_state(client, run_id: str | None, flat: dict) -> TrainState | None:
    """The saved state a re-queued trial continues from, or None (no run named, no readable state, or a
    state of another configuration: then the trial starts afresh in a new run)."""
    if not run_id:
        return None
    try:
        state = load_state(client, run_id)
    except (LookupError, DamagedFile) as err:
        log.warning("trial starts from epoch 0: %s", err)
        return None
    if state.config != flat:
        log.warning("trial starts from epoch 0: run %s's state was saved with another configuration", run_id)
        return None
    return state


def memory_after_trial(device: str) -> dict[str, float]:
    """``TrialAttr.WORKER_MEMORY``: the worker's host memory and, on CUDA, the device's, MiB."""
    host = resident_mib()
    out = {"host_resident": round(host, 1)} if host is not None else {}
    if device.startswith("cuda"):
        out["device_allocated"] = round(torch.cuda.memory_allocated(device) / 2**20, 1)
        out["device_reserved"] = round(torch.cuda.memory_reserved(device) / 2**20, 1)
    return out


def release_device_memory(device: str) -> None:
    """Between trials on a GPU: collect the last trial's tensors (reference cycles included) and return
    cached CUDA blocks to the driver, so memory does not creep from trial to trial. (On the CPU the
    allocator returns freed tensors by itself; a full gc pass there costs ~0.3 s per trial for nothing.)"""
    if device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()
