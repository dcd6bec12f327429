"""``cvstudy sweep``: the Optuna study manager and its device workers.

One worker per device runs trials back to back: ask Optuna for a trial, build the config, call the
shared trainer core through ``fit_and_log`` (one MLflow child run per trial), report each epoch's
objective for pruning. Workers on one machine are processes; workers on many machines are
``cvstudy sweep`` commands sharing one storage URL. The same loop serves both.

Faults, and what happens:
- a trial raises or its loss goes NaN/inf: Optuna FAIL, MLflow FAILED with the error tag; the sweep goes on.
- Ctrl-C / SIGTERM: the running trial is FAIL and re-queued, its run KILLED; exit 130; rerun resumes.
- a worker is SIGKILLed: its RUNNING trial is found stale on the next start on that host (its pid is
  gone) or by any live worker once its heartbeat stops; it is failed, its run KILLED, its params re-queued.
- the target (``--trials``) counts complete, pruned and failed trials, not ones superseded by a retry;
  trials are created under a storage-wide lock so concurrent workers never overshoot it.
"""

from __future__ import annotations

import fcntl
import gc
import multiprocessing as mp
import os
import platform
import queue as queue_mod
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from .study import StudySpec
from .tracking import TAG, Tracker, fit_and_log, provenance_tags, resolve_tracking_uri

HOST = platform.node()
HEARTBEAT_SECONDS = 10  # a RUNNING trial whose heartbeat is older than GRACE_SECONDS is stale
GRACE_SECONDS = 60
MAX_RETRIES = 3  # re-queues of the same parameters after a worker died or was interrupted


class SweepError(ValueError):
    """Bad sweep input (storage, devices, study): one line for the user, exit code 2."""


# ----------------------------------------------------------------------------- storage and locks
def default_storage(tracking_uri: str) -> str:
    """``optuna.db`` beside mlflow.db when MLflow uses a local SQLite file, else in the working directory."""
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri[len('sqlite:///'):].split('?')[0]).parent / 'optuna.db'}"
    return f"sqlite:///{Path('optuna.db').resolve()}"


def redact(url: str) -> str:
    """A storage URL without its password, fit for tags and logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':')[0]}:***@{host}"
    return url


def open_storage(url: str, on_stale: Callable | None = None):
    """An Optuna storage for ``url``: ``memory`` (one process), or any RDB URL with heartbeats."""
    import optuna

    if url in ("memory", ":memory:"):
        return optuna.storages.InMemoryStorage()
    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        raise SweepError(f"--storage {url!r}: expected sqlite:///PATH, postgresql://..., mysql://... or memory")
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                                          grace_period=GRACE_SECONDS, heartbeat_stale_trial_callback=on_stale)
    except Exception as err:  # noqa: BLE001 -- unreachable server, bad credentials, bad path
        raise SweepError(f"--storage {redact(url)}: cannot open ({str(err).splitlines()[0][:300]})") from None


class AskLock:
    """A storage-wide mutex around "count trials, then create one", so concurrent workers on any
    number of hosts never create more than the target. PostgreSQL: an advisory lock; SQLite: an
    fcntl lock on a file beside the database; memory: a thread lock. ``release`` is idempotent."""

    _memory = threading.Lock()

    def __init__(self, url: str, study_name: str):
        self.url, self.key = url, zlib.crc32(study_name.encode()) & 0x7FFFFFFF
        self.held = False
        self._conn = self._fh = None
        self._engine = None

    def acquire(self) -> "AskLock":
        if self.url.startswith("postgresql"):
            import sqlalchemy

            if self._engine is None:
                self._engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
            self._conn = self._engine.connect()
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        elif self.url.startswith("sqlite:///"):
            path = Path(self.url[len("sqlite:///"):].split("?")[0] + ".lock")
            self._fh = open(path, "a+")
            fcntl.flock(self._fh, fcntl.LOCK_EX)
        else:
            self._memory.acquire()
        self.held = True
        return self

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self._conn is not None:
            import sqlalchemy

            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self._conn.close()
            self._conn = None
        elif self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        else:
            self._memory.release()

    @contextmanager
    def held_until_released(self):
        self.acquire()
        try:
            yield self
        finally:
            self.release()


# ----------------------------------------------------------------------------- counting
@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    retried: int = 0
    """Failed or interrupted trials whose parameters were re-queued: not counted toward the target."""

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def counted(self) -> int:
        """What the target is measured against: finished trials plus the ones running now."""
        return self.done + self.running


def superseded_numbers(trials) -> set[int]:
    """Numbers of trials whose parameters were re-queued (a retry names them in its retry_history)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def requeue(study, trial) -> None:
    """Re-queue a failed or interrupted trial's parameters (Optuna's own retry callback, capped)."""
    import optuna

    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, trial)


