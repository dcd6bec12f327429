"""Typed, frozen configuration for one training run.

One dataclass per concern, each field documented and checked in ``__post_init__``. Every knob of a
run -- model, pretrained weights, augmentation, loss, optimiser -- lives here, so a variation is a
value, never a copied script. Field names are unique across sections: a run's configuration is also a
flat ``{name: value}`` mapping (``TrainConfig.from_flat`` / ``to_flat``), which is what study files,
command-line flags and MLflow params use.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import ConfigError

DOC = "doc"  # a setting's metadata key: its help text
VAL_FRACTION = 0.1  # the share of each class held out for model selection, unless a run says otherwise


def setting(default: Any, doc: str) -> Any:
    """A documented field: its help text travels with the class in the field's metadata, so the
    command line's help and the docs need no source file (an installed wheel may have none)."""
    return field(default=default, metadata={DOC: doc})


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


DATA_ON = ("device", "host")  # RunConfig.data_on


def _choice(name: str, value: Any, choices: tuple) -> None:
    _check(value in choices, f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


# Short names for the two architectures of the original study; any other timm name is used as is.
MODEL_ALIASES = {"vit_s16": "vit_small_patch16_224", "resnet50": "resnet50"}
LOSSES = ("ce", "balanced_softmax", "class_balanced", "focal")
CLASS_SAMPLERS = ("uniform", "class_balanced", "sqrt")
OPTIMIZERS = ("sgd", "adamw")
FINETUNE_MODES = ("full", "head")
TTA_MODES = ("none", "hflip")
SEED_LIMIT = 2**32  # NumPy's seeds; a sweep's workers and repeats add small offsets below it
SELECT_METRICS = ("val_balanced_accuracy", "val_macro_f1", "val_accuracy", "val_loss")
# What every run costs, logged as final metrics under these names (measured in ``trainers.cost``; here,
# without torch, so a study file is checked without importing it).
COST_METRICS = (
    "params",
    "gflops",
    "peak_memory_mb",
    "train_device_seconds",
    "train_images",
    "inference_images_per_second",
    "inference_ms_per_batch",
)


@dataclass(frozen=True)
class DataConfig:
    data: str | None = setting(
        None,
        "Directory holding train_data.npy, train_target.npy, test_data.npy, test_target.npy. Unset: "
        "./data if it holds a dataset, else the embedded demo set.",
    )
    val_fraction: float = setting(
        VAL_FRACTION, "Share of the train split held out, stratified, for model selection (0 < f < 1)."
    )
    split_seed: int | None = setting(
        None,
        "Seeds the stratified validation split; unset: the run's seed. Repeated seeds and confirmations "
        "fix it, so every seed of a configuration is selected on the same validation images.",
    )

    def __post_init__(self) -> None:
        _check(0.0 < self.val_fraction < 1.0, f"val_fraction must be in (0, 1); got {self.val_fraction}")
        _check(
            self.split_seed is None or 0 <= self.split_seed < SEED_LIMIT,
            f"split_seed must be in [0, 2**32); got {self.split_seed}",
        )


@dataclass(frozen=True)
class ModelConfig:
    model: str = setting("resnet50", "timm model name, or an alias: resnet50, vit_s16 (= vit_small_patch16_224).")
    pretrained: bool = setting(
        False,
        "Start from pretrained weights: --weights, else the local Hugging Face cache, else a download "
        "from the Hub (timm's default tag) unless offline (HF_HUB_OFFLINE=1 or --offline).",
    )
    weights: str | None = setting(
        None, "Path to a .safetensors, .pth/.pt or .bin state dict (timm or torchvision key layout)."
    )
    img_size: int | None = setting(
        None, "Side of the square model input in pixels; batches are resized on the device. Unset: the data's size."
    )
    cifar_stem: bool = setting(
        False, "ResNets only: 3x3 stride-1 first conv and no max-pool, for 32 px inputs (16x the FLOPs)."
    )
    finetune: str = setting(
        "full", "full: train every weight; head: freeze all but the classifier (needs pretrained weights)."
    )
    drop_rate: float = setting(0.0, "Dropout before the classifier.")
    tta: str = setting(
        "hflip",
        "Test-time augmentation: hflip (the mean of the logits of each image and of its mirror: two "
        "forward passes per image; +0.016 test balanced accuracy on long-tailed photos) or none (for data "
        "a mirror changes the label of: digits, text). Applies wherever the model predicts: validation, "
        "test, predict, the logged model and export; the inference cost metrics count both passes.",
    )

    def __post_init__(self) -> None:
        _check(bool(self.model), "model must be a timm model name")
        _choice("finetune", self.finetune, FINETUNE_MODES)
        _choice("tta", self.tta, TTA_MODES)
        _check(
            self.img_size is None or 8 <= self.img_size <= 1024, f"img_size must be in [8, 1024]; got {self.img_size}"
        )
        _check(0.0 <= self.drop_rate < 1.0, f"drop_rate must be in [0, 1); got {self.drop_rate}")
        _check(
            self.finetune == "full" or self.pretrained or self.weights is not None,
            "finetune=head trains only the classifier and needs pretrained weights (pretrained=true or weights=PATH)",
        )

    @property
    def timm_name(self) -> str:
        return MODEL_ALIASES.get(self.model, self.model)


# The augmentation presets (``aug``) as operation values; each is what the named policy did before
# operations existed, to the image (a test compares against images saved then). Order of application,
# whatever the values: trivial, geometry (rotate/translate/scale with the flips, else the flips with the
# pad-crop), pad-crop, jitter and hue, erase.
AUG_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    # the CIFAR standard
    "basic": {"crop_pad": 4, "hflip": 0.5},
    # the original study's torchvision pipeline
    "original": {"hflip": 0.5, "vflip": 0.2, "rotate": 40.0, "jitter": 0.2, "hue": 0.1, "erase": 0.5},
    "strong": {"trivial": True, "crop_pad": 4, "hflip": 0.5, "erase": 0.25},
}
AUG_POLICIES = tuple(AUG_PRESETS)
# Former preset names, accepted with a warning until the next release: `seed` was also the run's seed
# and a shipped study.
AUG_PRESET_ALIASES = {"seed": "original"}
# Each operation's accepted range (inclusive) and what it is.
AUG_OP_BOUNDS: dict[str, tuple[float, float, str]] = {
    "hflip": (0, 1, "a probability"),
    "vflip": (0, 1, "a probability"),
    "crop_pad": (0, 16, "pixels"),
    "rotate": (0, 180, "degrees"),
    "translate": (0, 0.5, "a fraction of the side"),
    "scale": (0, 0.9, "a zoom range around 1"),
    "jitter": (0, 1, "a strength"),
    "hue": (0, 0.5, "turns"),
    "erase": (0, 1, "a probability"),
}
AUG_OPS = ("hflip", "vflip", "crop_pad", "rotate", "translate", "scale", "jitter", "hue", "trivial", "erase")


