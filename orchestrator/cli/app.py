"""The ``cvstudy`` command line. Thin: each command parses its flags, then calls one function.

Exit codes: 0 done; 1 ``report`` found Optuna and MLflow disagreeing (after writing the report, which
lists the mismatches), or an internal error (a bug in cvstudy or a library: one line, ``--debug`` or
CVSTUDY_DEBUG=1 for the traceback); 2 bad input or configuration (one line naming the file or setting,
no traceback, nothing half-written); 3 a store, server or file system that failed (unreachable, locked,
full, read-only); 130 interrupted (Ctrl-C or SIGTERM; the running MLflow run is marked KILLED).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import warnings
from typing import Optional

import typer
from rich.console import Console

from cvstudy.trainers.config import AUG_OPS, TrainConfig
from cvstudy.trainers.errors import CvstudyError

from .. import sqlite_files
from ..boundaries import redact_text
from ..errors import CheckFailed, UserError, disk_full
from ..processes import interrupt

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: wrapped to the terminal, never cut off (rich tables truncate at 80)
    help="Image-classification sweeps: one trainer core, Optuna search, MLflow tracking.",
)
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Inspect a dataset directory.")
app.add_typer(data_app, name="data")
weights_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Pretrained weights in the local Hugging Face cache."
)
app.add_typer(weights_app, name="weights")
storage_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Check and repair a journal:///PATH storage file."
)
app.add_typer(storage_app, name="storage")
console = Console()
err_console = Console(stderr=True)
OFFLINE_HELP = (
    "Never download pretrained weights (as HF_HUB_OFFLINE=1): use --weights or the local Hugging Face "
    "cache, else stop before training."
)


def _store_errors() -> tuple[type, ...]:
    """The storage and tracking libraries' error bases, where a command imported them (not imported
    here: the CLI defers those libraries until a command runs)."""
    found = []
    for module, name in (
        ("mlflow.exceptions", "MlflowException"),
        ("sqlalchemy.exc", "SQLAlchemyError"),
        ("optuna.exceptions", "StorageInternalError"),
    ):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


# MLflow's answers that mean "what you named is not there or not valid": a run id, model or version from
# the command line (the input); every other MLflow error is the store's.
_NAMED_NOTHING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
DEBUG_ENV = "CVSTUDY_DEBUG"
TRACKING_SERVER_WAIT = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def exit_code_for(err: Exception) -> int:
    """2: the user's input; 3: a store, server or file system that failed; 1: a bug in cvstudy or a library."""
    if isinstance(err, CvstudyError):
        return err.exit_code
    mlflow_error = getattr(sys.modules.get("mlflow.exceptions"), "MlflowException", None)
    if (
        isinstance(mlflow_error, type)
        and isinstance(err, mlflow_error)
        and getattr(err, "error_code", None) in _NAMED_NOTHING
    ):
        return 2
    if isinstance(err, (OSError, *_store_errors())):
        return 3
    return 1


def _hide_known_warnings() -> None:
    """The warnings a user of the command line cannot act on, each named with why; every other warning
    (a library's deprecation among them) is shown."""
    # Optuna marks RDBStorage's heartbeat argument experimental (since 2.9): every sweep passes it, it is
    # stable in use, and a user can do nothing about the notice (set_metric_names is hidden where called).
    warnings.filterwarnings("ignore", message=r"Argument ``heartbeat_interval`` is an experimental feature")
    # Alembic's notes while MLflow creates or migrates its tables: MLflow's own business.
    warnings.filterwarnings("ignore", category=UserWarning, module="alembic")