def count_trials(study) -> Counts:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    superseded = superseded_numbers(trials)
    c = Counts()
    for t in trials:
        if t.number in superseded:
            c.retried += 1
        elif t.state == TrialState.COMPLETE:
            c.complete += 1
        elif t.state == TrialState.PRUNED:
            c.pruned += 1
        elif t.state == TrialState.FAIL:
            c.failed += 1
        elif t.state == TrialState.RUNNING:
            c.running += 1
        elif t.state == TrialState.WAITING:
            c.waiting += 1
    return c


# ----------------------------------------------------------------------------- stale trials
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def retry_and_kill(tracking_uri: str, reason: str) -> Callable:
    """The callback for a trial whose worker is gone: re-queue its parameters (Optuna's retry callback)
    and mark its MLflow run KILLED with the reason."""

    def callback(study, trial) -> None:
        requeue(study, trial)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            try:
                tracker = Tracker(tracking_uri)
                if tracker.client.get_run(run_id).info.status == "RUNNING":
                    tracker.client.set_tag(run_id, f"{TAG}.trial_state", "INTERRUPTED")
                    tracker.client.set_tag(run_id, f"{TAG}.error", reason)
                    tracker.client.set_terminated(run_id, "KILLED")
            except Exception:  # noqa: BLE001 -- the run may live on a tracking server that is down
                pass

    return callback


def fail_dead_local_trials(study, tracking_uri: str) -> list[int]:
    """RUNNING trials started on this host by a process that no longer exists: fail, re-queue, kill
    the run. (Other hosts' dead workers are found by Optuna's heartbeat check.)"""
    from optuna.trial import TrialState

    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == HOST and pid and pid != os.getpid() and not _pid_alive(pid):
            if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                retry_and_kill(tracking_uri, f"worker pid {pid} on {HOST} died")(study, study._storage.get_trial(t._trial_id))
                failed.append(t.number)
    return failed


# ----------------------------------------------------------------------------- the worker
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

    storage = storage or open_storage(job.storage_url, on_stale=retry_and_kill(job.tracking_uri, "heartbeat stale"))
    epochs = job.spec.config_for({}, job.cli).optim.epochs
    seed = None if job.seed is None else job.seed + job.worker_index
    return optuna.load_study(study_name=job.study_name, storage=storage, sampler=make_sampler(job.spec, seed),
                             pruner=make_pruner(job.spec, epochs))


