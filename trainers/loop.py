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
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from timm.data import Mixup
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3

from .augment import BatchTransform
from .config import SEED_LIMIT, ConfigError, RunConfig, TrainConfig
from .cost import forward_gflops, inference_speed, peak_memory_mb, reset_peak_memory
from .data import Dataset
from .intervals import sampling_intervals
from .losses import ImbalanceLoss, sampling_weights, soft_targets
from .metrics import classification_metrics
from .models import (
    WeightsReport,
    build_model,
    create,
    default_img_size,
    normalisation,
    small_input_check,
    with_tta,
)
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
    weights_report: WeightsReport | None = None
    """Where the pretrained weights came from and what of them landed; None: trained from scratch."""
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
    data_on: str = "device"
    """Where the train and validation images stayed: device, or host (each batch copied over)."""

    @classmethod
    def resolve(cls, run: RunConfig, device: torch.device, image_bytes: int = 0) -> Execution:
        """``image_bytes``: the train and validation images' size, which decides ``data_on`` when unset."""
        cuda = device.type == "cuda"
        data_on = run.data_on
        if data_on is None:  # on CUDA, the host when the images would take over half the free memory
            fits = not cuda or not image_bytes or image_bytes <= torch.cuda.mem_get_info(device)[0] // 2
            data_on = "device" if fits else "host"
        return cls(
            cuda if run.amp is None else run.amp,
            cuda if run.channels_last is None else run.channels_last,
            run.compile,
            data_on,
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
            "data_on": self.data_on,
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


class Generators:
    """A run's own random generators, seeded from its seed, so that what the run draws does not depend
    on what else draws in the process (another run stepped in between, a library, a test):

    - ``device``: a torch generator on the training device for every draw cvstudy makes itself (the
      epoch's order or class-sampled draw, each augmentation parameter);
    - ``host``: a NumPy generator that seeds torch's, NumPy's and Python's global generators before the
      model is built and before every optimisation step, for the draws that only those serve (timm's
      weight initialisation, dropout and drop path in the forward pass, timm's Mixup, which draws from
      NumPy's). Seeding is not saving and restoring: whatever drew in between, the step draws the same.
    """

    def __init__(self, seed: int, device: torch.device):
        self.device = torch.Generator(device=device)
        self.device.manual_seed(seed)
        self.host = np.random.default_rng(seed)

    def seed_globals(self) -> None:
        seed = int(self.host.integers(SEED_LIMIT))
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # every device's global generator

    def state(self) -> RandomState:
        return RandomState(device=self.device.get_state(), host=dict(self.host.bit_generator.state))

    def load(self, state: RandomState) -> None:
        self.device.set_state(state.device)
        self.host.bit_generator.state = state.host


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)``: a module that shares ``model``'s weights (typed as the module it is)."""
    return typing.cast(torch.nn.Module, torch.compile(model))