def handled(fn):
    """Turn errors into one line and an exit code (2 the input, 3 a store or the file system, 1 a bug;
    ``--debug`` or CVSTUDY_DEBUG=1 shows a bug's traceback), and interrupts into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        signal.signal(signal.SIGTERM, interrupt)  # preemption: as Ctrl-C, so runs end KILLED, not RUNNING
        # A process started in the background by a non-interactive shell inherits SIGINT ignored;
        # `kill -INT` must still interrupt cleanly (run KILLED, exit 130), so restore Python's handler.
        signal.signal(signal.SIGINT, interrupt)  # raises KeyboardInterrupt; recorded, so one swallowed is raised again
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow's table-creation chatter
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # A tracking server that stops answering is waited on for a bounded time, then its trial is
        # re-queued (MLflow's own defaults wait about 11 minutes): 4 retries 2, 4, 8, 16 s apart (about
        # 30 s when connections are refused), 30 s per request (a server that accepts and says nothing:
        # at most about 3 minutes). A user's own settings of these variables win; workers inherit them.
        for name, value in TRACKING_SERVER_WAIT.items():
            os.environ.setdefault(name, value)
        _hide_known_warnings()
        sqlite_files.forget()
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
        for noisy in ("alembic", "mlflow", "optuna", "urllib3", "matplotlib"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # huggingface_hub warns on every retry of an unreachable hub; cvstudy reports the outcome in one line
        # (HF_HUB_VERBOSITY for when huggingface_hub is imported later: its import resets its logger's level)
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            err_console.print(
                "[yellow]interrupted[/]: the running MLflow run is marked KILLED; rerun to resume (sweep "
                "trials and train runs continue from their last saved epoch)"
            )
            raise typer.Exit(130) from None
        except Exception as err:  # noqa: BLE001 -- every error ends in one line and its exit code
            code = exit_code_for(err)
            if code == 1 and not isinstance(err, CvstudyError) and os.environ.get(DEBUG_ENV) == "1":
                raise  # a bug's traceback, as asked (a failed check of cvstudy's own is one line either way)
            # a store's error that does not say which file (or says so without saying it is damaged)
            full = disk_full(err)
            if full is not None:  # said with the path and its free space, whoever wrapped it
                err_console.print(f"[red]error:[/] {full}", highlight=False, soft_wrap=True)
                raise typer.Exit(full.exit_code) from None
            damaged = sqlite_files.damaged_message() if code in (1, 3) and not isinstance(err, CheckFailed) else None
            if damaged:  # SQLite names the damaged file
                err_console.print(f"[red]error:[/] {damaged}", highlight=False, soft_wrap=True)
                raise typer.Exit(3) from None
            err_console.print(_one_line(err, code), highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None

    return wrapper


def _one_line(err: Exception, code: int) -> str:
    if isinstance(err, CvstudyError):  # cvstudy's own message: one line already, whole (hints end it)
        return f"[red]error:[/] {err}"
    first = redact_text((str(err).strip().splitlines() or [""])[0][:300])  # a library's: its first line
    if code == 3:
        return f"[red]error:[/] {type(err).__name__}: {first} (a store or the file system failed, not the input)"
    if code == 2:
        return f"[red]error:[/] {first}"
    return (
        f"[red]internal error:[/] {type(err).__name__}: {first} -- a bug in cvstudy or a library it uses, not "
        f"your input; rerun with --debug (or {DEBUG_ENV}=1) for the traceback"
    )


def _opt(key: str, *names: str, **kw):
    """A sweep flag that overrides one training setting, with that setting's help."""
    return typer.Option(None, *names, help=TrainConfig.field_docs()[key], show_default=False, **kw)


METAVARS = {str: "TEXT", int: "INTEGER", float: "NUMBER"}


def _default_said(key: str, value) -> str:
    """A training setting's default as its help ends: in the flag's own spelling, never Python's."""
    flag = key.replace("_", "-")
    if key in AUG_OPS:
        return " [default: the --aug preset's]"
    if value is None:
        return ""  # the help says what an unset value means
    if isinstance(value, bool):
        return f" [default: --{flag}]" if value else f" [default: --no-{flag}]"
    return f" [default: {value}]"


def _setting(key: str):
    """The flag of one training setting, from its field: spelling, help (the field's own, and its
    default in the flag's spelling) and metavar. Unset, it is None and the config's default applies.
    ``train``'s signature names every field explicitly; a test keeps the two in step."""
    kind, _ = TrainConfig.value_types()[key]
    flag = "--" + key.replace("_", "-")
    help_text = TrainConfig.field_docs()[key] + _default_said(key, _DEFAULTS[key])
    if kind is bool:
        return typer.Option(None, f"{flag}/--no-{flag[2:]}", help=help_text, show_default=False)
    return typer.Option(None, flag, help=help_text, show_default=False, metavar=METAVARS[kind])


_DEFAULTS = TrainConfig().to_flat()


# Each command imports its implementation when it runs: that defers torch, MLflow and Optuna (several
# seconds), so `cvstudy --help` and shell completion answer at once.