def run_worker(job: WorkerJob, events: Callable[[dict], None], storage=None, tracker: Tracker | None = None) -> None:
    """Run trials on ``job.device`` until the study reaches its target or the deadline passes."""
    import optuna
    import torch

    from trainers.data import load_dataset

    if job.threads:
        torch.set_num_threads(job.threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported once, by the display
    study = load_study(job, storage)
    base = job.spec.config_for({}, job.cli)
    data = load_dataset(base.data.data, base.data.val_fraction, base.run.seed)
    tracker = tracker or Tracker(job.tracking_uri)
    lock = AskLock(job.storage_url, job.study_name)
    metric = job.spec.objective

    def objective(trial: optuna.Trial) -> float:
        lock.release()  # the trial exists now: other workers may create theirs
        params = {d.name: d.suggest(trial) for d in job.spec.space}
        config = job.spec.config_for(params, {**job.cli, "device": job.device})
        for key, value in (("host", HOST), ("pid", os.getpid()), ("device", job.device)):
            trial.set_user_attr(key, value)
        tags = {**provenance_tags(job.device), f"{TAG}.study": job.study_name, f"{TAG}.trial_number": str(trial.number),
                f"{TAG}.storage": redact(job.storage_url), f"{TAG}.model": config.model.model,
                f"{TAG}.data": data.source, f"{TAG}.command": "sweep"}
        retried = study._storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")
        if retried is not None:
            tags[f"{TAG}.retry_of_trial"] = str(retried)
        events({"kind": "start", "worker": job.worker_index, "device": job.device, "trial": trial.number,
                "epochs": config.optim.epochs, "params": params})
        pruned_at: list[int] = []

        def on_epoch(row: dict) -> bool:
            trial.report(row[metric], row["epoch"] + 1)
            events({"kind": "epoch", "worker": job.worker_index, "trial": trial.number, "epoch": row["epoch"] + 1,
                    "value": row[metric]})
            if trial.should_prune():
                pruned_at.append(row["epoch"] + 1)
                return True
            return False

        with tracker.run(job.study_name, f"trial-{trial.number:03d}", tags, job.parent_run_id) as run:
            trial.set_user_attr("mlflow_run_id", run.run_id)
            try:
                result = fit_and_log(run, config, data, on_epoch)
            except KeyboardInterrupt:
                run.set_tags({f"{TAG}.trial_state": "INTERRUPTED"})
                requeue(study, study._storage.get_trial(trial._trial_id))
                raise
            except Exception as err:
                run.set_tags({f"{TAG}.trial_state": "FAIL"})
                trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:1000])
                raise
            finally:
                release_device_memory(job.device)
            best = result.val["loss"] if metric == "val_loss" else result.val[metric.removeprefix("val_")]
            for key in ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1"):
                trial.set_user_attr(f"test_{key}", result.test[key])
            trial.set_user_attr("epochs_run", result.epochs_run)
            if pruned_at:
                run.finish("KILLED", {f"{TAG}.trial_state": "PRUNED", f"{TAG}.pruned_at_epoch": pruned_at[0]})
                raise optuna.TrialPruned(f"pruned at epoch {pruned_at[0]}")
            run.set_tags({f"{TAG}.trial_state": "COMPLETE", f"{TAG}.objective": best})
            return best

    def finished(study, frozen) -> None:
        events({"kind": "end", "worker": job.worker_index, "trial": frozen.number, "state": frozen.state.name,
                "value": frozen.value, "error": frozen.user_attrs.get("error")})

    while job.deadline is None or time.time() < job.deadline:
        with lock.held_until_released():
            fail_dead_local_trials(study, job.tracking_uri)
            if count_trials(study).counted >= job.target:
                break
            # The lock is released by the objective once the trial exists (or here, if ask fails).
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[finished])
    events({"kind": "worker_done", "worker": job.worker_index})


def release_device_memory(device: str) -> None:
    """Between trials on a GPU: collect the last trial's tensors (reference cycles included) and return
    cached CUDA blocks to the driver, so memory does not creep from trial to trial. (On the CPU the
    allocator returns freed tensors by itself; a full gc pass there costs ~0.3 s per trial for nothing.)"""
    if device.startswith("cuda"):
        import torch

        gc.collect()
        torch.cuda.empty_cache()


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _worker_process(job: WorkerJob, q) -> None:
    """Entry point of a spawned worker process: events go to the parent through ``q``. SIGTERM (sent by
    the parent on Ctrl-C, or by a scheduler on preemption) interrupts like Ctrl-C does."""
    import signal

    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run_worker(job, q.put)
    except KeyboardInterrupt:
        os._exit(130)


# ----------------------------------------------------------------------------- the manager
def resolve_devices(devices: str | None, workers: int | None) -> list[str]:
    """--devices list, or --workers N, or every visible GPU, else the CPU. A GPU never hosts two
    concurrent trials; the CPU may host several workers, each with its share of the cores."""
    import torch

    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if devices:
        names = [d.strip() for d in devices.split(",") if d.strip()]
        for name in names:
            if name != "cpu" and name not in gpus:
                raise SweepError(f"--devices: {name} is not a visible device (visible: {', '.join(gpus) or 'none'}, cpu)")
        gpu_names = [n for n in names if n != "cpu"]
        if len(set(gpu_names)) != len(gpu_names):
            raise SweepError("--devices: a GPU is listed twice; a trial never shares a GPU")
        return names
    if workers is not None:
        if workers < 1:
            raise SweepError("--workers must be >= 1")
        if gpus:
            if workers > len(gpus):
                raise SweepError(f"--workers {workers}: only {len(gpus)} GPUs visible and a trial never shares a GPU")
            return gpus[:workers]
        return ["cpu"] * workers
    return gpus or ["cpu"]


