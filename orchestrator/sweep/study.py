"""Study files: a YAML search space and budget over the flat training config.

```yaml
name: resnet50                      # default study name (and MLflow experiment)
objective: val_balanced_accuracy    # an epoch metric: val_balanced_accuracy | val_macro_f1 | val_accuracy | val_loss
direction: maximize                 # optional; val_loss defaults to minimize
# objectives: {val_balanced_accuracy: maximize, gflops: minimize}   # instead of objective/direction:
#                                   # several objectives (the first an epoch metric, the others epoch or
#                                   # cost metrics), each with its direction; pruning uses the first
trials: 30                          # default target; --trials overrides
pruner: hyperband                   # hyperband | median | none
min_epochs: 2                       # pruning never stops a trial before this many epochs
sampler: tpe                        # Optuna's sampler: tpe | random | grid
keep_checkpoints: 3                 # checkpoints kept: those of the best N complete trials
repeats: 1                          # training seeds per trial (seed, seed+1, ...; same validation split)
objective_stat: mean                # with repeats: mean | mean_minus_std (the mean moved one std toward worse)
state_every: 1                      # write a trial's resume state every N epochs (and always on SIGTERM/Ctrl-C)
state_min_seconds: 60               # ... but at most once per this many seconds (a SIGKILL loses at most this)
fixed: {model: resnet50, epochs: 15}          # any TrainConfig key
space:
  lr: {low: 3.0e-4, high: 1.0e-2, log: true}  # float range (int when low/high are ints; step optional)
  aug: [none, basic, original, strong]            # a list is a categorical dimension
overrides:                                    # conditional settings, applied after sampling
  - when: {model: vit_s16}
    set: {lr: 3.0e-5, img_size: 224}
baseline: {lr: 2.0e-3, aug: none}             # a known-good point, run first when the study is new
```
Precedence: TrainConfig defaults < study file (fixed, then sampled, then overrides) < command-line
flags. Unknown keys, impossible ranges and invalid choices are refused with the file's name.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from cvstudy.trainers.config import COST_METRICS, SELECT_METRICS, TrainConfig

from ..errors import ConfigError, StudyError
from ..stats import mean_std

LOCAL_STUDIES = Path("studies")  # a folder of study files in the working directory wins over the shipped ones
SETTINGS = (
    "trials",
    "pruner",
    "min_epochs",
    "sampler",
    "keep_checkpoints",
    "repeats",
    "objective_stat",
    "state_every",
    "state_min_seconds",
    "trials_per_device",
)  # top-level keys that are StudySpec fields of the same name
TOP_KEYS = {
    "name",
    "description",
    "reproduces",
    "objective",
    "direction",
    "objectives",
    "fixed",
    "space",
    "overrides",
    "baseline",
}
PUBLISHED_STUDIES = ("dsba-cv-study",)  # published tables a study may reproduce (report.data.PUBLISHED)
TOP_KEYS |= set(SETTINGS)
# Settings a study cannot choose: the sweep sets them for every trial, so a value here would be ignored.
SET_BY_SWEEP = {
    "device": "the sweep gives each worker its device: use --devices / --workers",
    "select_metric": "checkpoints are selected on the study's objective: set objective",
}
DIRECTIONS = ("maximize", "minimize")
Direction = Literal["maximize", "minimize"]
# What a study may optimise: an epoch metric first (pruning and checkpoint selection work on it each
# epoch), then epoch metrics or cost metrics, all measured on validation or on the model, never on test.
OBJECTIVE_METRICS = (*SELECT_METRICS, *COST_METRICS)
PRUNERS = ("hyperband", "median", "none")
OBJECTIVE_STATS = ("mean", "mean_minus_std")
SAMPLERS = ("tpe", "random", "grid")


@dataclass(frozen=True)
class Dimension:
    name: str
    kind: str
    """float, int or categorical."""
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) of a range dimension."""
        if self.low is None or self.high is None:
            raise StudyError(f"space.{self.name}: a list of choices has no range")
        return self.low, self.high

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            low, high = self.bounds
            return trial.suggest_int(self.name, int(low), int(high), step=int(self.step or 1), log=self.log)
        low, high = self.bounds
        return trial.suggest_float(self.name, low, high, step=self.step, log=self.log)

    def grid_values(self) -> list:
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            low, high = self.bounds
            return list(range(int(low), int(high) + 1, int(self.step or 1)))
        raise StudyError(f"space.{self.name}: the grid sampler needs a list of choices or an int range")

    def contains(self, value) -> bool:
        """Whether the space can sample ``value``: one of the choices, or a number in the range (a
        whole one for an int dimension, on a step where there is one). A study's baseline and a warm
        start's values are checked with it."""
        if self.kind == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        low, high = self.bounds
        if self.kind == "int" and value != int(value):
            return False
        if self.step and not math.isclose((value - low) / self.step, round((value - low) / self.step), abs_tol=1e-9):
            return False  # between two steps
        return low <= value <= high

    def corners(self) -> list:
        """Values that must each give a valid config: every choice, or both ends of a range."""
        return list(self.choices) if self.kind == "categorical" else list(self.bounds)


