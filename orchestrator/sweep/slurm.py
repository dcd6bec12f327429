"""``cvstudy sweep --slurm``: the sweep's workers as one SLURM job array.

The login node checks the input, creates the study and its MLflow parent run (as any ``cvstudy sweep``
does), downloads missing pretrained weights (compute nodes are often offline), then writes an ``sbatch``
script and submits it. Each array task runs one plain ``cvstudy sweep`` against the same storage and
tracking server, on the GPUs SLURM gave it (``CUDA_VISIBLE_DEVICES``), until the study reaches its target.

Why a generated script rather than submitit: the script is the whole contract with the scheduler,
written to ``slurm/`` and logged on the study's parent run, so a user can read it, rerun it with
``sbatch`` or hand it to their cluster's support. It also needs nothing on the compute nodes but cvstudy
(no pickled callables). Preemption and time limits are the scheduler's own mechanisms:

- ``--signal=TERM@S``: SLURM sends SIGTERM to the worker S seconds before the time limit. The worker
  writes its trial's state, re-queues the trial in the study and exits 130; the script then requeues
  its own task (``scontrol requeue``) so the study keeps its workers.
- ``--requeue``: a preempted task goes back to the queue. SLURM sends SIGTERM first, so the same thing
  happens; after a SIGKILL, the trial resumes from its last written state once its heartbeat is stale.
- ``--open-mode=append``: a requeued task appends to its log.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess  # sbatch runs with an argument list, never through a shell  # nosec B404
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..boundaries import has_secret, inside, no_control, redact
from ..errors import SweepError
from ..tracking.client import Tracker
from ..tracking.schema import Tag
from ..tracking.uris import sqlite_path, sqlite_url
from .storage import CONNECTIONS_PER_WORKER, journal_path, postgresql_connections

TIME_LIMIT = re.compile(r"(\d+-)?\d{1,2}(:\d{2}){0,2}|\d+")  # fullmatch: a trailing newline does not pass
PARTITION = re.compile(r"[A-Za-z0-9_.,-]+")
# Secrets reach the workers through the job's environment (sbatch exports the submitting environment
# by default), never through the script, which is written to slurm/ and logged on the parent run.
STORAGE_ENV = "CVSTUDY_STORAGE"


@dataclass(frozen=True)
class EnvRef:
    """A word of the worker's command line that the job's shell takes from the environment."""

    name: str


@dataclass(frozen=True)
class SlurmOptions:
    """How the sweep's workers are put on the cluster."""

    tasks: int = 1
    """Array tasks, one worker each (``--array=0-(tasks-1)``)."""
    partition: str | None = None
    gpus_per_task: int = 0
    """GPUs per task (``--gpus-per-task``); 0 trains on the task's CPUs. A task with several GPUs runs one
    worker per GPU."""
    cpus_per_task: int | None = None
    time: str | None = None
    """Time limit per task, in SLURM's format (``MM``, ``HH:MM:SS``, ``D-HH:MM:SS``); None: the partition's."""
    signal_before: int = 300
    """Seconds before the time limit at which SLURM sends SIGTERM, so the trial's state is written
    (SLURM's resolution is about 60 s)."""
    sbatch_args: tuple[str, ...] = field(default_factory=tuple)
    """Further ``sbatch`` options, passed through verbatim (e.g. ``--account=lab --qos=normal``)."""

    def __post_init__(self):
        if self.tasks < 1:
            raise SweepError(f"--slurm-tasks must be >= 1; got {self.tasks}")
        if self.gpus_per_task < 0:
            raise SweepError(f"--slurm-gpus-per-task must be >= 0; got {self.gpus_per_task}")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise SweepError(f"--slurm-cpus-per-task must be >= 1; got {self.cpus_per_task}")
        if self.time is not None and not TIME_LIMIT.fullmatch(self.time):
            raise SweepError(f"--slurm-time {self.time!r}: expected MINUTES, HH:MM:SS or D-HH:MM:SS")
        if self.partition is not None and not PARTITION.fullmatch(self.partition):
            raise SweepError(f"--slurm-partition {self.partition!r}: expected letters, digits, '_', '.', ',' and '-'")
        for arg in self.sbatch_args:
            no_control(arg, "--sbatch")
            if not arg.startswith("-"):
                raise SweepError(f"--sbatch {arg!r}: expected an sbatch option (--name=value)")
        if self.signal_before < 60:
            raise SweepError(
                f"--slurm-signal-before must be >= 60 seconds (SLURM's resolution); got {self.signal_before}"
            )


