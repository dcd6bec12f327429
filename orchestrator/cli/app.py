"""The ``cvstudy`` command line. Thin: each command parses its flags, then calls one function.

Exit codes: 0 done; 1 ``report`` found Optuna and MLflow disagreeing (after writing the report, which
lists the mismatches), or an internal error (a bug in cvstudy or a library: one line, ``--debug`` or
CVSTUDY_DEBUG=1 for the traceback); 2 bad input or configuration (one line naming the file or setting,
no traceback, nothing half-written); 3 a store, server or file system that failed (unreachable, locked,
full, read-only); 130 interrupted (Ctrl-C or SIGTERM; the running MLflow run is marked KILLED).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import shutil
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from trainers.config import AUG_OPS, TrainConfig
from trainers.errors import CvstudyError

from .. import sqlite_files
from ..boundaries import redact_text
from ..errors import CheckFailed, UserError, disk_full
from ..processes import interrupt
from ..sweep.study import SET_BY_SWEEP, load_study_spec, resolve_study_file

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
DOCS = TrainConfig.field_docs()
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
    return typer.Option(None, *names, help=DOCS.get(key, ""), show_default=False, **kw)


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


def config_options() -> list[inspect.Parameter]:
    """One optional flag per TrainConfig field, typed from its annotation, its docstring as help:
    generated, so no field can lack a flag and no flag can drift from its field."""
    types = {"str": str, "int": int, "float": float, "bool": bool}
    defaults = TrainConfig().to_flat()
    params = []
    for key, annotation in TrainConfig.annotations().items():
        kind = types[annotation.split(" ")[0]]
        flag = "--" + key.replace("_", "-")
        decl = f"{flag}/--no-{key.replace('_', '-')}" if kind is bool else flag
        option = typer.Option(
            None,
            decl,
            help=DOCS.get(key, "") + _default_said(key, defaults[key]),
            show_default=False,
            metavar=METAVARS.get(kind),
        )
        params.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[kind]))
    return params


# Each command imports its implementation when it runs: that defers torch, MLflow and Optuna (several
# seconds), so `cvstudy --help` and shell completion answer at once.


def _train(**flags):
    """Train one model on one dataset and record the run in MLflow."""
    options = {k: flags.pop(k) for k in ("experiment", "tracking_uri", "run_name", "offline", "state_min_seconds")}
    resume_id = flags.pop("resume")
    overrides = {k: v for k, v in flags.items() if v is not None}
    if resume_id is not None:
        if overrides:
            flags = ", ".join("--" + k.replace("_", "-") for k in overrides)
            raise UserError(f"--resume continues the run's recorded configuration; drop {flags}")
        from ..commands.train import resume

        resume(
            resume_id,
            tracking_uri=options["tracking_uri"],
            console=console,
            state_min_seconds=options["state_min_seconds"],
        )
        return
    # The settings and the data files are checked before torch and MLflow load (seconds): bad input
    # answers at once, in one line.
    from trainers.data import load_dataset

    data = load_dataset(*TrainConfig.from_flat(overrides).split)
    from ..commands.train import train as run_train

    run_train(overrides, console=console, data=data, **options)


_train_extra = [
    inspect.Parameter(
        "experiment",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=str,
        default=typer.Option("cvstudy-train", metavar="NAME", help="MLflow experiment name."),
    ),
    inspect.Parameter(
        "tracking_uri",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=Optional[str],
        default=typer.Option(
            None,
            metavar="URI",
            help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).",
        ),
    ),
    inspect.Parameter(
        "run_name",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=Optional[str],
        default=typer.Option(None, metavar="NAME", help="MLflow run name (default: model-aug-loss-lr)."),
    ),
    inspect.Parameter(
        "offline",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=bool,
        default=typer.Option(False, "--offline", help=OFFLINE_HELP),
    ),
    inspect.Parameter(
        "state_min_seconds",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=float,
        default=typer.Option(
            60.0,
            min=0,
            metavar="SECONDS",
            help="Write the run's resume state after an epoch at most once "
            "per this many seconds (the newest is always written on Ctrl-C/SIGTERM).",
        ),
    ),
    inspect.Parameter(
        "resume",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=Optional[str],
        default=typer.Option(
            None,
            "--resume",
            metavar="RUN_ID",
            help="Continue an interrupted run from its last saved epoch, in the same MLflow run.",
        ),
    ),
]
_TRAIN_SIGNATURE = inspect.Signature(config_options() + _train_extra)
setattr(_train, "__signature__", _TRAIN_SIGNATURE)  # Typer reads the generated flags from here  # noqa: B010
_train.__annotations__ = {p.name: p.annotation for p in _TRAIN_SIGNATURE.parameters.values()}
app.command("train")(handled(_train))


# The sweep's flags, declared once here so that the command's signature reads one line per flag.
_SWEEP = {
    "model": typer.Option(None, metavar="MODEL", help="Picks studies/<model>.yaml (default resnet50)."),
    "study_file": typer.Option(None, metavar="PATH", help="A study YAML file (overrides --model's)."),
    "study": typer.Option(
        None, metavar="STUDY", help="Study name (default: the study file's name); also the MLflow experiment."
    ),
    "trials": typer.Option(
        None, metavar="N", help="Target number of trials in the study; rerunning resumes until reached."
    ),
    "timeout": typer.Option(None, metavar="SECONDS", help="Stop starting new trials after this many seconds."),
    "storage": typer.Option(
        None,
        metavar="URL",
        help="Optuna storage URL (default sqlite:///optuna.db beside mlflow.db; e.g. "
        "postgresql://user:pw@host/db to share a study across machines).",
    ),
    "pruner": typer.Option(
        None, metavar="[hyperband|median|none]", help="hyperband | median | none (default: the study file's)."
    ),
    "sampler": typer.Option(None, metavar="[tpe|random|grid]", help="tpe | random | grid (default: the study file's)."),
    "devices": typer.Option(
        None,
        metavar="DEVICES",
        help="Comma-separated devices, e.g. cuda:0,cuda:1 (default: every visible GPU, else the CPU).",
    ),
    "workers": typer.Option(None, metavar="N", help="Number of workers (first N GPUs; on CPU, N processes)."),
    "trials_per_device": typer.Option(
        None,
        metavar="N",
        help="Workers per device: up to N trials train on one device at once "
        "(default: the study file's, else 1). On the CPU the workers split its cores.",
    ),
    "seed": typer.Option(None, metavar="N", help="Seeds the sampler (per worker: seed + worker index) and training."),
    "tracking_uri": typer.Option(
        None, metavar="URI", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)."
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
        metavar="N",
        help="Keep the checkpoints of the best N complete trials (default: the "
        "study file's, else 3); delete the others'.",
    ),
    "repeats": typer.Option(
        None,
        metavar="N",
        help="Training seeds per trial (default: the study file's, else 1); the objective "
        "is over seeds, each seed a nested MLflow run.",
    ),
    "state_every": typer.Option(
        None,
        metavar="N",
        help="Write each trial's resume state every N epochs (default: the study "
        "file's, else 1); the newest is also written on SIGTERM.",
    ),
    "state_min_seconds": typer.Option(
        None,
        metavar="SECONDS",
        help="...but at most once per this many seconds (default: the study file's, else 60; 0: every N epochs).",
    ),
    "offline": typer.Option(False, "--offline", help=OFFLINE_HELP),
    "slurm": typer.Option(
        False,
        "--slurm",
        help="Submit the workers to SLURM as one job array (run from the login node) instead of training here.",
    ),
    "slurm_tasks": typer.Option(1, metavar="N", help="With --slurm: array tasks, one worker each."),
    "slurm_partition": typer.Option(None, metavar="NAME", help="With --slurm: the partition."),
    "slurm_gpus_per_task": typer.Option(
        0, metavar="N", help="With --slurm: GPUs per task (0: train on the task's CPUs)."
    ),
    "slurm_cpus_per_task": typer.Option(None, metavar="N", help="With --slurm: CPUs per task."),
    "slurm_time": typer.Option(None, metavar="TIME", help="With --slurm: time limit per task (HH:MM:SS, D-HH:MM:SS)."),
    "slurm_signal_before": typer.Option(
        300,
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
    run_sweep_command(SweepFlags(**locals()))


def run_sweep_command(f: SweepFlags) -> None:
    """Check the flags, apply them to the study file, and run the sweep here or launch it on SLURM."""
    if f.trials is not None and f.trials < 1:
        raise UserError(f"--trials is the study's target number of trials: at least 1; got {f.trials}")
    if f.timeout is not None and not f.timeout > 0:
        raise UserError(f"--timeout is in seconds and must be > 0; got {f.timeout}")
    cli = _sweep_overrides(f.set_, epochs=f.epochs, data=f.data, seed=f.seed)
    if f.data is not None:
        from trainers.data import resolve_data_dir  # numpy only: refused before torch and MLflow load

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
        launch = _slurm_launcher(spec.path, flags, f)
    elif (
        f.slurm_tasks != 1
        or f.sbatch
        or f.slurm_partition
        or f.slurm_time
        or f.slurm_gpus_per_task
        or f.slurm_cpus_per_task
    ):
        raise UserError("--slurm-* and --sbatch options need --slurm")
    from ..sweep.manager import sweep as run_sweep  # deferred: torch, MLflow and Optuna take seconds to import

    run_sweep(
        spec,
        study_name=f.study,
        trials=f.trials,
        timeout=f.timeout,
        storage_url=f.storage,
        devices=f.devices,
        workers=f.workers,
        tracking_uri=f.tracking_uri,
        cli=cli,
        seed=0 if f.seed is None else f.seed,
        keep_checkpoints=f.keep_checkpoints,
        offline=f.offline,
        warm_start=f.warm_start,
        console=console,
        launch=launch,
    )


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


def _sweep_spec(model: str | None, study_file: str | None, cli: dict, keep_checkpoints: int | None, **flags):
    """The study file with the command line's settings applied (the spec checks itself again)."""
    spec = load_study_spec(resolve_study_file(model, study_file))
    if keep_checkpoints is not None and keep_checkpoints < 1:
        raise UserError(f"--keep-checkpoints must be >= 1; got {keep_checkpoints}")
    changes = {k: v for k, v in flags.items() if v is not None}
    return dataclasses.replace(spec, space=tuple(d for d in spec.space if d.name not in cli), **changes)


