"""``cvstudy train``: one run, fully recorded in MLflow."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from trainers import models
from trainers.config import TrainConfig
from trainers.data import DEMO_SOURCE, Dataset, load_dataset
from trainers.loop import FitResult, resolve_device

from .tracking import TAG, Tracker, browse_hint, fit_and_log, run_tags, ui_link


def prepare(overrides: dict, console: Console, offline: bool = False) -> tuple[TrainConfig, Dataset]:
    """Config, data, device and weights: everything that can be wrong with the input, checked before
    any run exists (so bad input leaves nothing half-written)."""
    config = TrainConfig.from_flat(overrides)
    data = load_dataset(*config.split)
    if data.source == DEMO_SOURCE:
        console.print(f"[yellow]no --data given and ./data holds no dataset: using the {DEMO_SOURCE}, which checks the "
                      "machinery, not recipes (README)[/]")
    resolve_device(config.run.device)
    models.check(config.model, data.num_classes, offline=offline)
    return config, data


def epoch_progress(console: Console, epochs: int) -> Progress:
    return Progress(TextColumn("[bold]epoch"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                    TextColumn("{task.description}"), console=console, transient=False)


def default_run_name(config: TrainConfig) -> str:
    return f"{config.model.model}-{config.aug.aug}-{config.loss.loss}-lr{config.optim.lr:g}"


def train(overrides: dict, experiment: str = "cvstudy-train", tracking_uri: str | None = None,
          run_name: str | None = None, offline: bool = False, console: Console | None = None) -> FitResult:
    console = console or Console()
    config, data = prepare(overrides, console, offline)
    tracker = Tracker(tracking_uri)
    tags = run_tags(config, data.source, {f"{TAG}.command": "train"})
    with tracker.run(experiment, run_name or default_run_name(config), tags) as run:
        console.print(f"MLflow run {run.run_id} in experiment {experiment!r} at {tracker.uri}")
        with epoch_progress(console, config.optim.epochs) as progress:
            task = progress.add_task("", total=config.optim.epochs)

            def show(row: dict) -> bool:
                text = (f"loss {row['train_loss']:.3f}  val bal-acc {row['val_balanced_accuracy']:.3f}  "
                        f"val macro-F1 {row['val_macro_f1']:.3f}  {row['images_per_second']:.0f} img/s")
                progress.update(task, advance=1, description=text)
                if not console.is_terminal:
                    console.print(f"epoch {row['epoch'] + 1}/{config.optim.epochs}  {text}")
                return False

            result = fit_and_log(run, config, data, on_epoch=show)
    console.print(result_table(result))
    console.print(f"best epoch {result.best_epoch + 1} ({result.stop_reason}); run {run.run_id}")
    link = ui_link(tracker.uri, tracker.experiment_id(experiment), run_id=run.run_id)
    console.print(browse_hint(tracker.uri, link), highlight=False, soft_wrap=True)
    return result


def result_table(result: FitResult) -> Table:
    table = Table(title="test metrics (checkpoint selected on validation)")
    for name in ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1"):
        table.add_column(name.replace("_", " "), justify="right")
    table.add_row(*(f"{result.test[k]:.4f}" for k in ("accuracy", "balanced_accuracy", "macro_precision",
                                                         "macro_recall", "macro_f1")))
    return table
