"""The two recipe levers: a moving average of the weights (``ema``) and test-time horizontal flips
(``tta``). Each test's expected values come by another route than the trainer's: the average from the
weights each optimiser step left, combined by hand; the flipped view from images mirrored in NumPy
before they enter the pipeline; validation and test metrics from scikit-learn on those logits."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import balanced_accuracy_score

import cvstudy.trainers.loop as loop
from cvstudy.trainers.augment import BatchTransform
from cvstudy.trainers.config import AugConfig, ConfigError, TrainConfig
from cvstudy.trainers.data import load_dataset
from cvstudy.trainers.inference import Classifier
from cvstudy.trainers.loop import TrainState, fit, load_checkpoint, predict_logits
from cvstudy.trainers.models import normalisation

# The CPU pinned, as in test_loop: resumed runs compare bit for bit.
TINY = {"model": "test_resnet", "batch_size": 8, "epochs": 2, "lr": 3e-3, "aug": "basic", "device": "cpu"}
DECAY = 0.6  # far from 0 and 1, so that either weight set alone is far from the average


def test_the_average_is_the_steps_weights_combined_by_hand_and_is_what_validation_selects(
    tiny_data, tmp_path, monkeypatch
):
    """Two optimiser steps (31 train images, batch 14 -> 2 steps in one epoch). timm's average starts
    at the first step's weights, so after the second it is DECAY * w1 + (1 - DECAY) * w2, tensor by
    tensor (integer buffers: the last step's). Validation scores those weights, the checkpoint holds
    them, and the trained weights follow the same path as a run without the average."""
    data = load_dataset(str(tiny_data), 0.25)
    assert len(data.train_y) == 31
    stepped: list[dict] = []
    real_build = loop.build_optimizer

    def recording_optimizer(model, cfg, device):
        optimizer = real_build(model, cfg, device)
        real_step = optimizer.step

        def step(*args, **kwargs):
            out = real_step(*args, **kwargs)
            stepped.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            return out

        optimizer.step = step  # type: ignore[method-assign]
        return optimizer

    monkeypatch.setattr(loop, "build_optimizer", recording_optimizer)
    flat = {**TINY, "epochs": 1, "batch_size": 14, "tta": "none"}  # one view: the oracle runs the network
    averaged = fit(TrainConfig.from_flat({**flat, "ema": DECAY}), data, checkpoint_dir=tmp_path / "ckpt")
    assert len(stepped) == 2
    w1, w2 = stepped
    saved = load_file(str(averaged.checkpoint))
    assert saved.keys() == w2.keys()
    floats = [k for k in w2 if w2[k].is_floating_point()]
    assert any(not torch.allclose(w1[k], w2[k]) for k in floats)  # the premise: the two steps differ
    for k in w2:
        expected = DECAY * w1[k] + (1 - DECAY) * w2[k] if k in floats else w2[k]
        torch.testing.assert_close(saved[k], expected, rtol=1e-5, atol=1e-6, msg=k)

    # validation scored the averaged weights: scikit-learn on their validation predictions
    model, config, meta = load_checkpoint(averaged.checkpoint)
    mean, std = normalisation(model)
    transform = BatchTransform(AugConfig(aug="none"), meta["img_size"], mean, std)
    val_logits = predict_logits(model, torch.from_numpy(data.val_x), transform, False)
    val_pred = val_logits.argmax(1).numpy()
    assert averaged.val["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(data.val_y, val_pred), abs=1e-12)
    val_loss = torch.nn.functional.cross_entropy(val_logits, torch.from_numpy(data.val_y)).item()
    assert averaged.val["loss"] == pytest.approx(val_loss, rel=1e-5)

    # the average never feeds back: the trained weights and losses are those of a run without it
    stepped.clear()
    plain = fit(TrainConfig.from_flat(flat), data)
    assert [r["train_loss"] for r in plain.history] == [r["train_loss"] for r in averaged.history]
    assert all(torch.equal(stepped[-1][k], w2[k]) for k in w2)


def test_a_run_with_the_average_resumes_bit_exactly(tiny_data, tmp_path):
    """The resume state carries the average; without it the resumed run's average would restart from
    the trained weights and its checkpoint would differ."""
    data = load_dataset(str(tiny_data), 0.25)
    config = TrainConfig.from_flat({**TINY, "epochs": 3, "ema": DECAY})
    whole = fit(config, data, checkpoint_dir=tmp_path / "whole")

    class Preempted(Exception):
        pass

    def preempt_after_one(row):
        if row["epoch"] == 1:
            raise Preempted
        return False

    with pytest.raises(Preempted):
        fit(config, data, on_epoch=preempt_after_one, on_state=lambda s: s.save(tmp_path / "state"))
    state = TrainState.load(tmp_path / "state")
    assert state.epoch == 1 and state.ema is not None and state.ema.keys() == state.model.keys()
    resumed = fit(config, data, resume=state, checkpoint_dir=tmp_path / "resumed")
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in whole.history]
    assert resumed.test == whole.test
    a, b = load_file(str(whole.checkpoint)), load_file(str(resumed.checkpoint))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a state without the average does not resume a run that keeps one
    state.ema = None
    with pytest.raises(RuntimeError, match="disagree on ema"):
        fit(config, data, resume=state)


def mirrored_mean_logits(model, images: np.ndarray, transform) -> torch.Tensor:
    """The TTA oracle: the images and their mirrors (flipped in NumPy, uint8, before the pipeline),
    each through the plain network, logits averaged."""
    mirrored = np.ascontiguousarray(images[:, :, ::-1])  # N x H x W x 3: axis 2 is the width
    views = [predict_logits(model, torch.from_numpy(x), transform, False) for x in (images, mirrored)]
    return (views[0] + views[1]) / 2


def test_flipped_views_are_averaged_in_validation_test_and_predict(tiny_data, tmp_path):
    data = load_dataset(str(tiny_data), 0.25)
    flat = {**TINY, "epochs": 3, "lr": 1e-2}
    result = fit(TrainConfig.from_flat({**flat, "tta": "hflip"}), data, checkpoint_dir=tmp_path / "ckpt")
    model, _, meta = load_checkpoint(result.checkpoint)
    mean, std = normalisation(model)
    transform = BatchTransform(AugConfig(aug="none"), meta["img_size"], mean, std)
    test_logits = mirrored_mean_logits(model, data.test_x, transform)
    plain_logits = predict_logits(model, torch.from_numpy(data.test_x), transform, False)
    assert not torch.allclose(test_logits, plain_logits, atol=1e-3)  # the premise: the mirror changes the logits
    assert result.test["predictions"] == test_logits.argmax(1).tolist()
    expected_loss = torch.nn.functional.cross_entropy(test_logits, torch.from_numpy(data.test_y)).item()
    assert result.test["loss"] == pytest.approx(expected_loss, rel=1e-5)
    val_logits = mirrored_mean_logits(model, data.val_x, transform)
    assert result.val["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(data.val_y, val_logits.argmax(1).numpy()), abs=1e-12
    )
    expected_val_loss = torch.nn.functional.cross_entropy(val_logits, torch.from_numpy(data.val_y)).item()
    assert result.val["loss"] == pytest.approx(expected_val_loss, rel=1e-5)
    # predict (and the pyfunc model, which predicts through Classifier) averages the same two views
    probabilities = Classifier(result.checkpoint).probabilities(data.test_x)
    np.testing.assert_allclose(probabilities, test_logits.softmax(1).numpy(), atol=1e-6)
    # two forward passes per image: twice the FLOPs of the same network without flips
    plain = fit(TrainConfig.from_flat({**flat, "epochs": 1, "tta": "none"}), data)
    assert result.cost["gflops"] == pytest.approx(2 * plain.cost["gflops"], rel=1e-9)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"ema": 1.0}, "ema must be a decay in"),
        ({"ema": -0.1}, "ema must be"),
        ({"tta": "vflip"}, "tta must be one of"),
    ],
)
def test_out_of_range_levers_are_refused(setting, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_flat(setting)


def test_an_average_longer_than_half_the_run_is_flagged(tiny_data):
    """31 train images at batch 8: 3 steps an epoch, 6 in two epochs. Decay 0.5 spans 2 steps, up to
    half of 6 (quiet); 0.75 spans 4, more than half, and still holds 0.75 ** 5 = 24 % of the first
    step's weights at the end."""
    data = load_dataset(str(tiny_data), 0.25)
    short = fit(TrainConfig.from_flat({**TINY, "ema": 0.5}), data)
    long = fit(TrainConfig.from_flat({**TINY, "ema": 0.75}), data)
    assert "ema" not in short.checks
    assert "about 4 optimiser steps" in long.checks["ema"] and "24%" in long.checks["ema"]


def test_mirrored_test_views_of_a_model_that_never_saw_a_mirror_are_flagged(tiny_data):
    """tta=hflip (the default) asks for a mirror's logits; a model trained without flips (hflip 0,
    as digits need) was never taught that a mirror is the same class."""
    data = load_dataset(str(tiny_data), 0.25)
    one_epoch = {**TINY, "epochs": 1}
    unflipped = fit(TrainConfig.from_flat({**one_epoch, "aug": "none"}), data)
    assert "hflip 0" in unflipped.checks["tta"] and "tta=none" in unflipped.checks["tta"]
    for quiet in ({"aug": "none", "tta": "none"}, {"aug": "basic"}, {"aug": "none", "hflip": 0.1}):
        assert "tta" not in fit(TrainConfig.from_flat({**one_epoch, **quiet}), data).checks, quiet