@dataclass(frozen=True)
class AugConfig:
    """The training augmentation: a preset (``aug``) and the operations it sets, each of which a value
    here overrides. An operation left None takes the preset's value (0 or off when the preset has none);
    after construction every operation holds its effective value, which is what is recorded."""

    aug: str = setting(
        "basic",
        "Preset of the operation values: none; basic (pad-crop 4 + hflip 0.5); original (the original "
        "study's: hflip 0.5, vflip 0.2, rotate 40, jitter 0.2, hue 0.1, erase 0.5); strong (trivial + "
        "pad-crop 4 + hflip 0.5 + erase 0.25).",
    )
    hflip: float | None = setting(None, "Probability of a horizontal mirror per image.")
    vflip: float | None = setting(None, "Probability of a vertical mirror per image.")
    crop_pad: int | None = setting(
        None, "Pixels of reflect padding around the stored image before a random crop back to its size; 0: none."
    )
    rotate: float | None = setting(
        None, "Maximum rotation in degrees: uniform in [-rotate, rotate] per image, zero fill."
    )
    translate: float | None = setting(
        None, "Maximum shift as a fraction of the side, uniform per image and axis, zero fill."
    )
    scale: float | None = setting(
        None, "Zoom range around 1: a factor uniform in [1 - scale, 1 + scale] per image, zero fill."
    )
    jitter: float | None = setting(
        None, "Colour jitter strength: brightness, contrast and saturation factors uniform in [1 - j, 1 + j]."
    )
    hue: float | None = setting(None, "Hue jitter: a shift uniform in [-hue, hue] turns (at most 0.5).")
    trivial: bool | None = setting(
        None, "TrivialAugment-Wide: one operation of its set per image, uniform magnitude (no knobs to tune)."
    )
    erase: float | None = setting(
        None, "Probability of erasing one random rectangle (2-33 % of the area, aspect 0.3-3.3, zero fill)."
    )
    mixup: float = setting(0.0, "Mixup Beta(alpha, alpha) strength; 0 disables.")
    cutmix: float = setting(
        0.0, "CutMix Beta(alpha, alpha) strength; 0 disables. With mixup too, each batch picks one."
    )

    def __post_init__(self) -> None:
        if self.aug in AUG_PRESET_ALIASES:
            renamed = AUG_PRESET_ALIASES[self.aug]
            warnings.warn(
                f"aug preset {self.aug!r} is now called {renamed!r}; the old name is accepted until the next release",
                FutureWarning,
                stacklevel=2,
            )
            object.__setattr__(self, "aug", renamed)
        _choice("aug", self.aug, AUG_POLICIES)
        preset = AUG_PRESETS[self.aug]
        for op in AUG_OPS:
            if getattr(self, op) is None:
                kind = bool if op == "trivial" else int if op == "crop_pad" else float
                object.__setattr__(self, op, kind(preset.get(op, 0)))
        for op, (low, high, what) in AUG_OP_BOUNDS.items():
            value = getattr(self, op)
            _check(low <= value <= high, f"{op} must be {what} in [{low}, {high}]; got {value}")
        _check(self.mixup >= 0 and self.cutmix >= 0, "mixup and cutmix must be >= 0")

    @property
    def geometric(self) -> bool:
        """Whether a resampling warp runs (rotate, translate or scale); flips then ride along in it."""
        return bool(self.rotate or self.translate or self.scale)

    @property
    def pixel_moves_only(self) -> bool:
        """Whether every operation only moves or blanks pixels, so it runs on the uint8 images."""
        return not (self.geometric or self.jitter or self.hue or self.trivial)