# `cvstudy train`'s own flags beside the training settings, declared once here so that the command's
# signature reads one line per flag.
_TRAIN = {
    "experiment": typer.Option("cvstudy-train", "--experiment", metavar="NAME", help="MLflow experiment name."),
    "tracking_uri": typer.Option(
        None,
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).",
    ),
    "run_name": typer.Option(None, "--run-name", metavar="NAME", help="MLflow run name (default: model-aug-loss-lr)."),
    "state_min_seconds": typer.Option(
        60.0,
        "--state-min-seconds",
        min=0,
        metavar="SECONDS",
        help="Write the run's resume state after an epoch at most once "
        "per this many seconds (the newest is always written on Ctrl-C/SIGTERM).",
    ),
    "resume": typer.Option(
        None,
        "--resume",
        metavar="RUN_ID",
        help="Continue an interrupted run from its last saved epoch, in the same MLflow run.",
    ),
}


@app.command("train")
@handled
def _train(
    ctx: typer.Context,
    data: Optional[str] = _setting("data"),
    val_fraction: Optional[float] = _setting("val_fraction"),
    split_seed: Optional[int] = _setting("split_seed"),
    model: Optional[str] = _setting("model"),
    pretrained: Optional[bool] = _setting("pretrained"),
    weights: Optional[str] = _setting("weights"),
    img_size: Optional[int] = _setting("img_size"),
    cifar_stem: Optional[bool] = _setting("cifar_stem"),
    finetune: Optional[str] = _setting("finetune"),
    drop_rate: Optional[float] = _setting("drop_rate"),
    tta: Optional[str] = _setting("tta"),
    aug: Optional[str] = _setting("aug"),
    hflip: Optional[float] = _setting("hflip"),
    vflip: Optional[float] = _setting("vflip"),
    crop_pad: Optional[int] = _setting("crop_pad"),
    rotate: Optional[float] = _setting("rotate"),
    translate: Optional[float] = _setting("translate"),
    scale: Optional[float] = _setting("scale"),
    jitter: Optional[float] = _setting("jitter"),
    hue: Optional[float] = _setting("hue"),
    trivial: Optional[bool] = _setting("trivial"),
    erase: Optional[float] = _setting("erase"),
    mixup: Optional[float] = _setting("mixup"),
    cutmix: Optional[float] = _setting("cutmix"),
    loss: Optional[str] = _setting("loss"),
    label_smoothing: Optional[float] = _setting("label_smoothing"),
    tau: Optional[float] = _setting("tau"),
    beta: Optional[float] = _setting("beta"),
    gamma: Optional[float] = _setting("gamma"),
    drw_epoch: Optional[int] = _setting("drw_epoch"),
    class_sampler: Optional[str] = _setting("class_sampler"),
    optimizer: Optional[str] = _setting("optimizer"),
    lr: Optional[float] = _setting("lr"),
    weight_decay: Optional[float] = _setting("weight_decay"),
    momentum: Optional[float] = _setting("momentum"),
    batch_size: Optional[int] = _setting("batch_size"),
    epochs: Optional[int] = _setting("epochs"),
    warmup_fraction: Optional[float] = _setting("warmup_fraction"),
    grad_clip: Optional[float] = _setting("grad_clip"),
    ema: Optional[float] = _setting("ema"),
    seed: Optional[int] = _setting("seed"),
    device: Optional[str] = _setting("device"),
    patience: Optional[int] = _setting("patience"),
    select_metric: Optional[str] = _setting("select_metric"),
    compile: Optional[bool] = _setting("compile"),
    amp: Optional[bool] = _setting("amp"),
    channels_last: Optional[bool] = _setting("channels_last"),
    data_on: Optional[str] = _setting("data_on"),
    experiment: str = _TRAIN["experiment"],
    tracking_uri: Optional[str] = _TRAIN["tracking_uri"],
    run_name: Optional[str] = _TRAIN["run_name"],
    offline: bool = typer.Option(False, "--offline", help=OFFLINE_HELP),
    state_min_seconds: float = _TRAIN["state_min_seconds"],
    resume: Optional[str] = _TRAIN["resume"],
) -> None:
    """Train one model on one dataset and record the run in MLflow."""
    settings = TrainConfig.keys()
    overrides = {k: v for k, v in ctx.params.items() if k in settings and v is not None}
    options = {k: v for k, v in ctx.params.items() if k not in settings and k != "resume"}
    if resume is None:
        _train_new(overrides, options)
    else:
        _train_resumed(resume, overrides, tracking_uri, state_min_seconds)