# A trial with repeats trains its seeds in lockstep (``fit_together``), so every seed's weights,
# gradients, optimiser moments and best-so-far weights are in device memory at once: about 5x the weights
# per seed (25.6 M parameters x 4 bytes x 5 = 0.5 GB for a float32 ResNet-50), plus one batch's
# activations per seed. More seeds are a confirmation's job, which trains them one at a time.
MAX_REPEATS = 8


@dataclass(frozen=True)
class StudySpec:
    name: str
    path: Path
    objective: str = "val_balanced_accuracy"
    """The first objective: what checkpoints are selected on, pruning judges and rankings lead with."""
    direction: Direction = "maximize"
    objectives: tuple[tuple[str, Direction], ...] = ()
    """Every objective with its direction, ``(objective, direction)`` first; empty means just that one.
    With several, the study is multi-objective: Optuna keeps a value per objective and the Pareto front,
    and cvstudy prunes on the first objective itself (``pruning``)."""
    trials: int = 30
    pruner: str = "hyperband"
    min_epochs: int = 2
    sampler: str = "tpe"
    """Optuna's sampler (the class-balancing batch sampler is the training setting class_sampler)."""
    keep_checkpoints: int = 3
    """Checkpoints of the best this-many complete trials stay in the artifact store; others are deleted."""
    repeats: int = 1
    """Training seeds per trial (initialisation, sampling, augmentation; the validation split stays
    fixed). The trial's objective is over its seeds; pruning sees each epoch's mean over seeds."""
    state_every: int = 1
    """A single-seed trial's resume state goes to its run's artifacts every this-many epochs (at most once
    per ``state_min_seconds``); the newest epoch is held in memory and written on SIGTERM or Ctrl-C.
    After a SIGKILL the trial resumes from the last written one. (ResNet-50: 377 MB per write.)"""
    state_min_seconds: float = 60.0
    """Least time between two state writes, in seconds: bounds the time spent writing states to about
    1 % and what a SIGKILL loses to about this much training. 0 writes every ``state_every`` epochs."""
    trials_per_device: int = 1
    """Workers per device: up to this many trials train on one device at once (small images use a
    small share of a large GPU). On the CPU the workers split its cores."""
    objective_stat: str = "mean"
    """mean, or mean_minus_std: the mean moved one standard deviation toward worse (minus when
    maximising, plus when minimising), which favours configurations that are good on every seed."""
    fixed: dict = field(default_factory=dict)
    space: tuple[Dimension, ...] = ()
    overrides: tuple[tuple[dict, dict], ...] = ()
    description: str = ""
    reproduces: str = ""
    """The published study this one reproduces (one of ``PUBLISHED_STUDIES``): the report sets its grouped
    results beside the published table's figures. Recorded on the study, so the report reads it there."""
    baseline: dict = field(default_factory=dict)
    """Values for some or all dimensions, enqueued as trial 0 of a new study (Optuna's enqueue_trial)."""

    def __post_init__(self) -> None:
        _one_of("objective", self.objective, SELECT_METRICS)
        if self.reproduces:
            _one_of("reproduces", self.reproduces, PUBLISHED_STUDIES)
        _one_of("direction", self.direction, DIRECTIONS)
        objectives = self.objectives or ((self.objective, self.direction),)
        if objectives[0] != (self.objective, self.direction):
            raise StudyError(f"objectives must start with ({self.objective}, {self.direction}); got {objectives[0]}")
        for metric, direction in objectives[1:]:
            _one_of("objectives", metric, OBJECTIVE_METRICS)
            _one_of(f"objectives.{metric}", direction, DIRECTIONS)
        if len({m for m, _ in objectives}) != len(objectives):
            raise StudyError(f"objectives name a metric twice: {[m for m, _ in objectives]}")
        object.__setattr__(self, "objectives", tuple(objectives))
        _one_of("pruner", self.pruner, PRUNERS)
        _one_of("sampler", self.sampler, SAMPLERS)
        _one_of("objective_stat", self.objective_stat, OBJECTIVE_STATS)
        for key in ("trials", "min_epochs", "keep_checkpoints", "repeats", "state_every", "trials_per_device"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise StudyError(f"{key} must be a positive integer; got {value!r}")
        if self.repeats > MAX_REPEATS:
            raise StudyError(
                f"repeats must be at most {MAX_REPEATS}; got {self.repeats} (a trial trains its seeds at once: "
                "confirm more seeds with `cvstudy confirm --seeds N`, which trains them one at a time)"
            )
        seconds = self.state_min_seconds
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not seconds >= 0:
            raise StudyError(f"state_min_seconds must be a number >= 0; got {seconds!r}")
        object.__setattr__(self, "state_min_seconds", float(seconds))
        if self.sampler == "grid":
            self.grid  # noqa: B018 -- raises for dimensions a grid cannot enumerate
        try:
            self.candidate_configs()
        except ConfigError as err:
            raise StudyError(f"{err} (checked at every choice and range end of the space)") from None

    @property
    def metrics(self) -> tuple[str, ...]:
        """The objectives' metric names, the first objective first."""
        return tuple(m for m, _ in self.objectives)

    @property
    def directions(self) -> list[Direction]:
        return [d for _, d in self.objectives]

    def aggregate(self, values: list[float], metric: str | None = None) -> float:
        """An objective's trial value from its seeds' values: ``objective_stat`` for an epoch metric
        (the first objective when ``metric`` is None), the mean for a cost metric."""
        metric = metric or self.objective
        mean, std = mean_std(values)
        if self.objective_stat == "mean" or metric in COST_METRICS:
            return mean
        return mean - std if dict(self.objectives)[metric] == "maximize" else mean + std

    def config_for(self, params: dict, cli: dict | None = None) -> TrainConfig:
        """Defaults < fixed < sampled params < matching overrides < command-line flags."""
        values = {**self.fixed, **params}
        for when, settings in self.overrides:
            if all(values.get(k, _default(k)) == v for k, v in when.items()):
                values.update(settings)
        values.update(cli or {})
        values["select_metric"] = self.objective  # the checkpoint is chosen on what the study optimises
        return TrainConfig.from_flat(values)

    @property
    def grid(self) -> dict[str, list]:
        return {d.name: d.grid_values() for d in self.space}

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid.values()) if self.space else 1

    def candidate_configs(self, cli: dict | None = None) -> list[TrainConfig]:
        """Configs at every choice / range end, each dimension varied alone (linear in the space size);
        plus every combination of the model-related choices (model x pretrained x weights x img_size),
        which must all resolve before the first trial."""
        configs = [self.config_for({}, cli)] if not self.space else []
        baseline = {d.name: d.corners()[0] for d in self.space}
        for d in self.space:
            for value in d.corners():
                configs.append(self.config_for({**baseline, d.name: value}, cli))
        model_dims = [
            d
            for d in self.space
            if d.name in ("model", "pretrained", "weights", "img_size", "cifar_stem") and d.kind == "categorical"
        ]
        for combo in itertools.product(*(d.choices for d in model_dims)):
            configs.append(self.config_for({**baseline, **dict(zip((d.name for d in model_dims), combo))}, cli))
        return configs


