import math

import numpy as np
import pytest
import torch
from statsmodels.stats.proportion import proportion_confint

from cvstudy.trainers.augment import BatchTransform
from cvstudy.trainers.config import AugConfig, TrainConfig
from cvstudy.trainers.data import load_dataset
from cvstudy.trainers.loop import (
    NonFiniteLossError,
    TrainState,
    fit,
    fit_together,
    get_lr,
    load_checkpoint,
    predict_logits,
)
from cvstudy.trainers.metrics import classification_metrics
from cvstudy.trainers.models import normalisation

# The CPU pinned: these tests compare runs bit for bit, which holds for the same ops on the same CPU
# (cuDNN's autotuned kernels make CUDA runs float-tolerance). One view per image: the oracles here run
# the plain network (test-time flips have their own tests, test_levers.py).
TINY = {
    "model": "test_resnet",
    "batch_size": 8,
    "epochs": 4,
    "lr": 3e-3,
    "aug": "basic",
    "device": "cpu",
    "tta": "none",
}


def test_fit_trains_selects_on_validation_and_saves_a_loadable_checkpoint(tiny_data, tmp_path):
    data = load_dataset(str(tiny_data), 0.25)
    rows = []
    result = fit(
        TrainConfig.from_flat(TINY), data, on_epoch=lambda r: rows.append(r) or False, checkpoint_dir=tmp_path / "ckpt"
    )
    assert len(rows) == result.epochs_run == 4 and result.stop_reason == "completed"
    assert {
        "train_loss",
        "val_balanced_accuracy",
        "val_macro_f1",
        "lr",
        "images_per_second",
        "epoch_seconds",
        "val_recall_class_2",
    } <= set(rows[0])
    # the documented rule: highest balanced accuracy, ties to the lower validation loss
    best = max(range(4), key=lambda e: (rows[e]["val_balanced_accuracy"], -rows[e]["val_loss"]))
    assert result.best_epoch == best and result.val["balanced_accuracy"] == rows[best]["val_balanced_accuracy"]
    assert result.test["accuracy"] > 0.5  # colours are easy
    assert len(result.test["confusion_matrix"]) == 3
    # the checkpoint reproduces the logged test metrics exactly
    model, config, meta = load_checkpoint(result.checkpoint)
    assert config == result.config and meta["best_epoch"] == best
    mean, std = normalisation(model)
    logits = predict_logits(
        model, torch.from_numpy(data.test_x), BatchTransform(AugConfig(aug="none"), meta["img_size"], mean, std), False
    )
    again = classification_metrics(data.test_y, logits.argmax(1).numpy(), data.num_classes)
    assert again["balanced_accuracy"] == result.test["balanced_accuracy"]
    assert again["confusion_matrix"] == result.test["confusion_matrix"]
    # its predictions are the checkpoint's, and accuracy's interval is Wilson's on them (statsmodels)
    assert result.test["predictions"] == logits.argmax(1).tolist()
    correct = int((np.array(result.test["predictions"]) == data.test_y).sum())
    wilson = proportion_confint(correct, len(data.test_y), alpha=0.05, method="wilson")
    assert result.test["intervals"]["accuracy"] == pytest.approx(wilson, abs=1e-9)
    for name, (low, high) in result.test["intervals"].items():
        assert low <= result.test[name] <= high, name


def test_callback_and_patience_stop_training(tiny_data):
    data = load_dataset(str(tiny_data), 0.25)
    stopped = fit(TrainConfig.from_flat({**TINY, "epochs": 6}), data, on_epoch=lambda r: r["epoch"] == 1)
    assert stopped.epochs_run == 2 and stopped.stop_reason == "callback"
    patient = fit(TrainConfig.from_flat({**TINY, "epochs": 30, "patience": 1, "lr": 1e-9}), data)
    assert patient.stop_reason == "early_stopping" and patient.epochs_run < 30


@pytest.mark.parametrize(
    "extra",
    [
        {"loss": "focal", "class_sampler": "class_balanced", "mixup": 0.2, "cutmix": 1.0},
        {"loss": "balanced_softmax", "drw_epoch": 1, "aug": "original", "optimizer": "sgd"},
        {"loss": "class_balanced", "aug": "strong", "label_smoothing": 0.1, "img_size": 24},
    ],
)
def test_every_variation_is_a_parameter_of_one_fit(tiny_data, extra):
    data = load_dataset(str(tiny_data), 0.25)
    plain = fit(TrainConfig.from_flat({**TINY, "epochs": 2}), data)
    result = fit(TrainConfig.from_flat({**TINY, "epochs": 2, **extra}), data)
    assert result.epochs_run == 2 and all(math.isfinite(r["train_loss"]) for r in result.history)
    # each variation takes effect: the same seed and data train differently, at the size asked for
    assert [r["train_loss"] for r in result.history] != [r["train_loss"] for r in plain.history]
    assert result.img_size == extra.get("img_size", 16) and result.config.to_flat().items() >= extra.items()
    # and each setting alone, where it is not the default, changes training (none is accepted and ignored)
    defaults = TrainConfig.from_flat(TINY).to_flat()
    for key, value in extra.items():
        if defaults[key] != value:
            alone = fit(TrainConfig.from_flat({**TINY, "epochs": 2, key: value}), data)
            assert [r["train_loss"] for r in alone.history] != [r["train_loss"] for r in plain.history], key


def test_non_finite_loss_raises(tiny_data):
    data = load_dataset(str(tiny_data), 0.25)
    with pytest.raises(NonFiniteLossError, match="training loss is"):
        fit(TrainConfig.from_flat({**TINY, "lr": 1e30, "optimizer": "sgd", "momentum": 0.0}), data)