def directives(options: SlurmOptions, job_name: str, log_pattern: str) -> list[str]:
    lines = [
        f"--job-name={job_name}",
        f"--array=0-{options.tasks - 1}",
        "--ntasks=1",
        f"--signal=TERM@{options.signal_before}",
        "--requeue",
        "--open-mode=append",
        f"--output={_directive_path(log_pattern)}",
    ]
    if options.partition:
        lines.append(f"--partition={options.partition}")
    if options.gpus_per_task:
        lines.append(f"--gpus-per-task={options.gpus_per_task}")
    if options.cpus_per_task:
        lines.append(f"--cpus-per-task={options.cpus_per_task}")
    if options.time:
        lines.append(f"--time={options.time}")
    return lines


def _directive_path(path: str) -> str:
    """A path in an #SBATCH line: sbatch reads double quotes there, so a path with spaces is quoted."""
    no_control(path, "the SLURM log path")
    if '"' in path:
        raise SweepError(f"{path}: a working directory holding '\"' cannot be named in an sbatch script")
    return f'"{path}"' if any(c.isspace() for c in path) else path


def shell_words(command: list) -> str:
    """The command as shell words: each quoted (``shlex.quote``), environment references expanded by
    the job's shell."""
    return " ".join(
        f'"${{{w.name}}}"' if isinstance(w, EnvRef) else shlex.quote(no_control(str(w), "a command word"))
        for w in command
    )


def render_script(options: SlurmOptions, command: list, workdir: Path, job_name: str, log_pattern: str) -> str:
    """The ``sbatch`` script: directives, then one worker per task through ``srun`` (so that SLURM's
    signals reach it as a job step), then the task's own requeue when the worker was interrupted."""
    head = "\n".join(f"#SBATCH {d}" for d in directives(options, job_name, log_pattern))
    extra = "\n".join(f"#SBATCH {a}" for a in options.sbatch_args)
    return f"""#!/bin/bash
# Written by `cvstudy sweep --slurm`: one sweep worker per array task, all on one study.
{head}
{extra}
# SIGTERM to this script (preemption) must not end it before the worker has saved its trial.
trap 'echo "cvstudy: SIGTERM; the worker saves its trial and re-queues it"' TERM
cd {shlex.quote(str(workdir))}
echo "cvstudy task ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}} on $(hostname), restart ${{SLURM_RESTART_COUNT:-0}}"
srun --ntasks=1 --kill-on-bad-exit=0 {shell_words(command)}
rc=$?
# 130: the worker was interrupted (time limit ahead, preemption, scancel --signal=TERM) and its trial is
# back in the study; requeue this task so the study keeps its workers (a task that finds the target
# reached exits at once).
# Said first: the requeue ends this script (SIGTERM, then SIGKILL), so a line after it may never be written.
if [ "$rc" -eq 130 ]; then
  echo "cvstudy: re-queueing this task"
  scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}" || echo "cvstudy: scontrol requeue failed (rc $?)"
fi
exit $rc
"""


MEASURED_WORKERS = 32  # the most workers on one study and one MLflow store measured (bench/scale.py workers)


def shared_storage_notes(
    storage_url: str, tracking_uri: str, tasks: int, connections: tuple[int, int] | None = None
) -> list[str]:
    """Warnings for a job array of ``tasks`` workers: the study or the runs in SQLite files, which only one
    node may safely write; more workers than were ever measured on one store; more connections than the
    PostgreSQL server has left (``connections``: its limit and those open now)."""
    notes = []
    local = [
        what
        for what, url in (("--storage", storage_url), ("--tracking-uri", tracking_uri))
        if sqlite_path(url) is not None
    ]
    if local:
        notes.append(
            f"{' and '.join(local)} use SQLite: safe while every task runs on one node; across nodes use "
            "--storage journal:///shared/path/study.journal (or postgresql://...) and an MLflow tracking server"
        )
    if tasks > MEASURED_WORKERS:
        notes.append(
            f"--slurm-tasks {tasks}: more workers on one study than cvstudy has measured ({MEASURED_WORKERS}, on "
            "the journal and on PostgreSQL: docs/many-machines.md); watch the first trials, or split the "
            "tasks among studies"
        )
    if connections is not None and tasks * CONNECTIONS_PER_WORKER > connections[0] - connections[1]:
        limit, open_now = connections
        notes.append(
            f"--slurm-tasks {tasks}: the workers may open up to {tasks * CONNECTIONS_PER_WORKER} PostgreSQL "
            f"connections ({CONNECTIONS_PER_WORKER} each) and the server has {limit - open_now} left "
            f"(max_connections {limit}, {open_now} open): a worker refused one stops with exit 3; raise "
            "max_connections or run fewer tasks"
        )
    return notes