def _default(key: str) -> Any:
    return TrainConfig().to_flat()[key]


def resolve_study_file(model: str | None, study_file: str | None) -> Path:
    if study_file:
        path = Path(study_file)
        if not path.is_file():
            raise StudyError(f"{path}: study file not found")
        return path
    name = model or "resnet50"
    for folder in (LOCAL_STUDIES, shipped_studies()):
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    shipped = ", ".join(sorted(p.stem for p in shipped_studies().glob("*.yaml")))
    raise StudyError(
        f"{LOCAL_STUDIES / f'{name}.yaml'}: no study file for model {name!r} here or shipped "
        f"(shipped: {shipped}); pass --study-file"
    )


def shipped_studies() -> Path:
    """The study files installed with cvstudy (the ``studies`` package's data)."""
    return Path(str(resources.files("cvstudy.studies")))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_study_spec(path: Path) -> StudySpec:
    """Parse and check a study file; every problem is a StudyError naming the file."""
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader subclass  # nosec B506
    except (OSError, yaml.YAMLError) as err:
        raise StudyError(f"{path}: not readable YAML ({str(err).splitlines()[0]})") from None
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always", FutureWarning)
            spec = _parse(raw, path)
    except (StudyError, ConfigError) as err:
        raise StudyError(f"{path}: {err}") from None
    # A former name (FutureWarning) is said once, naming the file; anything else is passed on as it came.
    for former in sorted({str(w.message) for w in said if issubclass(w.category, FutureWarning)}):
        warnings.warn(f"{path}: {former}", FutureWarning, stacklevel=2)
    for other in (w for w in said if not issubclass(w.category, FutureWarning)):
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    return spec