def test_lr_schedule_warms_up_then_decays_to_zero():
    lrs = [get_lr(s, 1.0, 10, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 1e-3


def test_seeds_trained_together_equal_seeds_trained_alone(tiny_data):
    """fit_together interleaves epochs of several seeds, each with its own generators: every seed's
    curve and test metrics equal fit's alone, bit for bit (same ops in the same order on the CPU; the
    only thing lockstep could change is which draws each run gets), even when something else draws
    from torch's, NumPy's and Python's global generators between epochs. Every kind of draw is on:
    augmentation, mixup (NumPy's globals, in timm) and dropout (torch's). With the split seed fixed,
    all seeds select on the same validation images."""
    import random

    import numpy as np

    data = load_dataset(str(tiny_data), 0.25)
    flat = {**TINY, "epochs": 3, "split_seed": 0, "aug": "strong", "mixup": 0.2, "drop_rate": 0.3}
    configs = [TrainConfig.from_flat({**flat, "seed": s}) for s in (0, 1, 2)]
    seen = []

    def a_third_party_draws(rows):
        seen.append(sorted(rows))
        torch.rand(5), np.random.rand(3), random.random()

    together = fit_together(configs, data, on_epoch=a_third_party_draws)
    assert seen == [[0, 1, 2]] * 3  # every epoch, all three seeds report before the callback
    alone = [fit(c, data) for c in configs]
    for a, b in zip(together, alone):
        assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
        assert a.test == b.test and a.best_epoch == b.best_epoch
    assert len({r.history[0]["train_loss"] for r in together}) == 3  # three seeds, three models
    stopped = fit_together(configs[:2], data, on_epoch=lambda rows: True)
    assert [r.epochs_run for r in stopped] == [1, 1] and {r.stop_reason for r in stopped} == {"callback"}


def test_a_run_resumed_from_its_saved_state_ends_exactly_like_the_uninterrupted_run(tiny_data, tmp_path):
    """Bitwise on the CPU: the state holds the weights, the optimiser, the step counter, every random
    generator (here strong augmentation and mixup draw from torch and NumPy), the history, the selection
    and the early-stopping counter, so the resumed epochs run the same operations on the same numbers."""
    data = load_dataset(str(tiny_data), 0.25)
    config = TrainConfig.from_flat({**TINY, "epochs": 5, "aug": "strong", "mixup": 0.2, "patience": 4})
    whole = fit(config, data, checkpoint_dir=tmp_path / "whole")

    class Preempted(Exception):
        pass

    def preempt_after_two(row):
        if row["epoch"] == 2:
            raise Preempted  # as SIGTERM would, during epoch 3: epoch 2's state is on disk
        return False

    with pytest.raises(Preempted):
        fit(config, data, on_epoch=preempt_after_two, on_state=lambda s: s.save(tmp_path / "state"))
    state = TrainState.load(tmp_path / "state")
    assert state.epoch == 2 and len(state.history) == 2
    resumed = fit(config, data, resume=state, checkpoint_dir=tmp_path / "resumed")

    def numbers(result):
        return [
            {k: v for k, v in row.items() if k not in ("epoch_seconds", "images_per_second")} for row in result.history
        ]

    assert numbers(resumed) == numbers(whole) and resumed.epochs_run == 5
    assert resumed.test == whole.test and resumed.best_epoch == whole.best_epoch and resumed.val == whole.val
    from safetensors.torch import load_file

    a, b = load_file(str(whole.checkpoint)), load_file(str(resumed.checkpoint))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # every state_every epochs, and when asked to stop
    epochs = []
    fit(config, data, on_epoch=lambda r: r["epoch"] == 2, on_state=lambda s: epochs.append(s.epoch), state_every=2)
    assert epochs == [2, 3]


def test_test_metrics_come_from_the_epoch_validation_selected_not_the_last(tiny_data, monkeypatch):
    """Validation is scripted to rank epoch 1 best of four (the real evaluation runs; only its balanced
    accuracy is replaced): the test metrics must be those of epoch 1's weights, computed here with
    scikit-learn on that epoch's own predictions of the test images."""
    import copy

    from sklearn.metrics import balanced_accuracy_score

    import cvstudy.trainers.loop as loop

    data = load_dataset(str(tiny_data), 0.25)
    scripted = iter([0.40, 0.90, 0.60, 0.70])
    test_x = torch.from_numpy(data.test_x)
    per_epoch: list[tuple[float, float]] = []  # (test balanced accuracy, test accuracy) of each epoch's weights
    real_evaluate = loop.evaluate

    def evaluate(model, images, labels, transform, num_classes, amp, device=None):
        metrics = real_evaluate(model, images, labels, transform, num_classes, amp, device)
        if len(labels) == len(data.val_y) and torch.equal(labels.cpu(), torch.from_numpy(data.val_y)):
            weights = copy.deepcopy(model)  # this epoch's model, scored on the test images by the test
            pred = predict_logits(weights, test_x, transform, False).argmax(1).numpy()
            per_epoch.append((balanced_accuracy_score(data.test_y, pred), float((pred == data.test_y).mean())))
            metrics["balanced_accuracy"] = next(scripted)
        return metrics

    monkeypatch.setattr(loop, "evaluate", evaluate)
    result = fit(TrainConfig.from_flat({**TINY, "lr": 2e-2, "seed": 2}), data)
    assert result.best_epoch == 1 and len(per_epoch) == 4
    assert result.test["balanced_accuracy"] == pytest.approx(per_epoch[1][0], abs=1e-12)
    assert result.test["accuracy"] == pytest.approx(per_epoch[1][1], abs=1e-12)
    assert per_epoch[1] != per_epoch[3]  # the premise: the last epoch scores otherwise on test