def _train_resumed(run_id: str, overrides: dict, tracking_uri: str | None, state_min_seconds: float) -> None:
    """Continue run ``run_id`` from its last saved epoch, as its recorded configuration says (no setting
    may be given beside it)."""
    if overrides:
        flags = ", ".join("--" + k.replace("_", "-") for k in overrides)
        raise UserError(f"--resume continues the run's recorded configuration; drop {flags}")
    from ..commands.train import resume as resume_run

    resume_run(run_id, tracking_uri=tracking_uri, console=console, state_min_seconds=state_min_seconds)


def _train_new(overrides: dict, options: dict) -> None:
    """A new run of the given settings; they and the data files are checked before torch and MLflow
    load (seconds), so bad input answers at once, in one line."""
    from cvstudy.trainers.data import load_dataset

    dataset = load_dataset(*TrainConfig.from_flat(overrides).split)
    from ..commands.train import train as run_train

    run_train(overrides, console=console, data=dataset, **options)


# The sweep's flags, declared once here so that the command's signature reads one line per flag.
_SWEEP = {
    "model": typer.Option(None, "--model", metavar="MODEL", help="Picks studies/<model>.yaml (default resnet50)."),
    "study_file": typer.Option(None, "--study-file", metavar="PATH", help="A study YAML file (overrides --model's)."),
    "study": typer.Option(
        None,
        "--study",
        metavar="STUDY",
        help="Study name (default: the study file's name); also the MLflow experiment.",
    ),
    "trials": typer.Option(
        None, "--trials", metavar="N", help="Target number of trials in the study; rerunning resumes until reached."
    ),
    "timeout": typer.Option(
        None, "--timeout", metavar="SECONDS", help="Stop starting new trials after this many seconds."
    ),
    "storage": typer.Option(
        None,
        "--storage",
        metavar="URL",
        help="Optuna storage URL (default sqlite:///optuna.db beside mlflow.db; e.g. "
        "postgresql://user:pw@host/db to share a study across machines).",
    ),
    "pruner": typer.Option(
        None,
        "--pruner",
        metavar="[hyperband|median|none]",
        help="hyperband | median | none (default: the study file's).",
    ),
    "sampler": typer.Option(
        None, "--sampler", metavar="[tpe|random|grid]", help="tpe | random | grid (default: the study file's)."
    ),
    "devices": typer.Option(
        None,
        "--devices",
        metavar="DEVICES",
        help="Comma-separated devices, e.g. cuda:0,cuda:1 (default: every visible GPU, else the CPU).",
    ),
    "workers": typer.Option(
        None, "--workers", metavar="N", help="Number of workers (first N GPUs; on CPU, N processes)."
    ),
    "trials_per_device": typer.Option(
        None,
        "--trials-per-device",
        metavar="N",
        help="Workers per device: up to N trials train on one device at once "
        "(default: the study file's, else 1). On the CPU the workers split its cores.",
    ),
    "seed": typer.Option(
        None, "--seed", metavar="N", help="Seeds the sampler (per worker: seed + worker index) and training."
    ),
    "tracking_uri": typer.Option(
        None,
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).",
    ),
    "set_": typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help="Fix a setting for every trial, e.g. --set pretrained=false (removes it "
        "from the search space). Repeatable.",
    ),
    "warm_start": typer.Option(
        None,
        "--warm-start",
        metavar="STUDY[:K]",
        help="Enqueue the K best (default 3) complete trials of another study in the same storage as this "
        "study's first trials (the keys this study searches; values outside its space are refused). Once "
        "per source study.",
    ),
    "keep_checkpoints": typer.Option(
        None,
        "--keep-checkpoints",
        metavar="N",
        help="Keep the checkpoints of the best N complete trials (default: the "
        "study file's, else 3); delete the others'.",
    ),
    "repeats": typer.Option(
        None,
        "--repeats",
        metavar="N",
        help="Training seeds per trial (default: the study file's, else 1); the objective "
        "is over seeds, each seed a nested MLflow run.",
    ),
    "state_every": typer.Option(
        None,
        "--state-every",
        metavar="N",
        help="Write each trial's resume state every N epochs (default: the study "
        "file's, else 1); the newest is also written on SIGTERM.",
    ),
    "state_min_seconds": typer.Option(
        None,
        "--state-min-seconds",
        metavar="SECONDS",
        help="...but at most once per this many seconds (default: the study file's, else 60; 0: every N epochs).",
    ),
    "offline": typer.Option(False, "--offline", help=OFFLINE_HELP),
    "slurm": typer.Option(
        False,
        "--slurm",
        help="Submit the workers to SLURM as one job array (run from the login node) instead of training here.",
    ),
    "slurm_tasks": typer.Option(1, "--slurm-tasks", metavar="N", help="With --slurm: array tasks, one worker each."),
    "slurm_partition": typer.Option(None, "--slurm-partition", metavar="NAME", help="With --slurm: the partition."),
    "slurm_gpus_per_task": typer.Option(
        0, "--slurm-gpus-per-task", metavar="N", help="With --slurm: GPUs per task (0: train on the task's CPUs)."
    ),
    "slurm_cpus_per_task": typer.Option(
        None, "--slurm-cpus-per-task", metavar="N", help="With --slurm: CPUs per task."
    ),
    "slurm_time": typer.Option(
        None, "--slurm-time", metavar="TIME", help="With --slurm: time limit per task (HH:MM:SS, D-HH:MM:SS)."
    ),
    "slurm_signal_before": typer.Option(
        300,
        "--slurm-signal-before",
        metavar="SECONDS",
        help="With --slurm: seconds before the time limit at which SLURM sends "
        "SIGTERM (the trial's state is saved, the task requeued).",
    ),
    "sbatch": typer.Option(
        [],
        "--sbatch",
        metavar="OPTION",
        help="With --slurm: an extra sbatch option, passed through verbatim, e.g. --sbatch=--account=lab. Repeatable.",
    ),
}