def _parse(raw: Any, path: Path) -> StudySpec:
    if not isinstance(raw, dict):
        raise StudyError("a study file is a mapping (name, objective, fixed, space, ...)")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise StudyError(f"unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(TOP_KEYS))}")
    keys = TrainConfig.keys()
    objectives = _objectives(raw)
    objective = objectives[0][0] if objectives else raw.get("objective", "val_balanced_accuracy")
    default_direction = "minimize" if objective == "val_loss" else "maximize"
    direction: Any = objectives[0][1] if objectives else raw.get("direction", default_direction)
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise StudyError("fixed must be a mapping of config keys to values")
    raw_space, raw_overrides = raw.get("space") or {}, raw.get("overrides") or []
    if not isinstance(raw_space, dict):
        raise StudyError("space must be a mapping of settings to a list of choices or {low, high}")
    if not isinstance(raw_overrides, list):
        raise StudyError("overrides must be a list of {when, set} mappings")
    _refuse_set_by_sweep("fixed", fixed)
    _refuse_set_by_sweep("space", raw_space)
    for i, item in enumerate(raw_overrides):
        if (
            not isinstance(item, dict)
            or set(item) != {"when", "set"}
            or not all(isinstance(item[part], dict) for part in ("when", "set"))
        ):
            raise StudyError(f"overrides[{i}] must be a mapping with exactly 'when' and 'set', each a mapping")
        _refuse_set_by_sweep(f"overrides[{i}].set", item["set"])
    TrainConfig.from_flat(fixed)  # unknown keys and bad values fail here
    space = tuple(_dimension(name, spec, keys) for name, spec in raw_space.items())
    overrides = []
    for i, item in enumerate(raw_overrides):
        for part in ("when", "set"):
            bad = [k for k in item[part] if k not in keys]
            if bad:
                raise StudyError(f"overrides[{i}].{part}: unknown setting(s) {', '.join(bad)}")
        overrides.append((dict(item["when"]), dict(item["set"])))
    settings = {key: raw[key] for key in SETTINGS if key in raw}  # checked by StudySpec itself
    return StudySpec(
        name=str(raw.get("name") or path.stem),
        path=path,
        objective=objective,
        direction=direction,
        objectives=objectives,
        fixed=dict(fixed),
        space=space,
        overrides=tuple(overrides),
        description=str(raw.get("description", "")),
        reproduces=str(raw.get("reproduces", "")),
        baseline=_baseline(raw.get("baseline"), space),
        **settings,
    )