@dataclass
class SweepOutcome:
    study_name: str
    counts: Counts
    best: Any
    added: int
    parent_run_id: str | None
    interrupted: bool = False


def ensure_study(spec: StudySpec, study_name: str, storage, storage_url: str, tracker: Tracker):
    """Create or load the study, check it matches the study file, and find or create its MLflow parent run."""
    import optuna

    study = optuna.create_study(study_name=study_name, storage=storage, direction=spec.direction,
                                load_if_exists=True)
    if study.direction.name.lower() != spec.direction:
        raise SweepError(f"study {study_name!r} in {redact(storage_url)} was created to {study.direction.name.lower()}, "
                         f"but {spec.path} asks to {spec.direction}; use another --study name")
    recorded = study.user_attrs.get("objective")
    if recorded and recorded != spec.objective:
        raise SweepError(f"study {study_name!r} optimises {recorded}, but {spec.path} asks for {spec.objective}; "
                         "use another --study name")
    if spec.baseline and not study.get_trials(deepcopy=False):
        study.enqueue_trial({k: v for k, v in spec.baseline.items() if k in {d.name for d in spec.space}})
    study.set_user_attr("objective", spec.objective)
    study.set_user_attr("study_file", str(spec.path))
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if parent:
        try:
            tracker.client.get_run(parent)
        except Exception:  # noqa: BLE001 -- the parent lives in another tracking store: make a new one
            parent = None
    if not parent:
        tags = {**provenance_tags(), f"{TAG}.study": study_name, f"{TAG}.role": "study",
                f"{TAG}.storage": redact(storage_url), "mlflow.note.content": spec.description or f"Optuna study {study_name}"}
        created = tracker.client.create_run(tracker.experiment_id(study_name), run_name=f"study-{study_name}", tags=tags)
        parent = created.info.run_id
        study.set_user_attr("mlflow_parent_run_id", parent)
        tracker.client.log_dict(parent, {"objective": spec.objective, "direction": spec.direction,
                                         "fixed": spec.fixed, "space": [d.__dict__ for d in spec.space],
                                         "pruner": spec.pruner, "sampler": spec.sampler}, "study.json")
        tracker.client.log_artifact(parent, str(spec.path))
    else:
        tracker.client.update_run(parent, status="RUNNING")
    return study, parent