def submit(
    options: SlurmOptions,
    command: list,
    study_name: str,
    workdir: Path | None = None,
    env: dict[str, str] | None = None,
) -> tuple[str, Path]:
    """Write the script to ``slurm/`` and submit it, with ``env`` added to the environment sbatch
    exports to the job. Returns (job id, script path)."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SweepError("--slurm: sbatch not found on this machine; run the sweep from the cluster's login node")
    workdir = (workdir or Path.cwd()).resolve()
    folder = workdir / "slurm"
    folder.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    script = inside(folder, folder / f"{study_name}-{stamp}.sbatch")
    log_pattern = str(folder / f"{study_name}-%A_%a.out")
    script.write_text(render_script(options, command, workdir, f"cvstudy-{study_name}", log_pattern))
    # sbatch found on PATH, one argument list, no shell: the script path is ours (slurm/ in the working directory)
    done = subprocess.run(
        [sbatch, "--parsable", str(script)],
        capture_output=True,
        text=True,
        cwd=workdir,  # nosec B603
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        script.unlink()
        message = (done.stderr or done.stdout).strip().splitlines()
        raise SweepError(f"--slurm: sbatch refused {script.name}: {message[-1] if message else done.returncode}")
    return done.stdout.strip().split(";")[0], script


def absolute_storage(url: str) -> str:
    """Storage URLs as every task must see them: journal and SQLite paths made absolute."""
    path = journal_path(url)
    if path is not None:
        return f"journal://{path}"
    database = sqlite_path(url)
    if database is not None and not database.is_absolute():
        return sqlite_url(database.resolve())
    return url


def worker_command(study_file: Path, plan, storage: str, task_args: list[str]) -> tuple[list, dict[str, str]]:
    """Each task's ``cvstudy sweep`` and the environment it needs: a storage URL or tracking URI that
    holds a secret goes through the job's environment, not the script."""
    env: dict[str, str] = {}
    command: list = [
        str(Path(sys.executable).parent / "cvstudy"),
        "sweep",
        "--study-file",
        str(Path(study_file).resolve()),
        "--study",
        plan.study_name,
        "--trials",
        str(plan.target),
    ]
    if has_secret(storage):
        env[STORAGE_ENV] = storage
        command += ["--storage", EnvRef(STORAGE_ENV)]
    else:
        command += ["--storage", storage]
    if has_secret(plan.tracking_uri):
        env["MLFLOW_TRACKING_URI"] = plan.tracking_uri  # what the workers' Tracker reads without --tracking-uri
    else:
        command += ["--tracking-uri", plan.tracking_uri]
    return [*command, "--offline", *task_args], env  # weights were fetched here; compute nodes may be offline


def launcher(options: SlurmOptions, study_file: Path, task_args: list[str], console):
    """``sweep``'s ``launch``: submit the workers for a checked, created study, and say how to follow it."""

    def launch(plan) -> None:
        storage = absolute_storage(plan.storage_url)
        connections = postgresql_connections(storage)
        for note in shared_storage_notes(storage, plan.tracking_uri, options.tasks, connections):
            console.print(f"[yellow]{note}[/]", highlight=False)
        command, env = worker_command(study_file, plan, storage, task_args)
        job, script = submit(options, command, plan.study_name, env=env)
        client = Tracker(plan.tracking_uri).client
        jobs = client.get_run(plan.parent_run_id).data.tags.get(Tag.SLURM_JOBS)
        client.set_tag(plan.parent_run_id, Tag.SLURM_JOBS, f"{jobs},{job}" if jobs else job)
        client.log_artifact(plan.parent_run_id, str(script), "slurm")
        name = shlex.quote(plan.study_name)
        console.print(
            f"submitted SLURM job {job}: {options.tasks} worker task(s) on study {name} "
            f"({plan.counts.done} of {plan.target} trials done); script {script}",
            highlight=False,
        )
        logs = f"{shlex.quote(str(script.parent))}/{plan.study_name}-{job}_*.out"
        console.print(
            f"follow: squeue -j {job}   tail -f {logs}   cvstudy report {name} --storage "
            f"{shlex.quote(redact(storage))}",
            highlight=False,
            soft_wrap=True,
        )
        console.print(
            f"stop: scancel {job} (each worker saves its trial's state; rerun this command to continue)",
            highlight=False,
        )

    return launch
