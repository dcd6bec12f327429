"""``cvstudy train``: one run, fully recorded in MLflow."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from cvstudy.trainers import models
from cvstudy.trainers.config import TrainConfig
from cvstudy.trainers.data import Dataset, demo_note, load_dataset
from cvstudy.trainers.loop import FitResult, resolve_device
from cvstudy.trainers.metrics import SCALARS

from ..errors import ConfigError, ResumeError
from ..processes import HOST, running_here
from ..stats import with_interval
from ..tracking.client import Tracker
from ..tracking.fitting import fit_and_log
from ..tracking.results import load_state, run_tags
from ..tracking.schema import Tag
from ..tracking.states import MIN_SECONDS, StateKeeper
from ..tracking.uris import browse_hint, ui_link


def prepare(
    overrides: dict, console: Console, offline: bool = False, data: Dataset | None = None
) -> tuple[TrainConfig, Dataset]:
    """Config, data, device and weights: everything that can be wrong with the input, checked before
    any run exists (so bad input leaves nothing half-written). ``data``: the configuration's dataset,
    when the caller has already loaded and checked it."""
    config = TrainConfig.from_flat(overrides)
    data = data if data is not None else load_dataset(*config.split)
    if note := demo_note(data):
        console.print(f"[yellow]{note}[/]")
    resolve_device(config.run.device)
    models.check(config.network, data.num_classes, offline=offline)
    return config, data


def epoch_progress(console: Console, epochs: int) -> Progress:
    return Progress(
        TextColumn("[bold]epoch"),
        MofNCompleteColumn(),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=False,
    )


@dataclass(frozen=True)
class TrainedRun:
    """A finished ``cvstudy train``: its MLflow run and what it measured."""

    run_id: str
    result: FitResult


def default_run_name(config: TrainConfig) -> str:
    return f"{config.network.model}-{config.augmentation.aug}-{config.criterion.loss}-lr{config.optim.lr:g}"


def train(
    overrides: dict,
    experiment: str = "cvstudy-train",
    tracking_uri: str | None = None,
    run_name: str | None = None,
    offline: bool = False,
    console: Console | None = None,
    state_min_seconds: float = MIN_SECONDS,
    data: Dataset | None = None,
) -> TrainedRun:
    console = console or Console()
    config, data = prepare(overrides, console, offline, data)
    tracker = Tracker(tracking_uri)
    tags = run_tags(config, data.source, {Tag.COMMAND: "train", Tag.PID: os.getpid(), Tag.HOST: HOST})
    with tracker.run(experiment, run_name or default_run_name(config), tags) as run:
        console.print(f"MLflow run {run.run_id} in experiment {experiment!r} at {tracker.shown}")
        with epoch_progress(console, config.optim.epochs) as progress:
            task = progress.add_task("", total=config.optim.epochs)

            def show(row: dict) -> bool:
                text = (
                    f"loss {row['train_loss']:.3f}  val bal-acc {row['val_balanced_accuracy']:.3f}  "
                    f"val macro-F1 {row['val_macro_f1']:.3f}  {row['images_per_second']:.0f} img/s"
                )
                progress.update(task, advance=1, description=text)
                if not console.is_terminal:
                    console.print(f"epoch {row['epoch'] + 1}/{config.optim.epochs}  {text}")
                return False

            try:
                keeper = StateKeeper(run, config, min_seconds=state_min_seconds)
                result = fit_and_log(run, config, data, on_epoch=show, state=keeper)
            except KeyboardInterrupt:
                console.print(f"resume with: cvstudy train --resume {run.run_id}", highlight=False)
                raise
    console.print(result_table(result))
    console.print(f"best epoch {result.best_epoch + 1} ({result.stop_reason}); run {run.run_id}")
    link = ui_link(tracker.uri, tracker.experiment_id(experiment), run_id=run.run_id)
    console.print(browse_hint(tracker.uri, link), highlight=False, soft_wrap=True)
    return TrainedRun(run.run_id, result)


def result_table(result: FitResult) -> Table:
    table = Table(title="test metrics (checkpoint selected on validation)")
    for name in SCALARS:
        table.add_column(name.replace("_", " "), justify="right")
    table.add_row(*(with_interval(result.test[k], *result.test["intervals"][k]) for k in SCALARS))
    table.caption = "[low, high]: 95 % interval over the test images"
    return table


def resume(
    run_id: str, tracking_uri: str | None = None, console: Console | None = None, state_min_seconds: float = MIN_SECONDS
) -> FitResult:
    """Continue an interrupted ``cvstudy train`` run from its last saved state, in the same MLflow run:
    RUNNING again, its curves continued at the following epochs, FINISHED at the end."""
    console = console or Console()
    tracker = Tracker(tracking_uri)
    try:
        run = tracker.client.get_run(run_id)
    except MlflowException:
        raise ResumeError(f"run {run_id}: not found at {tracker.shown}") from None
    tags = run.data.tags
    if run.info.status == "FINISHED":
        raise ResumeError(f"run {run_id} finished; there is nothing to resume")
    pid = int(tags.get(Tag.PID, 0) or 0)
    if run.info.status == "RUNNING" and running_here(tags.get(Tag.HOST), pid):
        raise ResumeError(f"run {run_id} is running (pid {pid}); stop it first")
    try:
        state = load_state(tracker.client, run_id)  # a damaged one raises DamagedFile: one line, exit 3
    except LookupError as err:
        raise ResumeError(f"{err} (runs keep one from this cvstudy on, until they finish); start a new run") from None
    try:
        config = TrainConfig.from_flat(state.config or {})
    except ConfigError as err:
        raise ResumeError(
            f"run {run_id} was recorded with another cvstudy configuration ({err}); start a new run"
        ) from None
    if config.to_flat() != state.config:
        raise ResumeError(
            f"run {run_id} was recorded with another cvstudy configuration (its settings differ from "
            "this version's); start a new run"
        )
    recorded = json.loads(open(tracker.client.download_artifacts(run_id, "config.json")).read())
    if recorded != state.config:
        raise ResumeError(f"run {run_id}: its state does not match its recorded config.json; start a new run")
    data = load_dataset(*config.split)
    models.check(config.network, data.num_classes, offline=True)
    resumes = int(tags.get(Tag.RESUMES, 0)) + 1
    console.print(
        f"resuming run {run_id} after epoch {state.epoch} of {config.optim.epochs} (resume {resumes})", highlight=False
    )
    try:
        with (
            tracker.attach(
                run_id,
                {Tag.RESUMES: resumes, Tag.PID: os.getpid(), Tag.HOST: HOST},
                clear=(Tag.TRIAL_STATE, Tag.ERROR),  # the interruption it resumes from is over
            ) as tracked,
            epoch_progress(console, config.optim.epochs) as progress,
        ):
            task = progress.add_task("", total=config.optim.epochs, completed=state.epoch)

            def show(row: dict) -> bool:
                progress.update(task, advance=1, description=f"val bal-acc {row['val_balanced_accuracy']:.3f}")
                if not console.is_terminal:
                    console.print(
                        f"epoch {row['epoch'] + 1}/{config.optim.epochs}  "
                        f"val bal-acc {row['val_balanced_accuracy']:.3f}"
                    )
                return False

            result = fit_and_log(
                tracked,
                config,
                data,
                on_epoch=show,
                resume=state,
                state=StateKeeper(tracked, config, min_seconds=state_min_seconds),
            )
    except KeyboardInterrupt:  # the run ended INTERRUPTED on the way out, its state kept
        console.print(f"resume with: cvstudy train --resume {run_id}", highlight=False)
        raise
    console.print(result_table(result))
    console.print(
        browse_hint(tracker.uri, ui_link(tracker.uri, run.info.experiment_id, run_id=run_id)),
        highlight=False,
        soft_wrap=True,
    )
    return result