def sweep(spec: StudySpec, study_name: str | None = None, trials: int | None = None, timeout: float | None = None,
          storage_url: str | None = None, devices: str | None = None, workers: int | None = None,
          tracking_uri: str | None = None, cli: dict | None = None, seed: int | None = 0,
          console: Console | None = None) -> SweepOutcome:
    """Run (or resume) a study until it holds ``trials`` counted trials."""
    import optuna

    from trainers import models
    from trainers.data import DEMO_SOURCE, load_dataset

    from .progress import SweepDisplay

    console = console or Console()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cli = dict(cli or {})
    study_name = study_name or spec.name
    target = trials or (spec.grid_size() if spec.sampler == "grid" else spec.trials)
    tracking_uri = resolve_tracking_uri(tracking_uri)
    storage_url = storage_url or default_storage(tracking_uri)
    device_list = resolve_devices(devices, workers)

    # Everything that can be wrong with the input, before any trial or run exists.
    candidates = spec.candidate_configs(cli)
    base = candidates[0]
    data = load_dataset(base.data.data, base.data.val_fraction, base.run.seed)
    if data.source == DEMO_SOURCE:
        console.print(f"[yellow]no --data given and ./data holds no dataset: using the {DEMO_SOURCE}[/]")
    checked = set()
    for config in candidates:
        key = (config.model.model, config.model.pretrained, config.model.weights, config.model.cifar_stem)
        if key not in checked:
            checked.add(key)
            models.check(config.model, data.num_classes)

    tracker = Tracker(tracking_uri)
    storage = open_storage(storage_url, on_stale=retry_and_kill(tracking_uri, "heartbeat stale"))
    with AskLock(storage_url, study_name).held_until_released():
        study, parent = ensure_study(spec, study_name, storage, storage_url, tracker)
        fail_dead_local_trials(study, tracking_uri)
        before = count_trials(study)
    if before.counted >= target:
        console.print(f"study {study_name!r}: {before.done} trials ({before.complete} complete, {before.pruned} pruned, "
                      f"{before.failed} failed) of target {target}: target reached, nothing to add "
                      f"(pass --trials N to raise the target)")
        tracker.client.set_terminated(parent, "FINISHED")
        return SweepOutcome(study_name, before, _best(study), 0, parent)

    console.print(f"study {study_name!r} ({spec.path}), storage {redact(storage_url)}, MLflow {tracker.uri}, "
                  f"devices {', '.join(device_list)}: {before.done} of {target} trials done")
    deadline = time.time() + timeout if timeout else None
    threads = max(1, (os.cpu_count() or 1) // len(device_list)) if device_list.count("cpu") > 1 else None
    jobs = [WorkerJob(spec, study_name, storage_url, tracking_uri, parent, device, target, deadline, cli, i, seed, threads)
            for i, device in enumerate(device_list)]
    display = SweepDisplay(console, study_name, target, spec.objective, spec.direction, len(jobs))
    display.set_counts(before, _best(study))
    interrupted = False
    try:
        with display:
            if len(jobs) == 1:
                def events(event: dict) -> None:
                    if event["kind"] == "end":
                        display.set_counts(count_trials(study), _best(study))
                    display.event(event)

                run_worker(jobs[0], events, storage=storage if storage_url in ("memory", ":memory:") else None,
                           tracker=tracker)
            else:
                _run_processes(jobs, display, lambda: (count_trials(study), _best(study)), console)
    except KeyboardInterrupt:
        interrupted = True
    after = count_trials(study)
    best = _best(study)
    status = "KILLED" if interrupted else "FINISHED"
    if best is not None:
        tracker.client.log_metric(parent, f"best_{spec.objective}", best.value)
        tracker.client.set_tag(parent, f"{TAG}.best_trial", str(best.number))
        tracker.client.set_tag(parent, f"{TAG}.best_run_id", best.user_attrs.get("mlflow_run_id", ""))
    tracker.client.set_terminated(parent, status)
    outcome = SweepOutcome(study_name, after, best, after.done - before.done, parent, interrupted)
    display.summary(outcome)
    if interrupted:
        raise KeyboardInterrupt
    return outcome


def _best(study):
    try:
        return study.best_trial
    except ValueError:
        return None


def _run_processes(jobs: list[WorkerJob], display, poll: Callable, console: Console) -> None:
    """One spawned process per device; the parent renders progress and notices dead workers."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker_process, args=(job, q), name=f"cvstudy-worker-{job.worker_index}")
             for job in jobs]
    for p in procs:
        p.start()
    reported: set[int] = set()
    last_poll = 0.0
    try:
        while any(p.is_alive() for p in procs) or not q.empty():
            try:
                event = q.get(timeout=0.5)
                if event["kind"] == "end":
                    display.set_counts(*poll())
                display.event(event)
            except queue_mod.Empty:
                pass
            for i, p in enumerate(procs):
                if not p.is_alive() and p.exitcode not in (0, None) and i not in reported:
                    reported.add(i)
                    console.print(f"[red]worker {i} on {jobs[i].device} exited with code {p.exitcode}; "
                                  "the others go on[/]")
            if time.time() - last_poll > 2.0:
                display.set_counts(*poll())
                last_poll = time.time()
    except KeyboardInterrupt:
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: each worker fails and re-queues its trial, marks its run KILLED
        for p in procs:
            p.join(timeout=60)
        raise
    finally:
        for p in procs:
            p.join(timeout=5)
    # a worker that died (not interrupted) leaves a RUNNING trial: fail and re-queue it now
    if reported:
        study = load_study(jobs[0])
        fail_dead_local_trials(study, jobs[0].tracking_uri)
