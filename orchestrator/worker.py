"""One sweep worker: on one device, create trials under the ask lock and train each through the shared
core, one MLflow run per trial, until the study reaches its target. Workers on one machine are
processes (``supervise``); workers on many machines are ``cvstudy sweep`` commands sharing a storage."""

from __future__ import annotations

import gc
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from .storage import AskLock, Heartbeat, beats_by_attribute, open_storage, redact
from .study import StudySpec
from .seeds import fit_seeds_and_log, seed_configs
from .slurm import task_identity
from .tracking import TAG, Tracker, fit_and_log, mean_std, provenance_tags
from .states import RESUMES_TAG, StateKeeper, delete_state, load_state
from .trials import HOST, count_trials, fail_lost_trials, requeue_with_state, retain_checkpoints, stale_callback

log = logging.getLogger("cvstudy")


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
    seed: int | None = None
    threads: int | None = None
    keep_checkpoints: int = 3


def make_sampler(spec: StudySpec, seed: int | None):
    import optuna

    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(spec.grid, seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                      n_startup_trials=min(10, max(3, spec.trials // 3)))


def make_pruner(spec: StudySpec, epochs: int):
    import optuna

    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=spec.min_epochs)
    return optuna.pruners.HyperbandPruner(min_resource=spec.min_epochs, max_resource=max(epochs, spec.min_epochs + 1),
                                          reduction_factor=3)


def load_study(job: WorkerJob, storage=None):
    import optuna

    storage = storage or open_storage(job.storage_url, on_stale=stale_callback(job.tracking_uri))
    epochs = job.spec.config_for({}, job.cli).optim.epochs
    seed = None if job.seed is None else job.seed + job.worker_index
    return optuna.load_study(study_name=job.study_name, storage=storage, sampler=make_sampler(job.spec, seed),
                             pruner=make_pruner(job.spec, epochs))


class DatasetCache:
    """One loaded dataset per distinct (data, val_fraction, seed): a study may search any of the three,
    and each trial must train on the data and split its configuration names."""

    def __init__(self, size: int = 3):
        self.size, self.entries = size, OrderedDict()

    def get(self, config):
        from trainers.data import load_dataset

        key = config.split
        if key not in self.entries:
            self.entries[key] = load_dataset(*key)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        self.entries.move_to_end(key)
        return self.entries[key]


def run_worker(job: WorkerJob, events: Callable[[dict], None], storage=None, tracker: Tracker | None = None) -> None:
    """Run trials on ``job.device`` until the study reaches its target or the deadline passes."""
    import optuna
    import torch

    if job.threads:
        torch.set_num_threads(job.threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported once, by the display
    study = load_study(job, storage)
    datasets = DatasetCache()
    tracker = tracker or Tracker(job.tracking_uri)
    experiment_id = tracker.experiment_id(job.study_name)
    lock = AskLock(job.storage_url, job.study_name)
    metric = job.spec.objective

    def objective(trial: optuna.Trial) -> float:
        lock.release()  # the trial exists now: other workers may create theirs
        params = {d.name: d.suggest(trial) for d in job.spec.space}
        config = job.spec.config_for(params, {**job.cli, "device": job.device})
        flat = config.to_flat()  # what trains: the sampled values after overrides and flags
        data = datasets.get(config)
        for key, value in (("host", HOST), ("pid", os.getpid()), ("device", job.device), ("config", flat)):
            trial.set_user_attr(key, value)
        tags = {**provenance_tags(job.device), f"{TAG}.study": job.study_name, f"{TAG}.trial_number": str(trial.number),
                f"{TAG}.storage": redact(job.storage_url), f"{TAG}.model": config.model.model,
                f"{TAG}.data": data.source, f"{TAG}.command": "sweep"}
        task = task_identity()
        if task:  # which SLURM array task trained it (scancel / sacct by this id)
            trial.set_user_attr("slurm_task", task)
            tags[f"{TAG}.slurm_task"] = task
        user_attrs = trial.user_attrs
        if "retry_of" in user_attrs:
            tags[f"{TAG}.retry_of_trial"] = str(user_attrs["retry_of"])
        repeats = job.spec.repeats
        if repeats > 1:
            tags[f"{TAG}.repeats"] = str(repeats)
        saved = saved_state(tracker.client, user_attrs.get("resume_run_id"), flat) if repeats == 1 else None
        if saved is None and user_attrs.get("resume_run_id"):  # that run stays KILLED; its state is of no use
            delete_state(tracker.client, user_attrs["resume_run_id"], "its trial restarted from epoch 0")
        events({"kind": "start", "worker": job.worker_index, "device": job.device, "trial": trial.number,
                "epochs": config.optim.epochs, "params": {k: flat[k] for k in params},
                "resumed_epoch": saved.epoch if saved else 0})

        pruned_at: list[int] = []

        def on_epoch(row: dict) -> bool:  # with repeats, ``row`` is the epoch's mean over seeds
            epoch = row["epoch"] + 1
            trial.report(row[metric], epoch)
            events({"kind": "epoch", "worker": job.worker_index, "trial": trial.number, "epoch": epoch,
                    "value": row[metric]})
            if trial.should_prune():  # abandon: no test evaluation, no checkpoint for a pruned trial
                pruned_at.append(epoch)
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")
            return False

        name, ends = f"trial-{trial.number:03d}", {optuna.TrialPruned: "PRUNED"}
        if saved is not None:  # the interrupted trial's run, continued: one MLflow run per trial
            run_id = user_attrs["resume_run_id"]
            resumes = int(tracker.client.get_run(run_id).data.tags.get(RESUMES_TAG, 0)) + 1
            context = tracker.attach(run_id, {**tags, f"{TAG}.role": "trial", RESUMES_TAG: resumes}, name, ends,
                                     clear=(f"{TAG}.trial_state", f"{TAG}.error"))
        else:
            context = tracker.run(job.study_name, name, {**tags, f"{TAG}.role": "trial"}, job.parent_run_id, ends)
        with context as run:
            trial.set_user_attr("mlflow_run_id", run.run_id)
            heartbeat = Heartbeat(trial) if beats_by_attribute(job.storage_url) else None
            try:
                if saved is not None:
                    for row in saved.history:  # the saved epochs' values, as the interrupted trial reported them
                        trial.report(row[metric], row["epoch"] + 1)
                        trial.should_prune()  # records rungs (successive halving); its "no" was given then
                if repeats == 1:
                    keeper = StateKeeper(run, config, job.spec.state_every, job.spec.state_min_seconds)
                    results = [fit_and_log(run, config, data, on_epoch, resume=saved, state=keeper)]
                    checkpoint_run_id, summary = run.run_id, {}
                else:
                    seeds = fit_seeds_and_log(tracker, job.study_name, run, name, seed_configs(config, repeats), data,
                                              on_epoch, tags, ends=ends)
                    results, checkpoint_run_id, summary = seeds.results, seeds.run_ids[seeds.best], seeds.summary
                    trial.set_user_attr("seed_run_ids", seeds.run_ids)
            except optuna.TrialPruned:
                run.log_metrics({"epochs_run": pruned_at[0]})
                run.end("PRUNED", {f"{TAG}.pruned_at_epoch": pruned_at[0]})
                trial.set_user_attr("epochs_run", pruned_at[0])
                if repeats == 1:
                    delete_state(tracker.client, run.run_id, "the trial was pruned")
                raise
            except KeyboardInterrupt:  # the run ends INTERRUPTED on the way out; its state stays
                requeue_with_state(study, trial.number, params, user_attrs, tracker.client, run.run_id)
                raise
            except Exception as err:
                trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:1000])
                if repeats == 1:
                    delete_state(tracker.client, run.run_id, "the trial failed")
                raise
            finally:
                if heartbeat is not None:
                    heartbeat.stop()
                release_device_memory(job.device)
            values = [r.val["loss"] if metric == "val_loss" else r.val[metric.removeprefix("val_")] for r in results]
            value = job.spec.aggregate(values)
            for key in ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1"):
                trial.set_user_attr(f"test_{key}", summary.get(f"test_{key}", results[0].test[key]))
                if repeats > 1:
                    trial.set_user_attr(f"test_{key}_std", summary[f"test_{key}_std"])
            if repeats > 1:
                mean, std = mean_std(values)
                trial.set_user_attr("seeds", [r.config.run.seed for r in results])
                trial.set_user_attr("objective_mean", mean)
                trial.set_user_attr("objective_std", std)
                run.log_metrics({"objective_mean": mean, "objective_std": std})
            trial.set_user_attr("checkpoint_run_id", checkpoint_run_id)
            trial.set_user_attr("epochs_run", max(r.epochs_run for r in results))
            run.end("COMPLETE", {f"{TAG}.objective": value})
            return value

    def finished(study, frozen) -> None:
        if frozen.state.name == "COMPLETE":
            try:
                with lock.held_until_released():  # one worker at a time decides what to delete
                    retain_checkpoints(study, tracker.client, experiment_id, job.study_name, job.keep_checkpoints)
            except Exception as err:  # noqa: BLE001 -- an unreachable artifact store must not stop the sweep
                log.warning("checkpoint retention skipped after trial %d: %s", frozen.number, err)
        events({"kind": "end", "worker": job.worker_index, "trial": frozen.number, "state": frozen.state.name,
                "value": frozen.value, "error": frozen.user_attrs.get("error")})

    while job.deadline is None or time.time() < job.deadline:
        with lock.held_until_released():
            fail_lost_trials(study, tracker.client)
            if count_trials(study).counted >= job.target:
                break
            # The lock is released by the objective once the trial exists (or here, if ask fails).
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[finished])
    events({"kind": "worker_done", "worker": job.worker_index})


def saved_state(client, run_id: str | None, flat: dict):
    """The saved state a re-queued trial continues from, or None (no run named, no readable state, or a
    state of another configuration: then the trial starts afresh in a new run)."""
    if not run_id:
        return None
    try:
        state = load_state(client, run_id)
    except LookupError as err:
        log.warning("trial starts from epoch 0: %s", err)
        return None
    if state.config != flat:
        log.warning("trial starts from epoch 0: run %s's state was saved with another configuration", run_id)
        return None
    return state


def release_device_memory(device: str) -> None:
    """Between trials on a GPU: collect the last trial's tensors (reference cycles included) and return
    cached CUDA blocks to the driver, so memory does not creep from trial to trial. (On the CPU the
    allocator returns freed tensors by itself; a full gc pass there costs ~0.3 s per trial for nothing.)"""
    if device.startswith("cuda"):
        import torch

        gc.collect()
        torch.cuda.empty_cache()