@dataclass(frozen=True)
class LossConfig:
    loss: str = setting(
        "balanced_softmax",
        "ce; balanced_softmax (logit adjustment by tau * log prior); class_balanced (effective-number "
        "weights, beta); focal (gamma). All use the train split's class counts.",
    )
    label_smoothing: float = setting(0.1, "Mass moved from the true class to the uniform distribution.")
    tau: float = setting(1.0, "balanced_softmax temperature on the log class prior.")
    beta: float = setting(0.999, "class_balanced and DRW: effective-number beta in [0, 1).")
    gamma: float = setting(2.0, "focal loss focusing parameter.")
    drw_epoch: int | None = setting(
        None, "Deferred re-weighting: from this 0-based epoch on, weight classes by effective number (beta)."
    )
    class_sampler: str = setting(
        "uniform",
        "How training batches draw images: uniform; class_balanced (each class equally likely); sqrt "
        "(class probability ~ sqrt(class count)).",
    )

    def __post_init__(self) -> None:
        _choice("loss", self.loss, LOSSES)
        _choice("class_sampler", self.class_sampler, CLASS_SAMPLERS)
        _check(0.0 <= self.label_smoothing < 1.0, f"label_smoothing must be in [0, 1); got {self.label_smoothing}")
        _check(0.0 <= self.beta < 1.0, f"beta must be in [0, 1); got {self.beta}")
        _check(self.tau >= 0 and self.gamma >= 0, "tau and gamma must be >= 0")
        _check(self.drw_epoch is None or self.drw_epoch >= 0, "drw_epoch must be >= 0")


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = setting("adamw", "sgd (momentum, Nesterov) or adamw.")
    lr: float = setting(4e-3, "Peak learning rate, reached after warmup, then cosine decay to 0.")
    weight_decay: float = setting(
        0.05, "Decoupled (AdamW) or L2 (SGD) weight decay, on weights only, not norms or biases."
    )
    momentum: float = setting(0.9, "First-moment decay of either optimiser: SGD's momentum, or AdamW's beta1.")
    batch_size: int = setting(64, "Images per optimisation step.")
    epochs: int = setting(15, "Maximum passes over the train split.")
    warmup_fraction: float = setting(
        0.3, "Share of all steps spent in linear warmup before the cosine decay (0.3: one-cycle style)."
    )
    grad_clip: float | None = setting(None, "Clip the global gradient norm to this value; unset: no clipping.")
    ema: float = setting(
        0.0,
        "Decay of an exponential moving average of the weights (timm's ModelEmaV3), updated after every "
        "optimiser step from the first step's weights on; 0: off. The average spans about 1 / (1 - ema) "
        "steps. When on, validation selects among the averaged weights, and the checkpoint, the resume "
        "state, predict and export hold them.",
    )

    def __post_init__(self) -> None:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _check(self.lr > 0, f"lr must be > 0; got {self.lr}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0; got {self.weight_decay}")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1); got {self.momentum}")
        _check(self.batch_size >= 2, f"batch_size must be >= 2; got {self.batch_size}")
        _check(self.epochs >= 1, f"epochs must be >= 1; got {self.epochs}")
        _check(0 <= self.warmup_fraction < 1, f"warmup_fraction must be in [0, 1); got {self.warmup_fraction}")
        _check(self.grad_clip is None or self.grad_clip > 0, "grad_clip must be > 0")
        _check(0 <= self.ema < 1, f"ema must be a decay in [0, 1) (0: off); got {self.ema}")