@app.command()
@handled
def sweep(
    model: Optional[str] = _SWEEP["model"],
    study_file: Optional[str] = _SWEEP["study_file"],
    study: Optional[str] = _SWEEP["study"],
    trials: Optional[int] = _SWEEP["trials"],
    timeout: Optional[float] = _SWEEP["timeout"],
    storage: Optional[str] = _SWEEP["storage"],
    pruner: Optional[str] = _SWEEP["pruner"],
    sampler: Optional[str] = _SWEEP["sampler"],
    devices: Optional[str] = _SWEEP["devices"],
    workers: Optional[int] = _SWEEP["workers"],
    trials_per_device: Optional[int] = _SWEEP["trials_per_device"],
    epochs: Optional[int] = _opt("epochs", "--epochs", metavar="N"),
    data: Optional[str] = _opt("data", "--data", metavar="PATH"),
    seed: Optional[int] = _SWEEP["seed"],
    tracking_uri: Optional[str] = _SWEEP["tracking_uri"],
    set_: list[str] = _SWEEP["set_"],
    keep_checkpoints: Optional[int] = _SWEEP["keep_checkpoints"],
    warm_start: Optional[str] = _SWEEP["warm_start"],
    repeats: Optional[int] = _SWEEP["repeats"],
    state_every: Optional[int] = _SWEEP["state_every"],
    state_min_seconds: Optional[float] = _SWEEP["state_min_seconds"],
    offline: bool = _SWEEP["offline"],
    slurm: bool = _SWEEP["slurm"],
    slurm_tasks: int = _SWEEP["slurm_tasks"],
    slurm_partition: Optional[str] = _SWEEP["slurm_partition"],
    slurm_gpus_per_task: int = _SWEEP["slurm_gpus_per_task"],
    slurm_cpus_per_task: Optional[int] = _SWEEP["slurm_cpus_per_task"],
    slurm_time: Optional[str] = _SWEEP["slurm_time"],
    slurm_signal_before: int = _SWEEP["slurm_signal_before"],
    sbatch: list[str] = _SWEEP["sbatch"],
):
    """Run or resume an Optuna study: each trial trains through the shared core and logs an MLflow run."""
    given = dict(locals())  # the flags, before anything else is named here
    from ..commands.sweep import SweepFlags, sweep_command  # the study file and flags are checked before torch loads

    outcome = sweep_command(SweepFlags(**given), console)
    if outcome.all_failed:
        from ..errors import TrialsFailed
        from ..tracking.schema import Tag

        first = outcome.failed_errors[0].splitlines()[0][:300] if outcome.failed_errors[0] else "no error recorded"
        raise TrialsFailed(
            f"every trial this sweep ran failed ({outcome.added}); the first: {first} "
            f"(each run's error is in MLflow, tag {Tag.ERROR})"
        )


