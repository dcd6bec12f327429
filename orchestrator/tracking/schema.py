"""The data contract between cvstudy, MLflow and Optuna, named once.

Every MLflow tag key, run role and run outcome cvstudy writes or reads, every Optuna trial and study
user attribute, and every MLflow search filter is spelled here and nowhere else (a test greps for
strays). Change a name here and every writer and reader changes with it.

- ``Tag``: MLflow run tags (``cvstudy.*`` plus the few ``mlflow.*`` system tags cvstudy sets).
- ``Role``: the value of ``Tag.ROLE``, what a run is (study, trial, seed, confirmation levels).
- ``OUTCOMES``: how a trial or run ended -> its MLflow status and ``Tag.TRIAL_STATE``.
- ``TrialAttr`` / ``StudyAttr``: Optuna user attributes on trials and studies.
- ``run_filter``: MLflow search filters over tags, values quoted.
- ``logged_name`` / ``cvstudy_name``: a metric's name in MLflow (``val/balanced_accuracy``, in a section
  of MLflow's charts) and in cvstudy (``val_balanced_accuracy``: study files, history rows, reports).
"""

from __future__ import annotations

from typing import NamedTuple

from cvstudy.trainers.config import COST_METRICS

PREFIX = "cvstudy"


class Tag:
    """MLflow run (and model version) tags."""

    # what the run is, and where it belongs
    ROLE = f"{PREFIX}.role"
    STUDY = f"{PREFIX}.study"
    COMMAND = f"{PREFIX}.command"
    TRIAL_NUMBER = f"{PREFIX}.trial_number"
    TRIAL = f"{PREFIX}.trial"  # on a registered model version: the trial it came from
    TRIAL_STATE = f"{PREFIX}.trial_state"
    RETRY_OF_TRIAL = f"{PREFIX}.retry_of_trial"
    REPEATS = f"{PREFIX}.repeats"
    SEED = f"{PREFIX}.seed"
    SEEDS = f"{PREFIX}.seeds"
    STORAGE = f"{PREFIX}.storage"
    SLURM_TASK = f"{PREFIX}.slurm_task"
    SLURM_JOBS = f"{PREFIX}.slurm_jobs"
    # provenance
    GIT_SHA = f"{PREFIX}.git_sha"
    TORCH_VERSION = f"{PREFIX}.torch_version"
    TIMM_VERSION = f"{PREFIX}.timm_version"
    PYTHON = f"{PREFIX}.python"
    HOST = f"{PREFIX}.host"
    PID = f"{PREFIX}.pid"
    DEVICE = f"{PREFIX}.device"
    MODEL = f"{PREFIX}.model"
    DATA = f"{PREFIX}.data"
    WEIGHTS = f"{PREFIX}.weights"
    WEIGHTS_ORIGIN = f"{PREFIX}.weights_origin"
    IMG_SIZE = f"{PREFIX}.img_size"
    AMP_DTYPE = f"{PREFIX}.amp_dtype"  # what ran: bfloat16 (autocast) or float32
    MEMORY_FORMAT = f"{PREFIX}.memory_format"  # channels_last or contiguous
    COMPILED = f"{PREFIX}.compiled"  # true (torch.compile) or false (eager)
    DATA_ON = f"{PREFIX}.data_on"  # where the train images stayed: device, or host (each batch copied over)
    # how it ended
    ERROR = f"{PREFIX}.error"
    STOP_REASON = f"{PREFIX}.stop_reason"
    PRUNED_AT_EPOCH = f"{PREFIX}.pruned_at_epoch"
    OBJECTIVE = f"{PREFIX}.objective"
    BEST_TRIAL = f"{PREFIX}.best_trial"
    BEST_RUN_ID = f"{PREFIX}.best_run_id"
    # the checkpoint, as an MLflow logged model
    CHECKPOINT = f"{PREFIX}.checkpoint"
    """``kept``, or ``deleted: <why>`` once checkpoint retention removed it."""
    MODEL_ID = f"{PREFIX}.model_id"
    MODEL_SHA256 = f"{PREFIX}.model_sha256"
    """Hex SHA-256 of the logged model's ``model.safetensors``, checked before it is used."""
    CHECKPOINT_RUN_ID = f"{PREFIX}.checkpoint_run_id"
    """On a trial run with repeats: the seed run that keeps the trial's checkpoint."""
    # resume states
    STATE = f"{PREFIX}.state"
    """Artifact path of the run's current resume state (a directory holding ``state.safetensors``)."""
    STATE_EPOCH = f"{PREFIX}.state_epoch"
    """Epochs the current state has completed."""
    STATE_SHA256 = f"{PREFIX}.state_sha256"
    """Hex SHA-256 of the current state's file, set with ``STATE``, checked before the run resumes."""
    RESUMES = f"{PREFIX}.resumes"
    """How many times the run was continued from a state."""
    WARM_START = f"{PREFIX}.warm_start"
    """On a trial enqueued by ``--warm-start``: ``SOURCE_STUDY/TRIAL_NUMBER`` it came from."""
    SUPERSEDED_BY = f"{PREFIX}.superseded_by"
    """On a superseded run: the run that replaced it (its trial's retry, trained afresh)."""
    # confirmations
    CONFIRMS_TRIAL = f"{PREFIX}.confirms_trial"
    BASELINE = f"{PREFIX}.baseline"
    PARAMS = f"{PREFIX}.params"
    TRIAL_RUN_ID = f"{PREFIX}.trial_run_id"
    STUDY_RUN_ID = f"{PREFIX}.study_run_id"
    # MLflow's own tags that cvstudy sets
    PARENT_RUN_ID = "mlflow.parentRunId"
    NOTE = "mlflow.note.content"
    GIT_COMMIT = "mlflow.source.git.commit"
    DATA_CONTEXT = "mlflow.data.context"  # on a dataset input: train, val or test
    EXPERIMENT_KIND = "mlflow.experimentKind"  # on an experiment
    SAVED_VIEW = "mlflow.sharedViewState."  # on an experiment, + a key: a view of the UI's runs page

    @staticmethod
    def saved_view(key: str) -> str:
        """A view of the MLflow UI's runs page saved in the experiment, opened by ``viewStateShareKey=key``."""
        return f"{Tag.SAVED_VIEW}{key}"

    @staticmethod
    def data_digest(split: str) -> str:
        """The content digest of a run's ``split`` (train, val, test)."""
        return f"{PREFIX}.data_digest.{split}"

    @staticmethod
    def check(name: str) -> str:
        """A reviewer's warning that fired (``trainers.loop.reviewer_checks``; a study's, on its parent run)."""
        return f"{PREFIX}.check.{name}"