@dataclass(frozen=True)
class RunConfig:
    seed: int = setting(
        0, "Seeds initialisation, sampling and augmentation, and the validation split unless split_seed is set."
    )
    device: str = setting("auto", "auto (first CUDA device, else CPU), cpu, cuda or cuda:N.")
    patience: int | None = setting(
        None, "Stop after this many epochs without a better validation select_metric; unset: never."
    )
    select_metric: str = setting(
        "val_balanced_accuracy", "Validation metric that picks the best epoch (and checkpoint); val_loss is minimised."
    )
    compile: bool = setting(
        False,
        "torch.compile the model (inductor), on any device. Off unless asked: it costs a compilation per "
        "run (about a minute for ResNet-50), which pays off on long runs.",
    )
    amp: bool | None = setting(
        None,
        "bf16 autocast of the forward pass, on any device. Unset: on for CUDA, off for CPU (where bf16 is "
        "slower than fp32 on most processors).",
    )
    channels_last: bool | None = setting(
        None,
        "channels-last memory format for the model and its input batches, on any device. Unset: on for "
        "CUDA, off for CPU.",
    )
    data_on: str | None = setting(
        None,
        "Where the train and validation images stay while a run trains: device (copied to the training "
        "device once) or host (host memory: each batch is gathered into pinned memory and copied to the "
        "device as it is drawn, for data the device cannot hold). Unset: device when the images take at "
        "most half of the device's free memory, else host. On the CPU both are host memory.",
    )

    def __post_init__(self) -> None:
        _choice("select_metric", self.select_metric, SELECT_METRICS)
        if self.data_on is not None:
            _choice("data_on", self.data_on, DATA_ON)
        _check(0 <= self.seed < SEED_LIMIT, f"seed must be in [0, 2**32); got {self.seed}")
        _check(self.patience is None or self.patience >= 1, f"patience must be >= 1; got {self.patience}")
        ok = self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        _check(ok, f"device must be auto, cpu, cuda or cuda:N; got {self.device!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one run needs, grouped by concern."""

    # Each section's name differs from every setting's (``config.network.model``, not ``model.model``):
    # a setting's flat name is what study files, flags and MLflow params use.
    dataset: DataConfig = field(default_factory=DataConfig)
    network: ModelConfig = field(default_factory=ModelConfig)
    augmentation: AugConfig = field(default_factory=AugConfig)
    criterion: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    SECTIONS: ClassVar[dict[str, type]] = {
        "dataset": DataConfig,
        "network": ModelConfig,
        "augmentation": AugConfig,
        "criterion": LossConfig,
        "optim": OptimConfig,
        "run": RunConfig,
    }

    def __post_init__(self) -> None:
        _check(
            self.criterion.drw_epoch is None or self.criterion.drw_epoch < self.optim.epochs,
            f"drw_epoch ({self.criterion.drw_epoch}) must be below epochs ({self.optim.epochs})",
        )

    @classmethod
    def keys(cls) -> dict[str, str]:
        """Flat key -> section name."""
        return {f.name: section for section, dc in cls.SECTIONS.items() for f in dataclasses.fields(dc)}

    @classmethod
    def from_flat(cls, values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
        """Apply flat ``{key: value}`` overrides to ``base`` (defaults when None). Unknown keys fail."""
        keys = cls.keys()
        unknown = [k for k in values if k not in keys]
        if unknown:
            hints = [
                f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, keys, 1)) else k for k in unknown
            ]
            raise ConfigError(f"unknown setting(s): {', '.join(hints)}")
        base = base or cls()
        sections = {}
        for section in cls.SECTIONS:
            updates = {k: _coerce(k, v) for k, v in values.items() if keys[k] == section}
            if "aug" in updates:  # a preset named now sets every operation not given beside it
                updates = {**dict.fromkeys(AUG_OPS), **updates}
            current = getattr(base, section)
            try:
                sections[section] = dataclasses.replace(current, **updates) if updates else current
            except TypeError as err:  # wrong type that slipped through coercion
                raise ConfigError(str(err)) from None
        return cls(**sections)

    @property
    def split(self) -> tuple[str | None, float, int]:
        """``load_dataset``'s arguments: (data, val_fraction, split seed = split_seed, else seed)."""
        seed = self.run.seed if self.dataset.split_seed is None else self.dataset.split_seed
        return self.dataset.data, self.dataset.val_fraction, seed

    def to_flat(self) -> dict[str, Any]:
        return {k: v for section in self.SECTIONS for k, v in dataclasses.asdict(getattr(self, section)).items()}

    @classmethod
    def value_types(cls) -> dict[str, tuple[type, bool]]:
        """Flat key -> (the type of its value: bool, int, float or str; whether it may be None)."""
        return _value_types()

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Flat key -> the field's help text (for CLI help and documentation)."""
        return {f.name: f.metadata[DOC] for dc in cls.SECTIONS.values() for f in dataclasses.fields(dc)}