def laid_out_as_parameters(optimizer: torch.optim.Optimizer) -> None:
    """Each per-parameter state tensor (momentum, Adam's moments) in its parameter's strides.

    ``load_state_dict`` casts a loaded state to its parameter's device and dtype but keeps the saved
    strides, which are contiguous (the state file holds contiguous tensors); a channels-last model's
    convolution weights are not, and CUDA's fused optimisers refuse the mix at the first step ("params,
    grads, exp_avgs, and exp_avg_sqs must have same dtype, device, and layout": a resumed GPU run, seen on
    an H200)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param).copy_(value)  # empty_like keeps the parameter's strides


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
def predict_logits(
    model, images: torch.Tensor, transform: BatchTransform, amp: bool, device: torch.device | None = None
) -> torch.Tensor:
    """Logits (float32) for uint8 images, in large batches, on ``device`` (default: the images'): images
    kept on the host are copied over a batch at a time."""
    device = images.device if device is None else device
    model.eval()
    out = []
    for i in range(0, len(images), EVAL_BATCH):
        batch = images[i : i + EVAL_BATCH].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out.append(model(transform(batch, train=False)).float())
    return torch.cat(out)


def evaluate(
    model, images: torch.Tensor, labels: torch.Tensor, transform, num_classes: int, amp: bool, device=None
) -> dict:
    """The model's ``scores`` on ``images`` (labels on ``device``)."""
    return scores(labels, predict_logits(model, images, transform, amp, device), num_classes)


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
    trainer = Trainer(config, data)
    if resume is not None:
        trainer.load_state_dict(resume)
    stop_reason = trainer.stop_reason()
    while stop_reason is None:
        row = trainer.train_epoch()
        # The caller records the row (or raises to abandon) before the state is taken, so a resumed
        # run never misses a recorded epoch.
        stop = bool(on_epoch(row)) if on_epoch is not None else False
        if on_state is not None and (trainer.epoch % state_every == 0 or stop):
            on_state(trainer.state_dict())  # the live tensors: valid during on_state only
        stop_reason = "callback" if stop else trainer.stop_reason()
    return trainer.test(stop_reason, checkpoint_dir)


def fit_together(
    configs: list[TrainConfig],
    data: Dataset,
    on_epoch: Callable[[dict[int, dict]], bool] | None = None,
    checkpoint_dirs: list[Path | str | None] | None = None,
) -> list[FitResult]:
    """Train several configurations (a configuration's repeated seeds) in lockstep, an epoch of each in
    turn. Each run draws only from its own generators, so each result is exactly what ``fit`` gives it
    alone. After every epoch, ``on_epoch({index: row})`` sees the rows of the configurations still
    training and may return True to stop them all, or raise to abandon them all. Memory: all models
    at once."""
    trainers = [Trainer(c, data) for c in configs]
    stop_reasons: list[str | None] = [t.stop_reason() for t in trainers]
    while any(reason is None for reason in stop_reasons):
        rows = {i: t.train_epoch() for i, t in enumerate(trainers) if stop_reasons[i] is None}
        stop = bool(on_epoch(rows)) if on_epoch is not None else False
        for i in rows:
            stop_reasons[i] = "callback" if stop else trainers[i].stop_reason()
    directories = checkpoint_dirs or [None] * len(configs)
    return [t.test(str(reason), d) for t, reason, d in zip(trainers, stop_reasons, directories)]


class Trainer:
    """One run: built once (model, optimiser, both splits on the device, its own generators), then
    stepped an epoch at a time. ``fit`` is a plain loop over it; ``fit_together`` steps several.

    Built in an order that fixes the draws: the globals are seeded (``Generators``) right before the
    model is initialised; every later draw comes from the run's generators."""

    def __init__(self, config: TrainConfig, data: Dataset):
        run, optim = config.run, config.optim
        self.config = config
        self.device = device = resolve_device(run.device)
        self.generators = Generators(run.seed, device)
        reset_peak_memory(device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        n_train = len(data.train_x)
        self.batch_size = min(optim.batch_size, n_train - n_train % 2)  # even: mixup pairs images
        self.steps_per_epoch = max(1, n_train // self.batch_size)  # drop the ragged last batch
        self.total_steps = optim.epochs * self.steps_per_epoch
        self.warmup_steps = round(optim.warmup_fraction * self.total_steps)
        self.generators.seed_globals()  # timm initialises the weights from torch's global generator
        model, self.weights_report = build_model(config.network, data.num_classes)
        self.img_size = default_img_size(config.network, data.image_size)
        self.checks: dict[str, str] = reviewer_checks(
            model, config, self.img_size, self.weights_report, self.total_steps
        )
        """A reviewer's warnings about the run's set-up (``reviewer_checks``)."""
        self.execution = Execution.resolve(run, device, data.train_x.nbytes + data.val_x.nbytes)
        self.model = model.to(device, memory_format=self.execution.memory_format)  # type: ignore[call-overload]
        self.forward = compiled(self.model) if self.execution.compiled else self.model
        """The model, or its compiled version."""
        # The weight average is a copy the optimiser never sees: made without a random draw, updated
        # after each step, it leaves the training trajectory exactly as it is without it.
        self.ema = ModelEmaV3(self.model, decay=optim.ema) if optim.ema > 0 else None
        self.selected_from = self.model if self.ema is None else self.ema.module
        """The weights validation scores and selection keeps: the trained ones, or their average."""
        self.validated = with_tta(self._scored(), config.network.tta)
        """What validation runs: ``selected_from`` (compiled if the run is), under the run's TTA."""
        mean, std = normalisation(self.model)
        self.transform = BatchTransform(
            config.augmentation, self.img_size, mean, std, channels_last=self.execution.channels_last
        )

        # The images (uint8) stay where ``data_on`` says: on the device, or on the host, from where each
        # batch is copied over (``batch_on_device``); either way it is augmented and resized on the device.
        # On the CPU both are the arrays themselves, not copies. Labels always live on the device.
        self.images_on = device if self.execution.data_on == "device" else torch.device("cpu")
        self.train_x = torch.from_numpy(data.train_x).to(self.images_on)
        self.val_x = torch.from_numpy(data.val_x).to(self.images_on)
        self.train_y, self.val_y = torch.from_numpy(data.train_y).to(device), torch.from_numpy(data.val_y).to(device)
        counts = torch.as_tensor(data.class_counts, device=device)
        self.loss_fn = ImbalanceLoss(config.criterion, counts).to(device)
        self.draw_weights = sampling_weights(self.train_y, counts, config.criterion.class_sampler)
        """Per-image sampling weights of the class sampler; None: a permutation per epoch."""
        self.num_classes = data.num_classes
        self.test_x, self.test_y = data.test_x, data.test_y
        self.optimizer = build_optimizer(self.model, optim, device)
        self.mixup = None
        if config.augmentation.mixup > 0 or config.augmentation.cutmix > 0:
            self.mixup = Mixup(
                mixup_alpha=config.augmentation.mixup,
                cutmix_alpha=config.augmentation.cutmix,
                mode="batch",
                label_smoothing=config.criterion.label_smoothing,
                num_classes=data.num_classes,
            )
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.epoch = 0
        """Epochs completed."""
        self.step = 0
        """Optimiser steps taken (the learning-rate schedule's position)."""
        self.selection = Selection()
        log.info(
            "training %s (%.1fM params) on %s at %d px: %d train / %d val / %d test images, %d classes",
            config.network.model,
            self.num_params / 1e6,
            device,
            self.img_size,
            n_train,
            len(self.val_x),
            len(data.test_x),
            data.num_classes,
        )

    def _scored(self) -> torch.nn.Module:
        """``selected_from`` as validation runs it: the trained model's ``forward``, or the average,
        compiled when the run compiles."""
        if self.ema is None:
            return self.forward
        return compiled(self.ema.module) if self.execution.compiled else self.ema.module

    def stop_reason(self) -> str | None:
        """Why the run ends here (early_stopping, completed), or None while it goes on."""
        patience = self.config.run.patience
        if patience is not None and self.selection.stale_epochs >= patience:
            return "early_stopping"
        return "completed" if self.epoch >= self.config.optim.epochs else None

    def train_epoch(self) -> dict:
        """One pass over the train split, then validation and selection; returns the epoch's row."""
        t0 = time.perf_counter()
        train_loss, lr = self._train_steps()
        train_seconds = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(self.epoch, train_loss)
        val = self.evaluate(self.val_x, self.val_y)
        images_per_second = self.steps_per_epoch * self.batch_size / train_seconds
        row = epoch_row(self.epoch, train_loss, val, lr, images_per_second, time.perf_counter() - t0)
        self.selection.add(row, val, self.selected_from, self.config.run.select_metric)
        self.epoch += 1
        return row

    def _train_steps(self) -> tuple[float, float]:
        """``steps_per_epoch`` optimiser steps; returns (mean training loss, the last learning rate)."""
        optim, cfg, draws = self.config.optim, self.config, self.generators
        set_train_mode(self.model, cfg.network.finetune)
        n_train = len(self.train_x)
        if self.draw_weights is None:
            order = torch.randperm(n_train, device=self.device, generator=draws.device)
        else:
            order = torch.multinomial(self.draw_weights, n_train, replacement=True, generator=draws.device)
        order_where_images = order.to(self.images_on)  # one copy an epoch when the images stay on the host
        class_weights = self.loss_fn.weights_at(self.epoch)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        loss_sum = torch.zeros((), device=self.device)  # summed on the device: no sync per step
        lr = optim.lr
        for i in range(self.steps_per_epoch):
            lr = get_lr(self.step, optim.lr, self.warmup_steps, self.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            batch = slice(i * self.batch_size, (i + 1) * self.batch_size)
            x = self.transform(self.batch_on_device(order_where_images[batch]), train=True, generator=draws.device)
            y = self.train_y[order[batch]]
            draws.seed_globals()  # for Mixup, dropout and drop path, which draw from the globals only
            if self.mixup is not None:
                x, targets = self.mixup(x, y)
            else:
                targets = soft_targets(y, self.num_classes, cfg.criterion.label_smoothing)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.execution.amp):
                logits = self.forward(x)
            loss = self.loss_fn(logits, targets, class_weights)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if optim.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(trainable, optim.grad_clip)
            self.optimizer.step()
            loss_sum += loss.detach()
            self.step += 1
            if self.ema is not None:  # timm's step count: its first update copies the weights (decay 0)
                self.ema.update(self.model, step=self.step)
        return float(loss_sum) / self.steps_per_epoch, lr  # the epoch's one sync

    def batch_on_device(self, idx: torch.Tensor) -> torch.Tensor:
        """The train images ``idx`` on the training device. From the host: gathered into pinned memory
        (on CUDA) and copied without waiting; PyTorch's caching host allocator keeps the buffer until the
        copy has run, so the next batch's gather overlaps the step."""
        if self.execution.data_on == "device":
            return self.train_x[idx]
        pinned = self.device.type == "cuda"
        batch = torch.empty((len(idx), *self.train_x.shape[1:]), dtype=self.train_x.dtype, pin_memory=pinned)
        torch.index_select(self.train_x, 0, idx, out=batch)
        return batch.to(self.device, non_blocking=pinned)

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        """``validated``'s ``scores`` on uint8 ``images``, wherever they are kept."""
        amp = self.execution.amp
        return evaluate(self.validated, images, labels, self.transform, self.num_classes, amp, self.device)

    def state_dict(self) -> TrainState:
        """Everything to continue after this epoch exactly (the model's live tensors, not copies)."""
        chosen = self.selection
        return TrainState(
            epoch=self.epoch,
            step=self.step,
            model=self.model.state_dict(),
            ema=None if self.ema is None else self.ema.module.state_dict(),
            optimizer=self.optimizer.state_dict(),
            random=self.generators.state(),
            history=list(chosen.history),
            best_row=chosen.best_row,
            best_val=chosen.best_val,
            best_state=chosen.best_state,
            stale_epochs=chosen.stale_epochs,
        )

    def load_state_dict(self, state: TrainState) -> None:
        """Continue after ``state.epoch`` epochs, with every draw where it was."""
        self.model.load_state_dict(state.model)
        if (self.ema is None) != (state.ema is None):
            raise RuntimeError("the resume state and the run's configuration disagree on ema (weight averaging)")
        if self.ema is not None and state.ema is not None:
            self.ema.module.load_state_dict(state.ema)
        self.optimizer.load_state_dict(state.optimizer)
        laid_out_as_parameters(self.optimizer)
        best = {k: v.to(self.device) for k, v in state.best_state.items()} if state.best_state else None
        self.selection = Selection(list(state.history), state.best_row, state.best_val, best, state.stale_epochs)
        self.epoch, self.step = state.epoch, state.step
        self.generators.load(state.random)

    def test(self, stop_reason: str, checkpoint_dir: Path | str | None = None) -> FitResult:
        """The test split, evaluated once, on the checkpoint validation selected; saved when asked."""
        chosen = self.selection
        if chosen.best_row is None or chosen.best_state is None or chosen.best_val is None:
            raise RuntimeError("no epoch was trained")  # epochs >= 1 and resumes keep their selection
        self.model.load_state_dict(chosen.best_state)  # the selected weights: trained or averaged
        predicted = with_tta(self.forward, self.config.network.tta)
        test_x = torch.from_numpy(self.test_x).to(self.images_on)
        test_y = torch.from_numpy(self.test_y).to(self.device)
        logits = predict_logits(predicted, test_x, self.transform, self.execution.amp, self.device)
        test = scores(test_y, logits, self.num_classes)
        test["predictions"] = logits.argmax(1).cpu().tolist()
        seed = self.config.run.seed
        test["intervals"] = sampling_intervals(self.test_y, test["predictions"], self.num_classes, seed=seed)
        best_epoch = chosen.best_row["epoch"]
        execution = self.execution
        ms_per_batch, images_per_second = inference_speed(
            predicted, self.img_size, self.device, execution.amp, execution.memory_format
        )
        cost = {
            "params": float(self.num_params),
            "gflops": forward_gflops(with_tta(self.model, self.config.network.tta), self.img_size, self.device),
            "peak_memory_mb": peak_memory_mb(self.device),
            # every epoch of the run, resumed ones included (their rows carry their own times)
            "train_device_seconds": sum(row["epoch_seconds"] for row in chosen.history),
            "train_images": float(len(chosen.history) * self.steps_per_epoch * self.batch_size),
            "inference_images_per_second": images_per_second,
            "inference_ms_per_batch": ms_per_batch,
        }
        result = FitResult(
            self.config,
            chosen.history,
            best_epoch,
            chosen.best_val,
            test,
            stop_reason,
            str(self.device),
            self.img_size,
            weights_report=self.weights_report,
            num_params=self.num_params,
            execution=execution,
            cost=cost,
            checks=self.checks,
        )
        if checkpoint_dir is not None:
            result.checkpoint = save_checkpoint(
                Path(checkpoint_dir), chosen.best_state, self.config, self.num_classes, best_epoch, self.img_size
            )
        return result


SMALL_INPUT = 64  # px: at most this side, a stride-32 network can end on 2 x 2 positions or fewer


def reviewer_checks(
    model: torch.nn.Module, config: TrainConfig, img_size: int, weights, total_steps: int
) -> dict[str, str]:
    """What a reviewer would ask first about this set-up, where it applies: weights that did not land,
    an input stem that throws away most of a small image, a weight average too long for the run's
    ``total_steps``, test-time mirrors of a model that never saw one. No random draws, no change to the
    model."""
    checks = {}
    if weights is not None and (said := weights.check()):
        checks["weights"] = said
    if img_size <= SMALL_INPUT and (said := small_input_check(model, config.network, img_size)):
        checks["small_input"] = said
    if said := ema_check(config.optim.ema, total_steps):
        checks["ema"] = said
    if config.network.tta == "hflip" and config.augmentation.hflip == 0:
        checks["tta"] = (
            "tta=hflip averages each image with its mirror, but training never mirrored one (hflip 0); "
            "for data a mirror changes the label of (digits, text), set tta=none"
        )
    for said in checks.values():
        log.warning("check: %s", said)
    return checks


def ema_check(decay: float, total_steps: int) -> str | None:
    """A weight average whose horizon, about 1 / (1 - decay) steps, exceeds half of the run's steps
    still carries much of the first steps' weights at the end (decay ** steps of them)."""
    if decay <= 0 or 1 / (1 - decay) <= total_steps / 2:
        return None
    return (
        f"ema {decay:g} averages over about {1 / (1 - decay):.0f} optimiser steps, more than half of the "
        f"run's {total_steps}: the average still holds {decay ** (total_steps - 1):.0%} of the first step's "
        "weights at the end; lower ema or train longer"
    )


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
    model = create(config.network, meta["num_classes"])
    model.load_state_dict(load_file(str(path)))
    return model, config, meta