# MLflow 3's UI opens an experiment in its GenAI view unless the experiment says it is model training.
MODEL_TRAINING = "custom_model_development"  # the value of Tag.EXPERIMENT_KIND


class OnnxMeta:
    """Keys of an exported ONNX model's metadata (``cvstudy export``): where it came from, what it takes."""

    RUN_ID = f"{PREFIX}.run_id"
    INPUT = f"{PREFIX}.input"
    OUTPUT = f"{PREFIX}.output"


class Role:
    """What a run is (``Tag.ROLE``)."""

    STUDY = "study"  # a sweep's parent run
    TRIAL = "trial"  # one Optuna trial
    SEED = "seed"  # one training seed of a trial with repeats, nested under it
    CONFIRM = "confirm"  # a confirmation's parent run
    CONFIRM_CONFIG = "confirm_config"  # one confirmed configuration
    CONFIRM_SEED = "confirm_seed"  # one seed of it
    # An interrupted trial's run (or seed run) that logged epochs its retry could not resume from (no
    # state, or a state of another configuration): kept for the record, out of every trial view.
    SUPERSEDED = "superseded"


class Outcome(NamedTuple):
    run_status: str
    """MLflow run status."""
    trial_state: str
    """The ``Tag.TRIAL_STATE`` tag."""