@app.command()
@handled
def report(
    studies: Optional[list[str]] = typer.Argument(
        None, metavar="STUDY", help="Study names (default: every study in the storage)."
    ),
    storage: Optional[str] = typer.Option(
        None, "--storage", metavar="URL", help="Optuna storage URL (default: optuna.db beside mlflow.db)."
    ),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", metavar="URI", help="MLflow tracking URI."),
    out: Optional[str] = typer.Option(
        None, "--out", metavar="PATH", help="Output directory (default reports/<study>[+<study>...])."
    ),
    top: int = typer.Option(10, "--top", metavar="N", help="Trials in the leaderboard."),
    table: bool = typer.Option(
        False, "--table", help="Also print the paper table (model x pretrained; written as table.md/.csv/.tex)."
    ),
):
    """Leaderboards, grouped results, confusion matrix and Optuna plots, as a table, HTML, Markdown and CSV."""
    from ..commands.report import report as run_report

    result = run_report(
        studies or [], storage_url=storage, tracking_uri=tracking_uri, out=out, top=top, console=console, table=table
    )
    if result.problems:
        err_console.print(
            f"[red]{len(result.problems)} Optuna/MLflow mismatch(es)[/], listed in {result.paths['md']}",
            highlight=False,
        )
        raise typer.Exit(1)


@app.command()
@handled
def confirm(
    study: str = typer.Argument(..., metavar="STUDY", help="The study whose best configurations to retrain."),
    top: int = typer.Option(
        3, "--top", metavar="N", help="Retrain the N best complete trials (plus the study's baseline trial)."
    ),
    seeds: int = typer.Option(
        5, "--seeds", metavar="N", help="Fresh training seeds per configuration (the same seeds for each: paired)."
    ),
    device: str = typer.Option(
        "auto", "--device", metavar="DEVICE", help="Device to train on: auto, cpu, cuda, cuda:N."
    ),
    storage: Optional[str] = typer.Option(
        None, "--storage", metavar="URL", help="Optuna storage URL (default: optuna.db beside mlflow.db)."
    ),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", metavar="URI", help="MLflow tracking URI."),
):
    """Retrain a study's winners with fresh seeds: mean, std and 95 % interval per configuration, and paired
    tests between them. Logged to the MLflow experiment <study>-confirm; rerun to resume."""
    from ..commands.confirm import confirm as run_confirm

    run_confirm(
        study, top=top, seeds=seeds, storage_url=storage, tracking_uri=tracking_uri, device=device, console=console
    )


@app.command()
@handled
def predict(
    run_id: Optional[str] = typer.Option(
        None, "--run-id", metavar="RUN_ID", help="MLflow run whose checkpoint to use."
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        metavar="MODEL_URI",
        help="A registered model: models:/NAME/VERSION or models:/NAME@ALIAS (a sweep registers models:/<study>@best).",
    ),
    study: Optional[str] = typer.Option(
        None, "--study", metavar="STUDY", help="Use this study's best trial (with --best)."
    ),
    best: bool = typer.Option(False, "--best", help="Pick the best trial of --study."),
    storage: Optional[str] = typer.Option(
        None, "--storage", metavar="URL", help="Optuna storage URL (default: optuna.db beside mlflow.db)."
    ),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", metavar="URI", help="MLflow tracking URI."),
    data: Optional[str] = typer.Option(
        None, "--data", metavar="PATH", help="Dataset directory (default: the run's own)."
    ),
    out: Optional[str] = typer.Option(
        None, "--out", metavar="PATH", help="CSV to write (default predictions-<run>.csv)."
    ),
):
    """Predict the test split with a logged checkpoint; write a CSV; check the logged metrics."""
    from ..commands.predict import predict as run_predict

    if sum(x is not None for x in (run_id, study, model)) != 1 or (study is not None and not best):
        raise UserError("pass one of --run-id ID, --study NAME --best, or --model models:/NAME/VERSION")
    if model is not None and not model.startswith("models:/"):
        raise UserError(f"--model {model!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    run_predict(
        run_id=run_id,
        study=study,
        storage_url=storage,
        tracking_uri=tracking_uri,
        data=data,
        out=out,
        model_uri=model,
        console=console,
    )