def _slurm_launcher(study_path: Path, flags: dict, f: SweepFlags):
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


@app.command()
@handled
def report(
    studies: Optional[list[str]] = typer.Argument(None, help="Study names (default: every study in the storage)."),
    storage: Optional[str] = typer.Option(
        None, metavar="URL", help="Optuna storage URL (default: optuna.db beside mlflow.db)."
    ),
    tracking_uri: Optional[str] = typer.Option(None, metavar="URI", help="MLflow tracking URI."),
    out: Optional[str] = typer.Option(
        None, metavar="PATH", help="Output directory (default reports/<study>[+<study>...])."
    ),
    top: int = typer.Option(10, metavar="N", help="Trials in the leaderboard."),
    table: bool = typer.Option(
        False, "--table", help="Also print the paper table (model x pretrained; written as table.md/.csv/.tex)."
    ),
):
    """Leaderboards, grouped results, confusion matrix and Optuna plots, as a table, HTML, Markdown and CSV."""
    from ..report.writer import report as run_report

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
    study: str = typer.Argument(..., help="The study whose best configurations to retrain."),
    top: int = typer.Option(
        3, metavar="N", help="Retrain the N best complete trials (plus the study's baseline trial)."
    ),
    seeds: int = typer.Option(
        5, metavar="N", help="Fresh training seeds per configuration (the same seeds for each: paired)."
    ),
    device: str = typer.Option("auto", metavar="DEVICE", help="Device to train on: auto, cpu, cuda, cuda:N."),
    storage: Optional[str] = typer.Option(
        None, metavar="URL", help="Optuna storage URL (default: optuna.db beside mlflow.db)."
    ),
    tracking_uri: Optional[str] = typer.Option(None, metavar="URI", help="MLflow tracking URI."),
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
    run_id: Optional[str] = typer.Option(None, metavar="RUN_ID", help="MLflow run whose checkpoint to use."),
    model: Optional[str] = typer.Option(
        None,
        metavar="MODEL_URI",
        help="A registered model: models:/NAME/VERSION or models:/NAME@ALIAS (a sweep registers models:/<study>@best).",
    ),
    study: Optional[str] = typer.Option(None, metavar="STUDY", help="Use this study's best trial (with --best)."),
    best: bool = typer.Option(False, "--best", help="Pick the best trial of --study."),
    storage: Optional[str] = typer.Option(
        None, metavar="URL", help="Optuna storage URL (default: optuna.db beside mlflow.db)."
    ),
    tracking_uri: Optional[str] = typer.Option(None, metavar="URI", help="MLflow tracking URI."),
    data: Optional[str] = typer.Option(None, metavar="PATH", help="Dataset directory (default: the run's own)."),
    out: Optional[str] = typer.Option(None, metavar="PATH", help="CSV to write (default predictions-<run>.csv)."),
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
def compare(
    a: str = typer.Argument(..., help="A run id, STUDY@best, STUDY#N (trial N) or models:/NAME/VERSION."),
    b: str = typer.Argument(..., help="The other model, named the same ways."),
    storage: Optional[str] = typer.Option(
        None, metavar="URL", help="Optuna storage URL (default: optuna.db beside mlflow.db)."
    ),
    tracking_uri: Optional[str] = typer.Option(None, metavar="URI", help="MLflow tracking URI."),
):
    """Two models on the same test images: McNemar's exact test for accuracy, a paired bootstrap interval of
    each metric's difference, and the images each got right that the other did not."""
    from ..commands.compare import compare as run_compare

    run_compare(a, b, storage_url=storage, tracking_uri=tracking_uri, console=console)


@data_app.command("check")
@handled
def data_check(
    directory: Optional[str] = typer.Argument(None, help="Dataset directory (default ./data, else the demo set)."),
    out: Optional[str] = typer.Option(None, metavar="PATH", help="Sample grid PNG (default reports/data/samples.png)."),
):
    """Validate a dataset like training does; print shapes and class counts; draw samples per class."""
    from ..commands.datacheck import data_check as run_check

    run_check(directory, out=out, console=console)


@weights_app.command("pull")
@handled
def weights_pull(
    models: list[str] = typer.Argument(..., help="Model names or aliases, e.g. resnet50 vit_s16."),
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
    journal: str = typer.Argument(..., help="The journal file (PATH of journal:///PATH)."),
):
    """List the journal's damaged records (byte offset, length, what is wrong); exit 1 if there are any."""
    from ..commands.storage import check_journal

    if check_journal(journal, console=console):
        raise typer.Exit(1)


@storage_app.command("repair")
@handled
def storage_repair(
    journal: str = typer.Argument(..., help="The journal file (PATH of journal:///PATH)."),
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