@functools.cache
def _value_types() -> dict[str, tuple[type, bool]]:
    out = {}
    for dc in TrainConfig.SECTIONS.values():
        hints = typing.get_type_hints(dc)  # the annotations as types, not as the strings written
        for f in dataclasses.fields(dc):
            kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
            values = [k for k in kinds if k is not type(None)]
            out[f.name] = (values[0], len(values) < len(kinds))
    return out


def _coerce(key: str, value: Any) -> Any:
    """Convert YAML/CLI values to the field's declared type; fail with the key's name otherwise."""
    kind, optional = _value_types()[key]
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        _check(optional, f"{key} cannot be empty")
        return None
    try:
        if kind is bool:
            if isinstance(value, str):
                _check(
                    value.lower() in ("true", "false", "1", "0", "yes", "no"),
                    f"{key} must be true or false; got {value!r}",
                )
                return value.lower() in ("true", "1", "yes")
            # 1 and 0 read as yes and no; any other number is a mistake (`trivial: 5` is not "on")
            _check(isinstance(value, bool) or value in (0, 1), f"{key} must be true or false; got {value!r}")
            return bool(value)
        if kind is int:
            number = value if isinstance(value, int) else float(value)
            _check(
                not isinstance(value, bool) and math.isfinite(number) and number == int(number),
                f"{key} must be an integer; got {value!r}",
            )
            return int(number)
        if kind is float:
            _check(
                not isinstance(value, bool) and math.isfinite(float(value)),
                f"{key} must be a finite number; got {value!r}",
            )
            return float(value)
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key} must be a {kind.__name__}; got {value!r}") from None
    return str(value)
