"""Process supervision: which devices get a worker, one spawned process per device, and what happens
when one of them dies or the user presses Ctrl-C."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
import time
from collections.abc import Callable

import torch
from rich.console import Console

from ..errors import StoreError, SweepError
from ..processes import interrupt
from ..tracking.client import Tracker
from .trials import fail_lost_trials
from .worker import WorkerJob, job_storage, load_study, run_worker


def resolve_devices(devices: str | None, workers: int | None, per_device: int = 1) -> list[str]:
    """The devices of this machine's workers, one entry per worker (``plan_devices`` on the visible GPUs)."""
    return plan_devices(devices, workers, per_device, [f"cuda:{i}" for i in range(torch.cuda.device_count())])


MAX_TRIALS_PER_DEVICE = 16  # trials sharing one device: past this they contend for it more than they gain


def plan_devices(
    devices: str | None, workers: int | None, per_device: int, visible: list[str], cores: int | None = None
) -> list[str]:
    """One entry per worker: --devices, or the first --workers N GPUs (N CPU workers without GPUs), or
    every visible GPU, else the CPU; each device then hosts ``per_device`` workers, so at most that many
    trials run on it at once (--trials-per-device). Several CPU workers share the ``cores`` (this
    machine's), one core each at least: more are refused, as are more than MAX_TRIALS_PER_DEVICE per
    device."""
    cores = cores or os.cpu_count() or 1
    if isinstance(per_device, bool) or per_device < 1:
        raise SweepError(f"--trials-per-device must be >= 1; got {per_device}")
    if per_device > MAX_TRIALS_PER_DEVICE:
        raise SweepError(f"--trials-per-device {per_device}: at most {MAX_TRIALS_PER_DEVICE} trials share a device")
    if devices is not None:
        names = [d.strip() for d in devices.split(",") if d.strip()]
        if not names:
            raise SweepError(f"--devices {devices!r}: names no device (cpu, or cuda:N,... from those visible)")
        for name in names:
            if name != "cpu" and name not in visible:
                raise SweepError(
                    f"--devices: {name} is not a visible device (visible: {', '.join(visible) or 'none'}, cpu)"
                )
        gpu_names = [n for n in names if n != "cpu"]
        if len(set(gpu_names)) != len(gpu_names):
            raise SweepError("--devices: a GPU is listed twice; use --trials-per-device to share a GPU")
        base = names
    elif workers is not None:
        if workers < 1:
            raise SweepError("--workers must be >= 1")
        if visible and workers > len(visible):
            raise SweepError(
                f"--workers {workers}: only {len(visible)} GPUs visible; use --trials-per-device "
                "to run several trials on one GPU"
            )
        base = visible[:workers] if visible else ["cpu"] * workers
    else:
        base = visible or ["cpu"]
    plan = [d for d in base for _ in range(per_device)]
    if plan.count("cpu") > cores:
        raise SweepError(
            f"{plan.count('cpu')} CPU workers (--workers / --trials-per-device) on {cores} cores: at most one "
            "worker per core"
        )
    return plan


def cpu_threads(devices: list[str]) -> int | None:
    """Torch threads per worker when several share the CPU (each its share of the cores)."""
    sharing = devices.count("cpu")
    return max(1, (os.cpu_count() or 1) // sharing) if sharing > 1 else None


def _worker_process(job: WorkerJob, q) -> None:
    """Entry point of a spawned worker process: events go to the parent through ``q``. SIGTERM (sent by
    the parent on Ctrl-C, or by a scheduler on preemption) interrupts like Ctrl-C does."""
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)  # as Python's own, and recorded (raise_if_interrupted)
    try:
        run_worker(job, q.put)
    except KeyboardInterrupt:
        os._exit(130)
    except StoreError as err:  # a full disk, a store gone: the parent says it once, in one line
        q.put({"kind": "stopped", "worker": job.worker_index, "message": str(err)})
        q.close()
        q.join_thread()
        os._exit(err.exit_code)


def run_processes(jobs: list[WorkerJob], display, poll: Callable, console: Console) -> None:
    """One spawned process per device; the parent renders progress and notices dead workers."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(target=_worker_process, args=(job, q), name=f"cvstudy-worker-{job.worker_index}") for job in jobs
    ]
    for p in procs:
        p.start()
    reported: set[int] = set()
    stopped: StoreError | None = None
    last_poll = 0.0
    try:
        while any(p.is_alive() for p in procs) or not q.empty():
            try:
                event = q.get(timeout=0.5)
                if event["kind"] == "stopped":
                    stopped = stopped or StoreError(event["message"])
                    reported.add(event["worker"])  # said at the end, as the sweep's one line
                    continue
                if event["kind"] == "end":
                    display.set_counts(*poll())
                display.event(event)
            except queue_mod.Empty:
                pass
            for i, p in enumerate(procs):
                if not p.is_alive() and p.exitcode not in (0, None) and i not in reported:
                    reported.add(i)
                    console.print(
                        f"[red]worker {i} on {jobs[i].device} exited with code {p.exitcode}; the others go on[/]"
                    )
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
        study, pruning = load_study(jobs[0], job_storage(jobs[0]))
        fail_lost_trials(study, Tracker(jobs[0].tracking_uri).client)
        pruning.end_orphans(study)
    if stopped is not None:
        raise stopped
