"""The one training function: ``fit(config, data, on_epoch)``.

Reads top to bottom: setup, the epoch loop (train, validate, select, ask the callback), then the
test set, touched once, on the checkpoint that validation selected. Every model, augmentation, loss,
sampler and pretrained choice is a value of ``config``. The caller observes and steers through
``on_epoch(row) -> bool`` (True asks to stop); the trainer knows nothing of Optuna or MLflow.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from timm.data import Mixup
from timm.optim import param_groups_weight_decay

from .augment import BatchTransform
from .config import ConfigError, RunConfig, TrainConfig
from .cost import forward_gflops, inference_speed, peak_memory_mb, reset_peak_memory
from .data import Dataset
from .intervals import sampling_intervals
from .losses import ImbalanceLoss, sampling_weights, soft_targets
from .metrics import classification_metrics
from .models import WeightsReport, build_model, create, default_img_size, normalisation, small_input_check
from .state import RandomState, TrainState

log = logging.getLogger("cvstudy")
EVAL_BATCH = 512  # images per inference batch; large, inference needs no activations kept


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, value: float):
        super().__init__(f"training loss is {value} at epoch {epoch}: lower the learning rate or enable grad_clip")
        self.epoch = epoch


@dataclass
class FitResult:
    config: TrainConfig
    history: list[dict]
    """One row per epoch: the dict passed to on_epoch."""
    best_epoch: int
    val: dict
    """Full validation metrics of the selected epoch."""
    test: dict
    """Full test metrics of the selected checkpoint (classification_metrics + loss), its ``predictions``
    (one class per test image) and the ``intervals`` of its scalars (``intervals.sampling_intervals``)."""
    stop_reason: str
    """completed, early_stopping or callback."""
    device: str
    img_size: int
    checkpoint: Path | None = None
    weights: WeightsReport | None = None
    num_params: int = 0
    execution: Execution | None = None
    """What ran: autocast dtype, memory format, compiled or eager."""
    cost: dict[str, float] = field(default_factory=dict)
    """``COST_METRICS``: what training cost and what the model costs to run (``trainers.cost``)."""
    checks: dict[str, str] = field(default_factory=dict)
    """A reviewer's warnings about the set-up (``reviewer_checks``), by name."""

    @property
    def epochs_run(self) -> int:
        return len(self.history)


