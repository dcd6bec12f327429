"""cvstudy as a library: what the command line does, for notebooks and scripts, re-exported by ``cvstudy``.

    import cvstudy

    outcome = cvstudy.sweep("resnet50", trials=4, epochs=2)       # studies/resnet50.yaml, as `cvstudy sweep`
    trials = cvstudy.results("resnet50")                           # a pandas DataFrame, one row per trial
    paths = cvstudy.report("resnet50")                             # reports/resnet50/report.html, ...
    model = cvstudy.load_model("resnet50@best")                    # the study's best checkpoint
    labels = model.predict(images)                                 # uint8 N x H x W x 3 -> N class indices
    run = cvstudy.train(model="resnet50", epochs=1, data="data")   # one run, as `cvstudy train`

Each function takes the settings its command takes (a training setting by its key: ``lr=3e-4``), checks
them the same way and raises what the command turns into its one line: ``cvstudy.UserError`` and its
kin for bad input, all of them ``cvstudy.CvstudyError``. Every function returns once its work is
recorded in MLflow and Optuna, where ``mlflow ui`` and ``cvstudy report`` see it as they see the
command's. Torch, MLflow and Optuna load on the first call, not on ``import cvstudy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from cvstudy.trainers.config import TrainConfig

from .errors import UserError

if TYPE_CHECKING:  # torch, MLflow, Optuna and pandas load when a function runs
    import pandas

    from cvstudy.trainers.inference import Classifier
    from cvstudy.trainers.loop import FitResult

    from .report.writer import ReportResult
    from .sweep.manager import SweepOutcome

__all__ = ["TrainOutcome", "load_model", "report", "results", "sweep", "train"]

STUDY_FILE_SUFFIXES = (".yaml", ".yml")


def _console(quiet: bool) -> Console:
    return Console(quiet=quiet, soft_wrap=True)


def _setting_text(value: Any) -> str:
    """A setting as ``--set KEY=VALUE`` spells it (yes/no as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def sweep(
    study: str | Path = "resnet50",
    *,
    trials: int | None = None,
    epochs: int | None = None,
    data: str | Path | None = None,
    seed: int | None = None,
    name: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    devices: str | None = None,
    workers: int | None = None,
    trials_per_device: int | None = None,
    timeout: float | None = None,
    pruner: str | None = None,
    sampler: str | None = None,
    repeats: int | None = None,
    keep_checkpoints: int | None = None,
    warm_start: str | None = None,
    offline: bool = False,
    quiet: bool = False,
    **settings: Any,
) -> SweepOutcome:
    """Run or resume a study, as ``cvstudy sweep`` does, and return its outcome (``study_name``,
    ``counts``, the ``best`` trial, trials ``added``, the study's MLflow ``parent_run_id``).

    ``study``: a shipped study's name (``resnet50``, ``vit_s16``, ...) or the path of a study file.
    ``name``: the study's name in the storage (default: the file's). ``settings``: training settings
    fixed for every trial, by key (``model="test_resnet"``, ``batch_size=16``), as ``--set KEY=VALUE``.
    The other keywords are the command's flags. ``quiet``: print nothing."""
    from .commands.sweep import SweepFlags, sweep_command

    is_file = Path(study).suffix in STUDY_FILE_SUFFIXES
    flags = SweepFlags(
        model=None if is_file else str(study),
        study_file=str(study) if is_file else None,
        study=name,
        trials=trials,
        timeout=timeout,
        storage=storage,
        pruner=pruner,
        sampler=sampler,
        devices=devices,
        workers=workers,
        trials_per_device=trials_per_device,
        epochs=epochs,
        data=None if data is None else str(data),
        seed=seed,
        tracking_uri=tracking_uri,
        set_=[f"{key}={_setting_text(value)}" for key, value in settings.items()],
        keep_checkpoints=keep_checkpoints,
        warm_start=warm_start,
        repeats=repeats,
        state_every=None,
        state_min_seconds=None,
        offline=offline,
        slurm=False,
        slurm_tasks=1,
        slurm_partition=None,
        slurm_gpus_per_task=0,
        slurm_cpus_per_task=None,
        slurm_time=None,
        slurm_signal_before=300,
        sbatch=[],
    )
    return sweep_command(flags, _console(quiet))


@dataclass(frozen=True)
class TrainOutcome:
    """One finished training run."""

    run_id: str
    """The MLflow run that holds it."""
    test: dict[str, Any]
    """The test metrics of the checkpoint validation selected (``accuracy``, ``balanced_accuracy``,
    ``macro_f1``, ..., their ``intervals``)."""
    val: dict[str, Any]
    """The validation metrics of the selected epoch."""
    best_epoch: int
    """The selected epoch, counted from 0."""
    result: FitResult
    """Everything the trainer core measured (history per epoch, cost, checks)."""


def train(
    config: TrainConfig | None = None,
    *,
    experiment: str = "cvstudy-train",
    tracking_uri: str | None = None,
    run_name: str | None = None,
    offline: bool = False,
    quiet: bool = False,
    **settings: Any,
) -> TrainOutcome:
    """Train one model, as ``cvstudy train`` does, recorded as one MLflow run in ``experiment``.

    The settings come from ``config`` (a ``TrainConfig``) or by key (``model="resnet50", lr=3e-4``),
    not both; unset keys take their defaults. ``settings`` are checked before anything is created."""
    from .commands.train import train as run_train

    if config is not None and settings:
        raise UserError(f"train: give a TrainConfig or settings by key, not both (got {', '.join(settings)})")
    overrides = config.to_flat() if config is not None else dict(settings)
    TrainConfig.from_flat(overrides)  # unknown keys and bad values are refused before anything starts
    trained = run_train(
        overrides,
        experiment=experiment,
        tracking_uri=tracking_uri,
        run_name=run_name,
        offline=offline,
        console=_console(quiet),
    )
    r = trained.result
    return TrainOutcome(trained.run_id, r.test, r.val, r.best_epoch, r)


def results(
    studies: str | Sequence[str] | None = None,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
) -> pandas.DataFrame:
    """The trials of one study or several (default: every study in the storage) as a DataFrame, one row
    per trial, the columns of the report's ``trials.csv``: study, trial, state, seeds, the objective(s),
    effective settings, test metrics (``test_<metric>``, with ``_std`` over seeds or ``_ci_low`` /
    ``_ci_high`` over the test images), epochs, seconds, cost, data digests and ``mlflow_run_id``.
    Missing values are NaN or None."""
    import pandas

    from .commands.report import read_studies
    from .report.writer import trial_table

    names = [studies] if isinstance(studies, str) else list(studies or [])
    _, read = read_studies(names, storage, tracking_uri)
    columns, table, _ = trial_table([row for study in read for row in study.rows])
    return pandas.DataFrame(table, columns=columns)


def report(
    studies: str | Sequence[str] | None = None,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    out: str | Path | None = None,
    top: int = 10,
    quiet: bool = False,
) -> ReportResult:
    """Write the report of one study or several side by side, as ``cvstudy report`` does; returns its
    ``paths`` (``html``, ``md``, ``csv``, the paper tables) and the Optuna/MLflow mismatches it found
    (``problems``, also written into the report)."""
    from .commands.report import report as run_report

    names = [studies] if isinstance(studies, str) else list(studies or [])
    return run_report(
        names,
        storage_url=storage,
        tracking_uri=tracking_uri,
        out=None if out is None else str(out),
        top=top,
        console=_console(quiet),
    )


def load_model(
    model: str,
    *,
    tracking_uri: str | None = None,
    storage: str | None = None,
    quiet: bool = False,
) -> Classifier:
    """A logged checkpoint, ready to predict: ``model`` is an MLflow run id, ``STUDY@best`` (the study's
    best complete trial), ``STUDY#N`` (its trial N) or a registered model (``models:/NAME@ALIAS``,
    ``models:/NAME/VERSION``), as ``cvstudy compare`` reads them.

    It runs on the device the run trained on where this machine has it, else on the CPU.
    ``.predict(images)`` gives class indices and ``.probabilities(images)`` an N x K array, for uint8
    N x H x W x 3 images at the data's resolution (resized and normalised inside, as in training)."""
    from .commands.compare import resolve
    from .commands.predict import checkpoint_of, load_classifier
    from .tracking.client import Tracker

    console = _console(quiet)
    tracker = Tracker(tracking_uri)
    run, path = checkpoint_of(tracker, console, run_id=resolve(model, tracker, storage))
    classifier, _ = load_classifier(run, path, console)
    return classifier