@app.command()
@handled
def export(
    model: str = typer.Argument(
        ..., metavar="RUN", help="A run id, STUDY@best, or a registered model (models:/NAME@ALIAS or /VERSION)."
    ),
    format: str = typer.Option("onnx", "--format", metavar="[onnx]", help="The model format."),
    out: Optional[str] = typer.Option(None, "--out", metavar="PATH", help="File to write (default model-<run>.onnx)."),
    storage: Optional[str] = typer.Option(
        None,
        "--storage",
        metavar="URL",
        help="Optuna storage URL, for STUDY@best (default: optuna.db beside mlflow.db).",
    ),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", metavar="URI", help="MLflow tracking URI."),
    data: Optional[str] = typer.Option(
        None, "--data", metavar="PATH", help="Dataset whose test images check the export (default: the run's own)."
    ),
):
    """Export a logged checkpoint as ONNX (preprocessing inside), checked against PyTorch with onnxruntime on
    the test images, and logged to its run."""
    from ..commands.export import FORMATS

    if format not in FORMATS:
        raise UserError(f"--format {format!r}: cvstudy exports {', '.join(FORMATS)}")
    from ..commands.export import export as run_export

    run_export(model, format, out, tracking_uri=tracking_uri, storage_url=storage, data=data, console=console)


@app.command()
@handled
def compare(
    a: str = typer.Argument(
        ..., metavar="MODEL_A", help="A run id, STUDY@best, STUDY#N (trial N) or models:/NAME/VERSION."
    ),
    b: str = typer.Argument(..., metavar="MODEL_B", help="The other model, named the same ways."),
    storage: Optional[str] = typer.Option(
        None, "--storage", metavar="URL", help="Optuna storage URL (default: optuna.db beside mlflow.db)."
    ),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", metavar="URI", help="MLflow tracking URI."),
):
    """Two models on the same test images: McNemar's exact test for accuracy, a paired bootstrap interval of
    each metric's difference, and the images each got right that the other did not."""
    from ..commands.compare import compare as run_compare

    run_compare(a, b, storage_url=storage, tracking_uri=tracking_uri, console=console)


@data_app.command("check")
@handled
def data_check(
    directory: Optional[str] = typer.Argument(
        None, metavar="DIRECTORY", help="Dataset directory (default ./data, else the demo set)."
    ),
    out: Optional[str] = typer.Option(
        None, "--out", metavar="PATH", help="Sample grid PNG (default reports/data/samples.png)."
    ),
):
    """Validate a dataset like training does; print shapes and class counts; draw samples per class."""
    from ..commands.datacheck import data_check as run_check

    run_check(directory, out=out, console=console)


@weights_app.command("pull")
@handled
def weights_pull(
    models: list[str] = typer.Argument(..., metavar="MODEL", help="Model names or aliases, e.g. resnet50 vit_s16."),
):
    """Download the models' default pretrained weights into the Hugging Face cache (for offline machines)."""
    from ..commands.weights import pull

    pull(models, console=console)


@weights_app.command("list")
@handled
def weights_list():
    """What the Hugging Face cache holds, for which model alias, with sizes."""
    from ..commands.weights import list_cached

    list_cached(console=console)


@storage_app.command("check")
@handled
def storage_check(
    journal: str = typer.Argument(..., metavar="JOURNAL", help="The journal file (PATH of journal:///PATH)."),
):
    """List the journal's damaged records (byte offset, length, what is wrong); exit 1 if there are any."""
    from ..commands.storage import check_journal

    if check_journal(journal, console=console):
        raise typer.Exit(1)


@storage_app.command("repair")
@handled
def storage_repair(
    journal: str = typer.Argument(..., metavar="JOURNAL", help="The journal file (PATH of journal:///PATH)."),
):
    """Keep a backup, then set the damaged records aside so that the study reads again."""
    from ..commands.storage import repair_journal

    repair_journal(journal, console=console)


@app.callback()
def _options(
    debug: bool = typer.Option(
        False, "--debug", help=f"Show the traceback of an internal error (as {DEBUG_ENV}=1; workers inherit it)."
    ),
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