@dataclass(frozen=True)
class Execution:
    """How a run executes on its device, resolved from ``RunConfig`` (None means the device's default):
    what actually ran, recorded with every run."""

    amp: bool
    """bf16 autocast around the forward pass."""
    channels_last: bool
    compiled: bool

    @classmethod
    def resolve(cls, run: RunConfig, device: torch.device) -> Execution:
        cuda = device.type == "cuda"
        return cls(
            cuda if run.amp is None else run.amp, cuda if run.channels_last is None else run.channels_last, run.compile
        )

    @property
    def amp_dtype(self) -> str:
        return "bfloat16" if self.amp else "float32"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> dict[str, str]:
        """What ran, in words: amp_dtype, memory_format, compiled."""
        return {
            "amp_dtype": self.amp_dtype,
            "memory_format": "channels_last" if self.channels_last else "contiguous",
            "compiled": str(self.compiled).lower(),
        }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        index = int(name.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ConfigError(f"device {name} is not available ({torch.cuda.device_count()} CUDA devices visible)")
        return torch.device(f"cuda:{index}")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # timm's Mixup draws from numpy
    torch.manual_seed(seed)


def get_lr(step: int, peak: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to ``peak`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: torch.nn.Module, cfg, device: torch.device) -> torch.optim.Optimizer:

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()  # type: ignore[operator]  # timm's
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=skip)
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, **fast)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999), **fast)


def set_train_mode(model: torch.nn.Module, finetune: str) -> None:
    """full: everything in training mode. head: the frozen backbone keeps its BatchNorm statistics."""
    if finetune == "head":
        model.eval()
        model.get_classifier().train()  # type: ignore[operator]  # timm's; nn.Module types it as an attribute
    else:
        model.train()


@torch.inference_mode()
def predict_logits(model, images: torch.Tensor, transform: BatchTransform, amp: bool) -> torch.Tensor:
    """Logits (float32) for device-resident uint8 images, in large batches."""
    model.eval()
    out = []
    for i in range(0, len(images), EVAL_BATCH):
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            out.append(model(transform(images[i : i + EVAL_BATCH], train=False)).float())
    return torch.cat(out)


def evaluate(model, images: torch.Tensor, labels: torch.Tensor, transform, num_classes: int, amp: bool) -> dict:
    """The model's ``scores`` on ``images``."""
    return scores(labels, predict_logits(model, images, transform, amp), num_classes)


def scores(labels: torch.Tensor, logits: torch.Tensor, num_classes: int) -> dict:
    """``classification_metrics`` of the logits' argmax, and ``loss``: their mean cross-entropy."""
    metrics = classification_metrics(labels.cpu().numpy(), logits.argmax(1).cpu().numpy(), num_classes)
    metrics["loss"] = float(F.cross_entropy(logits, labels))
    return metrics


def _is_better(metric: str, row: dict, best: dict | None) -> bool:
    """Better on ``metric``; exact ties (common on small validation splits, where balanced accuracy
    moves in coarse steps) go to the lower validation loss."""
    if best is None:
        return True
    value, old = row[metric], best[metric]
    if value == old:
        return row["val_loss"] < best["val_loss"]
    return value < old if metric == "val_loss" else value > old


def fit(
    config: TrainConfig,
    data: Dataset,
    on_epoch: Callable[[dict], bool] | None = None,
    checkpoint_dir: Path | str | None = None,
    resume: TrainState | None = None,
    on_state: Callable[[TrainState], None] | None = None,
    state_every: int = 1,
) -> FitResult:
    """Train ``config`` on ``data``; select on validation; evaluate test once; return the metrics.
    ``on_epoch(row)`` sees every epoch's row and may return True to stop (the test split is then
    evaluated on the checkpoint selected so far) or raise to abandon the run. ``on_state(state)``
    receives a resume state every ``state_every`` epochs and when asked to stop; ``resume=state``
    continues a run from one, ending exactly as the uninterrupted run would."""
    epochs = train_epochs(config, data, checkpoint_dir, resume, on_state, state_every)
    try:
        row = next(epochs)
        while True:
            row = epochs.send(bool(on_epoch(row)) if on_epoch is not None else False)
    except StopIteration as done:
        return done.value
    finally:
        epochs.close()


def fit_together(
    configs: list[TrainConfig],
    data: Dataset,
    on_epoch: Callable[[dict[int, dict]], bool] | None = None,
    checkpoint_dirs: list[Path | str | None] | None = None,
) -> list[FitResult]:
    """Train several configurations (a configuration's repeated seeds) in lockstep: each advances one
    epoch in turn with its own random state, so each result is exactly what ``fit`` gives it alone.
    After every epoch, ``on_epoch({index: row})`` sees the rows of the configurations still training
    and may return True to stop them all, or raise to abandon them all. Memory: all models at once."""
    runs = [train_epochs(c, data, d) for c, d in zip(configs, checkpoint_dirs or [None] * len(configs))]
    states: list[RandomState | None] = [None] * len(runs)
    results: list[FitResult | None] = [None] * len(runs)
    stop = False
    try:
        while any(r is None for r in results):
            rows = {}
            for i, epochs in enumerate(runs):
                if results[i] is not None:
                    continue
                state = states[i]
                if state is not None:
                    state.restore()  # this run's draws continue exactly where they left off
                try:
                    rows[i] = next(epochs) if state is None else epochs.send(stop)
                except StopIteration as done:
                    results[i] = done.value
                states[i] = RandomState.capture()
            stop = bool(on_epoch(rows)) if (rows and on_epoch is not None) else False
    finally:
        for epochs in runs:
            epochs.close()
    return [r for r in results if r is not None]  # every one, by the loop's condition


@dataclass(kw_only=True)
class Setup:
    """What every epoch of a run uses, built once by ``setup`` (in an order that fixes the random draws).
    Keyword-only: of its 23 fields, several share a type, and swapped positions would type-check."""

    config: TrainConfig
    device: torch.device
    execution: Execution
    model: torch.nn.Module
    forward: Callable
    """The model, or its compiled version."""
    optimizer: torch.optim.Optimizer
    transform: BatchTransform
    loss_fn: ImbalanceLoss
    draw_weights: torch.Tensor | None
    """Per-image sampling weights of the class sampler; None: a permutation per epoch."""
    mixup: Mixup | None
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    img_size: int
    num_params: int
    weights: WeightsReport | None
    checks: dict[str, str] = field(default_factory=dict)
    """A reviewer's warnings about the run's set-up (``models.WeightsReport.check``, ``small_input_check``)."""


def setup(config: TrainConfig, data: Dataset) -> Setup:
    run, optim = config.run, config.optim
    device = resolve_device(run.device)
    cuda = device.type == "cuda"
    seed_everything(run.seed)
    reset_peak_memory(device)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model, weights_report = build_model(config.model, data.num_classes)
    img_size = default_img_size(config.model, data.image_size)
    checks = reviewer_checks(model, config, img_size, weights_report)
    execution = Execution.resolve(run, device)
    model = model.to(device, memory_format=execution.memory_format)  # type: ignore[call-overload]
    forward = torch.compile(model) if execution.compiled else model
    mean, std = normalisation(model)
    transform = BatchTransform(config.aug, img_size, mean, std, channels_last=execution.channels_last)

    # Both splits live on the device as uint8; batches are gathered, augmented and resized there.
    train_x, train_y = torch.from_numpy(data.train_x).to(device), torch.from_numpy(data.train_y).to(device)
    val_x, val_y = torch.from_numpy(data.val_x).to(device), torch.from_numpy(data.val_y).to(device)
    counts = torch.as_tensor(data.class_counts, device=device)
    loss_fn = ImbalanceLoss(config.loss, counts).to(device)
    draw_weights = sampling_weights(train_y, counts, config.loss.class_sampler)

    n_train = len(train_x)
    batch_size = min(optim.batch_size, n_train - n_train % 2)  # even: mixup pairs images
    steps_per_epoch = max(1, n_train // batch_size)  # drop the ragged last batch
    total_steps = optim.epochs * steps_per_epoch
    optimizer = build_optimizer(model, optim, device)
    mixup = None
    if config.aug.mixup > 0 or config.aug.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=config.aug.mixup,
            cutmix_alpha=config.aug.cutmix,
            mode="batch",
            label_smoothing=config.loss.label_smoothing,
            num_classes=data.num_classes,
        )
    num_params = sum(p.numel() for p in model.parameters())
    log.info(
        "training %s (%.1fM params) on %s at %d px: %d train / %d val / %d test images, %d classes",
        config.model.model,
        num_params / 1e6,
        device,
        img_size,
        n_train,
        len(val_x),
        len(data.test_x),
        data.num_classes,
    )
    return Setup(
        config=config,
        device=device,
        execution=execution,
        model=model,
        forward=forward,
        optimizer=optimizer,
        transform=transform,
        loss_fn=loss_fn,
        draw_weights=draw_weights,
        mixup=mixup,
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        num_classes=data.num_classes,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_steps=round(optim.warmup_fraction * total_steps),
        img_size=img_size,
        num_params=num_params,
        weights=weights_report,
        checks=checks,
    )


SMALL_INPUT = 64  # px: at most this side, a stride-32 network can end on 2 x 2 positions or fewer


def reviewer_checks(model: torch.nn.Module, config: TrainConfig, img_size: int, weights) -> dict[str, str]:
    """What a reviewer would ask first about this set-up, where it applies: weights that did not land,
    an input stem that throws away most of a small image. No random draws, no change to the model."""
    checks = {}
    if weights is not None and (said := weights.check()):
        checks["weights"] = said
    if img_size <= SMALL_INPUT and (said := small_input_check(model, config.model, img_size)):
        checks["small_input"] = said
    for said in checks.values():
        log.warning("check: %s", said)
    return checks


def train_one_epoch(s: Setup, epoch: int, step: int) -> tuple[float, int, float]:
    """One pass over the train split, ``s.steps_per_epoch`` optimiser steps from global step ``step``.
    Returns (mean training loss, the global step after it, the last learning rate)."""
    optim, cfg = s.config.optim, s.config
    set_train_mode(s.model, cfg.model.finetune)
    n_train = len(s.train_x)
    if s.draw_weights is None:
        order = torch.randperm(n_train, device=s.device)
    else:
        order = torch.multinomial(s.draw_weights, n_train, replacement=True)
    class_weights = s.loss_fn.weights_at(epoch)
    trainable = [p for p in s.model.parameters() if p.requires_grad]
    loss_sum = torch.zeros((), device=s.device)  # summed on the device: no sync per step
    lr = optim.lr
    for i in range(s.steps_per_epoch):
        lr = get_lr(step, optim.lr, s.warmup_steps, s.total_steps)
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        idx = order[i * s.batch_size : (i + 1) * s.batch_size]
        x, y = s.transform(s.train_x[idx], train=True), s.train_y[idx]
        if s.mixup is not None:
            x, targets = s.mixup(x, y)
        else:
            targets = soft_targets(y, s.num_classes, cfg.loss.label_smoothing)
        with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.execution.amp):
            logits = s.forward(x)
        loss = s.loss_fn(logits, targets, class_weights)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(trainable, optim.grad_clip)
        s.optimizer.step()
        loss_sum += loss.detach()
        step += 1
    return float(loss_sum) / s.steps_per_epoch, step, lr  # the epoch's one sync


@dataclass
class Selection:
    """The epochs so far, the best of them on validation (its row, metrics and weights) and the epochs
    since it: what picks the checkpoint and stops early."""

    history: list[dict] = field(default_factory=list)
    best_row: dict | None = None
    best_val: dict | None = None
    best_state: dict | None = None
    stale_epochs: int = 0

    def add(self, row: dict, val: dict, model: torch.nn.Module, metric: str) -> None:
        self.history.append(row)
        if _is_better(metric, row, self.best_row):
            self.best_row, self.best_val = row, val
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.stale_epochs = 0
        else:
            self.stale_epochs += 1


def epoch_row(epoch: int, train_loss: float, val: dict, lr: float, images_per_second: float, seconds: float) -> dict:
    """What an epoch reports (``on_epoch``'s row, a run's per-epoch metrics)."""
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "val_balanced_accuracy": val["balanced_accuracy"],
        "val_macro_f1": val["macro_f1"],
        **{f"val_recall_class_{c}": r for c, r in enumerate(val["recall_per_class"])},
        "lr": lr,
        "images_per_second": images_per_second,
        "epoch_seconds": seconds,
    }


def train_epochs(
    config: TrainConfig,
    data: Dataset,
    checkpoint_dir: Path | str | None = None,
    resume: TrainState | None = None,
    on_state: Callable[[TrainState], None] | None = None,
    state_every: int = 1,
) -> Generator[dict, bool, FitResult]:
    """``fit``'s body as a generator: yields each epoch's row, takes True (``send``) to stop, and
    returns the FitResult. ``fit`` and ``fit_together`` drive it."""
    s = setup(config, data)
    chosen, step, first_epoch, stop_reason = Selection(), 0, 0, "completed"
    if resume is not None:  # continue after epoch resume.epoch, with every draw where it was
        s.model.load_state_dict(resume.model)
        s.optimizer.load_state_dict(resume.optimizer)
        best_state = {k: v.to(s.device) for k, v in resume.best_state.items()} if resume.best_state else None
        chosen = Selection(list(resume.history), resume.best_row, resume.best_val, best_state, resume.stale_epochs)
        step, first_epoch = resume.step, resume.epoch
        resume.random.restore()

    for epoch in range(first_epoch, config.optim.epochs):
        t0 = time.perf_counter()
        train_loss, step, lr = train_one_epoch(s, epoch, step)
        train_seconds = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(epoch, train_loss)
        val = evaluate(s.forward, s.val_x, s.val_y, s.transform, s.num_classes, s.execution.amp)
        row = epoch_row(
            epoch, train_loss, val, lr, s.steps_per_epoch * s.batch_size / train_seconds, time.perf_counter() - t0
        )
        chosen.add(row, val, s.model, config.run.select_metric)
        stop = yield row  # the caller records the row (or raises to abandon) before the state is taken,
        # so a resumed run never misses a recorded epoch
        if on_state is not None and ((epoch + 1) % state_every == 0 or stop):
            # The tensors are the live ones: valid during on_state only.
            on_state(
                TrainState(
                    epoch + 1,
                    step,
                    s.model.state_dict(),
                    s.optimizer.state_dict(),
                    RandomState.capture(),
                    list(chosen.history),
                    chosen.best_row,
                    chosen.best_val,
                    chosen.best_state,
                    chosen.stale_epochs,
                )
            )
        if stop:  # the caller asked to stop
            stop_reason = "callback"
            break
        if config.run.patience is not None and chosen.stale_epochs >= config.run.patience:
            stop_reason = "early_stopping"
            break
    return test_selected(s, chosen, data, stop_reason, checkpoint_dir)


def test_selected(
    s: Setup, chosen: Selection, data: Dataset, stop_reason: str, checkpoint_dir: Path | str | None
) -> FitResult:
    """The test split, evaluated once, on the checkpoint validation selected; saved when asked."""
    if chosen.best_row is None or chosen.best_state is None or chosen.best_val is None:
        raise RuntimeError("no epoch was trained")  # epochs >= 1 and resumes keep their selection
    s.model.load_state_dict(chosen.best_state)
    test_x, test_y = torch.from_numpy(data.test_x).to(s.device), torch.from_numpy(data.test_y).to(s.device)
    logits = predict_logits(s.forward, test_x, s.transform, s.execution.amp)
    test = scores(test_y, logits, s.num_classes)
    test["predictions"] = logits.argmax(1).cpu().tolist()
    test["intervals"] = sampling_intervals(data.test_y, test["predictions"], s.num_classes, seed=s.config.run.seed)
    best_epoch = chosen.best_row["epoch"]
    ms_per_batch, images_per_second = inference_speed(
        s.forward, s.img_size, s.device, s.execution.amp, s.execution.memory_format
    )
    cost = {
        "params": float(s.num_params),
        "gflops": forward_gflops(s.model, s.img_size, s.device),
        "peak_memory_mb": peak_memory_mb(s.device),
        # every epoch of the run, resumed ones included (their rows carry their own times)
        "train_device_seconds": sum(row["epoch_seconds"] for row in chosen.history),
        "train_images": float(len(chosen.history) * s.steps_per_epoch * s.batch_size),
        "inference_images_per_second": images_per_second,
        "inference_ms_per_batch": ms_per_batch,
    }
    result = FitResult(
        s.config,
        chosen.history,
        best_epoch,
        chosen.best_val,
        test,
        stop_reason,
        str(s.device),
        s.img_size,
        weights=s.weights,
        num_params=s.num_params,
        execution=s.execution,
        cost=cost,
        checks=s.checks,
    )
    if checkpoint_dir is not None:
        result.checkpoint = save_checkpoint(
            Path(checkpoint_dir), chosen.best_state, s.config, s.num_classes, best_epoch, s.img_size
        )
    return result


def save_checkpoint(
    directory: Path, state: dict, config: TrainConfig, num_classes: int, epoch: int, img_size: int
) -> Path:
    """``model.safetensors`` (no pickles) with the resolved config in its metadata, plus config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"config": config.to_flat(), "num_classes": num_classes, "best_epoch": epoch, "img_size": img_size}
    path = directory / "model.safetensors"
    save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(path), metadata={"cvstudy": json.dumps(meta)})
    (directory / "config.json").write_text(json.dumps(meta, indent=2))
    return path


def load_checkpoint(path: Path | str) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """Rebuild the model of a saved checkpoint (weights only, no pickles); returns model, config, meta."""

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["cvstudy"])
    config = TrainConfig.from_flat(meta["config"])
    model = create(config.model, meta["num_classes"])
    model.load_state_dict(load_file(str(path)))
    return model, config, meta