# How a trial (or a plain `cvstudy train` run) ended -> what its MLflow run says. INTERRUPTED is an
# Optuna FAIL whose parameters were re-queued (Ctrl-C, SIGTERM, a dead worker): nothing was wrong with
# the configuration, so the run is KILLED rather than FAILED.
OUTCOMES = {
    "COMPLETE": Outcome("FINISHED", "COMPLETE"),
    "PRUNED": Outcome("KILLED", "PRUNED"),
    "FAIL": Outcome("FAILED", "FAIL"),
    "INTERRUPTED": Outcome("KILLED", "INTERRUPTED"),
}
PREDICTIONS_ARTIFACT = "test_predictions.json"  # a run's test labels and predictions, image by image
KEPT = "kept"  # Tag.CHECKPOINT of a run whose checkpoint is in the artifact store
DELETED = "deleted"  # the prefix of Tag.CHECKPOINT / Tag.STATE values once removed


class TrialAttr:
    """Optuna trial user attributes."""

    MLFLOW_RUN_ID = "mlflow_run_id"
    WORKER_MEMORY = "worker_memory_mib"
    """The worker's memory once the trial's training ended, MiB: ``host_resident`` (the process's resident
    set) and, on CUDA, ``device_allocated`` and ``device_reserved``. Flat from trial to trial in a
    long-lived worker (bench/scale.py, axis 4)."""
    CONFIG = "config"
    """The flat configuration that trained (after overrides and flags)."""
    BASELINE = "baseline"
    RETRY_OF = "retry_of"
    """The number of the trial this one supersedes (its parameters were re-queued)."""
    RETRIES = "retries"
    RESUME_RUN_ID = "resume_run_id"
    """On a retry: the interrupted trial's MLflow run. The retry continues it (from its saved state, or
    from epoch 0 when it logged no epoch), or else marks it superseded and trains in a new run."""
    RESUME_EPOCH = "resume_epoch"
    """On a retry: the epochs the interrupted run's saved state completed (absent: no state)."""
    HOST = "host"
    PID = "pid"
    DEVICE = "device"
    HEARTBEAT = "heartbeat"
    """Seconds since the epoch, on storages without Optuna's heartbeat (journal)."""
    SLURM_TASK = "slurm_task"
    ERROR = "error"
    SEED_RUN_IDS = "seed_run_ids"
    CHECKPOINT_RUN_ID = "checkpoint_run_id"
    EPOCHS_RUN = "epochs_run"
    SEEDS = "seeds"
    OBJECTIVE_MEAN = "objective_mean"
    OBJECTIVE_STD = "objective_std"

    @staticmethod
    def test(metric: str) -> str:
        """A test metric of the trial's selected checkpoint (mean over seeds with repeats)."""
        return f"test_{metric}"

    @staticmethod
    def test_std(metric: str) -> str:
        return f"test_{metric}_std"

    WARM_START = "warm_start"
    """``SOURCE_STUDY/TRIAL_NUMBER`` of a trial enqueued by ``--warm-start``."""
    PRUNING_TRIAL = "pruning_trial"
    """In a multi-objective study: the number of the trial of the pruning companion study that judged
    this trial's epochs (``sweep.pruning``)."""
    JUDGES_TRIAL = "judges_trial"
    """On a pruning companion's trial: the number of the study's trial whose epochs it judges."""

    # carried over when a trial's parameters are re-queued
    CARRIED = (BASELINE, WARM_START)


