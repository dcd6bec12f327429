"""``cvstudy sweep``: the command line's flags checked and applied to the study file, then the study run
here (``sweep.manager``) or launched on SLURM (``sweep.slurm``). Everything that can be refused is refused
before torch, MLflow and Optuna load."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from cvstudy.trainers.config import TrainConfig

from ..errors import UserError
from ..sweep.study import SET_BY_SWEEP, load_study_spec, resolve_study_file

if TYPE_CHECKING:  # the manager imports torch, MLflow and Optuna: loaded once the flags are checked
    from ..sweep.manager import SweepOutcome


@dataclass(frozen=True)
class SweepFlags:
    """The sweep command's flags, as given (None: not given)."""

    model: str | None
    study_file: str | None
    study: str | None
    trials: int | None
    timeout: float | None
    storage: str | None
    pruner: str | None
    sampler: str | None
    devices: str | None
    workers: int | None
    trials_per_device: int | None
    epochs: int | None
    data: str | None
    seed: int | None
    tracking_uri: str | None
    set_: list[str]
    keep_checkpoints: int | None
    warm_start: str | None
    repeats: int | None
    state_every: int | None
    state_min_seconds: float | None
    offline: bool
    slurm: bool
    slurm_tasks: int
    slurm_partition: str | None
    slurm_gpus_per_task: int
    slurm_cpus_per_task: int | None
    slurm_time: str | None
    slurm_signal_before: int
    sbatch: list[str]


def sweep_command(f: SweepFlags, console: Console) -> SweepOutcome:
    """Check the flags, apply them to the study file, and run the sweep here or launch it on SLURM."""
    if f.trials is not None and f.trials < 1:
        raise UserError(f"--trials is the study's target number of trials: at least 1; got {f.trials}")
    if f.timeout is not None and not f.timeout > 0:
        raise UserError(f"--timeout is in seconds and must be > 0; got {f.timeout}")
    cli = _sweep_overrides(f.set_, epochs=f.epochs, data=f.data, seed=f.seed)
    if f.data is not None:
        from cvstudy.trainers.data import resolve_data_dir  # numpy only: refused before torch and MLflow load

        resolve_data_dir(f.data)
    spec = _sweep_spec(
        f.model,
        f.study_file,
        cli,
        pruner=f.pruner,
        sampler=f.sampler,
        repeats=f.repeats,
        state_every=f.state_every,
        state_min_seconds=f.state_min_seconds,
        trials_per_device=f.trials_per_device,
        keep_checkpoints=f.keep_checkpoints,
    )
    launch = None
    if f.slurm:
        if shutil.which("sbatch") is None:  # before anything is created
            raise UserError("--slurm: sbatch not found on this machine; run the sweep from the cluster's login node")
        if f.devices or f.workers:
            raise UserError(
                "--devices/--workers do not apply with --slurm: each task uses the GPUs SLURM gives it "
                "(--slurm-gpus-per-task)"
            )
        flags = {
            "pruner": f.pruner,
            "sampler": f.sampler,
            "timeout": f.timeout,
            "epochs": f.epochs,
            "seed": f.seed,
            "data": str(Path(f.data).resolve()) if f.data else None,
            "keep-checkpoints": f.keep_checkpoints,
            "repeats": f.repeats,
            "state-every": f.state_every,
            "state-min-seconds": f.state_min_seconds,
            "trials-per-device": f.trials_per_device,
        }
        launch = _slurm_launcher(spec.path, flags, f, console)
    elif (
        f.slurm_tasks != 1
        or f.sbatch
        or f.slurm_partition
        or f.slurm_time
        or f.slurm_gpus_per_task
        or f.slurm_cpus_per_task
    ):
        raise UserError("--slurm-* and --sbatch options need --slurm")
    # deferred: torch, MLflow and Optuna take seconds to import
    from ..sweep.manager import SweepSettings
    from ..sweep.manager import sweep as run_sweep

    settings = SweepSettings(
        study_name=f.study,
        trials=f.trials,
        timeout=f.timeout,
        storage_url=f.storage,
        devices=f.devices,
        workers=f.workers,
        tracking_uri=f.tracking_uri,
        overrides=cli,
        offline=f.offline,
        warm_start=f.warm_start,
    )
    return run_sweep(spec, settings, console=console, launch=launch)


def _sweep_overrides(set_: list[str], **flags) -> dict:
    """The settings fixed for every trial: --epochs, --data, --seed and each --set KEY=VALUE, checked."""
    cli = {k: v for k, v in flags.items() if v is not None}
    for item in set_:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        if key.strip() in SET_BY_SWEEP:
            raise UserError(f"--set {key.strip()}: {SET_BY_SWEEP[key.strip()]}")
        cli[key.strip()] = value.strip()
    TrainConfig.from_flat(cli)  # unknown keys and bad values fail before anything starts
    return cli


def _sweep_spec(model: str | None, study_file: str | None, cli: dict, **flags):
    """The study file with the command line's settings applied (the spec checks itself again)."""
    spec = load_study_spec(resolve_study_file(model, study_file))
    keep_checkpoints = flags.get("keep_checkpoints")
    if keep_checkpoints is not None and keep_checkpoints < 1:
        raise UserError(f"--keep-checkpoints must be >= 1; got {keep_checkpoints}")
    changes = {k: v for k, v in flags.items() if v is not None}
    return dataclasses.replace(spec, space=tuple(d for d in spec.space if d.name not in cli), **changes)


def _slurm_launcher(study_path: Path, flags: dict, f: SweepFlags, console: Console):
    """``sweep``'s launch for --slurm: each array task runs a plain worker with the same flags."""
    from ..sweep.slurm import SlurmOptions, launcher

    options = SlurmOptions(
        f.slurm_tasks,
        f.slurm_partition,
        f.slurm_gpus_per_task,
        f.slurm_cpus_per_task,
        f.slurm_time,
        f.slurm_signal_before,
        tuple(f.sbatch),
    )
    task_args = [a for k, v in flags.items() if v is not None for a in (f"--{k}", str(v))]
    task_args += [a for item in f.set_ for a in ("--set", item)]
    return launcher(options, study_path, task_args, console)