def _objectives(raw: dict) -> tuple[tuple[str, Any], ...]:
    """``objectives: {metric: direction, ...}`` as pairs, in the file's order; () when not given."""
    if "objectives" not in raw:
        return ()
    given = raw["objectives"]
    if {"objective", "direction"} & set(raw):
        raise StudyError("give either objectives or objective/direction, not both")
    if not isinstance(given, dict) or not given:
        raise StudyError(
            "objectives must be a mapping of metrics to directions, "
            "e.g. {val_balanced_accuracy: maximize, gflops: minimize}"
        )
    for metric, direction in given.items():
        if str(metric).startswith("test_"):
            raise StudyError(
                f"objectives.{metric}: a test metric cannot be an objective (trials are selected on "
                "validation; the test set is measured once, on the selected checkpoint)"
            )
        _one_of("objectives", metric, OBJECTIVE_METRICS)
        _one_of(f"objectives.{metric}", direction, DIRECTIONS)
    first = next(iter(given))
    if first not in SELECT_METRICS:
        raise StudyError(
            f"objectives: the first objective is judged every epoch (pruning, checkpoint selection), so it "
            f"must be one of {', '.join(SELECT_METRICS)}; got {first!r}"
        )
    return tuple((str(m), str(d)) for m, d in given.items())


def _one_of(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise StudyError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _baseline(raw: Any, space: tuple[Dimension, ...]) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise StudyError("baseline must be a mapping of search-space dimensions to values")
    dims = {d.name: d for d in space}
    for key, value in raw.items():
        d = dims.get(key)
        if d is None:
            raise StudyError(f"baseline.{key}: not a dimension of the search space")
        if not d.contains(value):
            raise StudyError(f"baseline.{key}: {value!r} is outside the space")
    return dict(raw)


def _refuse_set_by_sweep(where: str, settings: dict) -> None:
    for key in settings:
        if key in SET_BY_SWEEP:
            raise StudyError(f"{where}.{key}: cannot be set in a study file ({SET_BY_SWEEP[key]})")


def _dimension(name: str, spec: Any, keys: dict) -> Dimension:
    where = f"space.{name}"
    if name not in keys:
        raise StudyError(f"{where}: unknown setting {name!r}")
    if isinstance(spec, list):
        if not spec:
            raise StudyError(f"{where}: empty list of choices")
        if len(set(map(repr, spec))) != len(spec):
            raise StudyError(f"{where}: repeated choices {spec}")
        return Dimension(name, "categorical", choices=tuple(spec))
    if not isinstance(spec, dict):
        raise StudyError(f"{where}: expected a list of choices or {{low, high[, log, step]}}")
    extra = set(spec) - {"low", "high", "log", "step"}
    if extra or not {"low", "high"} <= set(spec):
        raise StudyError(f"{where}: a range needs low and high (and optionally log, step); got keys {sorted(spec)}")
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
        raise StudyError(f"{where}: low and high must be finite numbers; got {low!r}, {high!r}")
    if not low < high:
        raise StudyError(f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise StudyError(f"{where}: a log range needs low > 0; got {low}")
    if log and step is not None:
        raise StudyError(f"{where}: log and step cannot be combined")
    if step is not None and (
        not isinstance(step, (int, float)) or not math.isfinite(step) or not 0 < step <= high - low
    ):
        raise StudyError(f"{where}: step must be in (0, high - low]; got {step!r}")
    kind = (
        "int" if all(isinstance(v, int) for v in (low, high)) and (step is None or isinstance(step, int)) else "float"
    )
    return Dimension(name, kind, float(low), float(high), log, step)