class StudyAttr:
    """Optuna study user attributes."""

    OBJECTIVE = "objective"
    """The first objective's metric."""
    OBJECTIVES = "objectives"
    """Every objective's metric, in order (Optuna stores their directions)."""
    PRUNING_FOR = "pruning_for"
    """On a pruning companion study: the multi-objective study it prunes for."""
    REPEATS = "repeats"
    OBJECTIVE_STAT = "objective_stat"
    STUDY_FILE = "study_file"
    PARENT_RUN_ID = "mlflow_parent_run_id"
    REPRODUCES = "reproduces"
    """The published study a study reproduces (its file's ``reproduces``): the report's published columns."""
    WARM_STARTS = "warm_starts"
    """``SOURCE:K`` of each ``--warm-start`` applied, so a rerun enqueues nothing twice."""


def quote(value: str) -> str:
    """A string literal for an MLflow search filter: single quotes, or double quotes when the value
    holds a single quote. MLflow's filter grammar has no escape, so a value holding both is refused."""
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r}: a name with both ' and \" cannot be searched for in MLflow")


def run_filter(**tags: str) -> str:
    """An MLflow search filter matching runs whose tags equal the given values; keys are ``Tag``
    attribute names in lower case (``run_filter(study="resnet50", role=Role.TRIAL)``)."""
    clauses = []
    for name, value in tags.items():
        key = getattr(Tag, name.upper())
        clauses.append(f"tags.`{key}` = {quote(value)}")
    return " and ".join(clauses)


# Metric names. MLflow's charts group metrics into sections by the prefix before a "/": a run's metrics
# are logged as train/..., val/..., test/... and cost/... so a person finds each kind together. cvstudy's
# own names (study files' objectives, history rows, reports) keep the flat spelling. Runs logged before
# sections existed hold the flat names; ``cvstudy_name`` reads both.
SECTIONS = ("val", "test", "train", "cost")  # in the order the MLflow view shows them
COST_SECTION = (*COST_METRICS, "epoch_seconds", "images_per_second")  # what training and inference cost
TRAIN_SECTION = ("lr",)  # per-epoch training values whose names carry no "train_"
BEST = "best_"  # the selected epoch's value (a trial's), or the best trial's (a study's parent run)
SPREAD = "_std"  # the spread over seeds of a value averaged over repeats


def _section(metric: str) -> tuple[str, str]:
    """``(section, name within it)``; section "" for a metric left out of the sections."""
    if metric.removesuffix(SPREAD) in COST_SECTION:
        return "cost", metric
    if metric in TRAIN_SECTION:
        return "train", metric
    for section in ("train", "val", "test"):
        if metric.startswith(f"{section}_"):
            return section, metric[len(section) + 1 :]
    return "", metric


def logged_name(metric: str) -> str:
    """The name MLflow stores a metric under: ``val_balanced_accuracy`` -> ``val/balanced_accuracy``,
    ``best_val_loss`` -> ``val/best_loss``, ``peak_memory_mb`` -> ``cost/peak_memory_mb``; a metric of no
    section (``best_epoch``, ``epochs_run``, ``seeds``) as it is."""
    best = metric.startswith(BEST) and _section(metric.removeprefix(BEST))[0] != ""
    section, name = _section(metric.removeprefix(BEST) if best else metric)
    if not section:
        return metric
    return f"{section}/{BEST if best else ''}{name}"


def cvstudy_name(key: str) -> str:
    """cvstudy's name of a metric MLflow stores as ``key``, sectioned or (runs logged before sections
    existed) flat: the inverse of ``logged_name``."""
    section, slash, name = key.partition("/")
    if not slash or section not in SECTIONS:
        return key
    best = name.startswith(BEST)
    name = name.removeprefix(BEST)
    if section != "cost" and not (section == "train" and name in TRAIN_SECTION):
        name = f"{section}_{name}"
    return f"{BEST}{name}" if best else name


def run_metrics(run) -> dict[str, float]:
    """An MLflow run's latest metric values by cvstudy's names, whichever spelling the run was logged with."""
    return {cvstudy_name(key): value for key, value in run.data.metrics.items()}
