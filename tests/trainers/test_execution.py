"""The GPU configuration (bf16 autocast, channels-last, torch.compile) runs on the CPU too when asked,
so the code a GPU user's first sweep runs is code these tests ran. The CPU pinned: runs are compared
with each other, and the CPU's kernels are deterministic."""

import pytest
import torch

import cvstudy.trainers.loop as loop
from cvstudy.trainers.augment import BatchTransform
from cvstudy.trainers.config import AugConfig, TrainConfig
from cvstudy.trainers.data import load_dataset
from cvstudy.trainers.errors import ConfigError
from cvstudy.trainers.loop import Execution, fit, fit_together, predict_logits
from cvstudy.trainers.models import create, normalisation
from tests.conftest import preempted_state

TINY = {"model": "test_resnet", "batch_size": 8, "epochs": 3, "lr": 3e-3, "aug": "basic", "device": "cpu"}
GPU_LIKE = {"amp": True, "channels_last": True, "compile": True}


def test_settings_resolve_per_device_and_say_what_ran():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    defaults = TrainConfig().run
    assert Execution.resolve(defaults, cpu).describe() == {
        "amp_dtype": "float32",
        "memory_format": "contiguous",
        "compiled": "false",
        "data_on": "device",
    }
    assert Execution.resolve(defaults, cuda).describe() == {
        "amp_dtype": "bfloat16",
        "memory_format": "channels_last",
        "compiled": "false",
        "data_on": "device",
    }
    asked = TrainConfig.from_flat(GPU_LIKE).run
    assert Execution.resolve(asked, cpu) == Execution(amp=True, channels_last=True, compiled=True)
    refused = TrainConfig.from_flat({"amp": False, "channels_last": False}).run
    assert Execution.resolve(refused, cuda) == Execution(amp=False, channels_last=False, compiled=False)


@pytest.mark.slow
@pytest.mark.long
def test_the_gpu_configuration_trains_on_the_cpu_close_to_fp32(tiny_data):
    data = load_dataset(str(tiny_data), 0.25)
    eager = fit(TrainConfig.from_flat(TINY), data)
    gpu_like = fit(TrainConfig.from_flat({**TINY, **GPU_LIKE}), data)
    assert gpu_like.execution == Execution(amp=True, channels_last=True, compiled=True)
    assert eager.execution == Execution(amp=False, channels_last=False, compiled=False)
    losses = [r["train_loss"] for r in gpu_like.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    # bf16 keeps about 3 significant digits: the same model, data and draws give nearly the same losses
    for a, b in zip(losses, (r["train_loss"] for r in eager.history)):
        assert a == pytest.approx(b, rel=0.05)
    assert gpu_like.test["accuracy"] == pytest.approx(eager.test["accuracy"], abs=0.25)


@pytest.mark.slow
def test_a_compiled_bf16_run_resumes_from_its_state(tiny_data, tmp_path):
    data = load_dataset(str(tiny_data), 0.25)
    config = TrainConfig.from_flat({**TINY, **GPU_LIKE, "epochs": 3})
    whole = fit(config, data)

    state = preempted_state(fit, config, data, tmp_path / "state", after_epoch=1)
    resumed = fit(config, data, resume=state)
    assert state.epoch == 1 and resumed.epochs_run == 3
    assert [r["train_loss"] for r in resumed.history] == pytest.approx(
        [r["train_loss"] for r in whole.history], rel=1e-5
    )
    assert resumed.test["balanced_accuracy"] == pytest.approx(whole.test["balanced_accuracy"], abs=1e-9)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_resumed_channels_last_run_keeps_its_optimiser_state_in_its_weights_strides(tiny_data, tmp_path, optimizer):
    """CUDA's fused optimisers refuse moments whose strides are not their weights' (a resumed GPU run
    failed at its first step on an H200); the CPU's optimisers accept the mix, so the layout is checked."""
    data = load_dataset(str(tiny_data), 0.25)
    config = TrainConfig.from_flat({**TINY, "channels_last": True, "epochs": 2, "optimizer": optimizer})
    state = preempted_state(fit, config, data, tmp_path / "state", after_epoch=1)
    trainer = loop.Trainer(config, data)
    trainer.load_state_dict(state)

    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    saved = state.optimizer["state"]  # by parameter index, as the file holds them
    pairs = [
        (param, trainer.optimizer.state[param][key], value)
        for index, param in enumerate(params)
        for key, value in saved[index].items()
        if torch.is_tensor(value) and value.shape == param.shape
    ]
    assert any(not param.is_contiguous() for param, _, _ in pairs)  # the convolutions' channels-last weights
    for param, restored, value in pairs:
        assert restored.stride() == param.stride()
        assert torch.equal(restored, value)  # the saved values, laid out anew


@pytest.mark.slow
def test_seeds_train_together_under_compile(tiny_data):
    data = load_dataset(str(tiny_data), 0.25)
    configs = [TrainConfig.from_flat({**TINY, **GPU_LIKE, "epochs": 2, "seed": s, "split_seed": 0}) for s in (0, 1)]
    together = fit_together(configs, data)
    alone = [fit(c, data) for c in configs]
    for a, b in zip(together, alone):
        assert a.execution.compiled and a.history[-1]["train_loss"] == pytest.approx(
            b.history[-1]["train_loss"], rel=1e-5
        )


@pytest.mark.slow
def test_compiled_evaluation_handles_a_ragged_last_batch(tiny_data, monkeypatch):
    data = load_dataset(str(tiny_data), 0.25)
    monkeypatch.setattr(loop, "EVAL_BATCH", 5)  # 18 test images: batches of 5, 5, 5 and a ragged 3
    torch.manual_seed(0)
    net = create(TrainConfig.from_flat(TINY).network, data.num_classes).eval()
    mean, std = normalisation(net)
    transform = BatchTransform(AugConfig(aug="none"), 16, mean, std)
    images = torch.from_numpy(data.test_x)
    assert len(images) % 5 != 0
    eager = predict_logits(net, images, transform, amp=False)
    compiled = predict_logits(torch.compile(net), images, transform, amp=False)
    assert compiled.shape == eager.shape == (len(images), data.num_classes)
    assert torch.allclose(compiled, eager, atol=1e-4)


def test_images_stay_on_the_host_when_they_would_take_over_half_the_free_device_memory(monkeypatch):
    cuda, gib = torch.device("cuda"), 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * gib, 80 * gib))  # 8 GiB free
    defaults = TrainConfig().run
    assert Execution.resolve(defaults, cuda, image_bytes=4 * gib).data_on == "device"  # half: still fits
    assert Execution.resolve(defaults, cuda, image_bytes=4 * gib + 1).data_on == "host"
    asked = TrainConfig.from_flat({"data_on": "device"}).run  # asked for: applied, whatever the size
    assert Execution.resolve(asked, cuda, image_bytes=60 * gib).data_on == "device"
    host = TrainConfig.from_flat({"data_on": "host"}).run
    assert Execution.resolve(host, torch.device("cpu"), image_bytes=1).describe()["data_on"] == "host"
    with pytest.raises(ConfigError, match="data_on must be one of device, host; got .gpu."):
        TrainConfig.from_flat({"data_on": "gpu"})


def test_a_run_streaming_its_batches_from_the_host_trains_exactly_as_one_holding_them_on_the_device(
    tiny_data, monkeypatch
):
    """The host path (a pinned gather and a copy per batch on CUDA) runs on the CPU through the same code;
    the draws, the batches and so every number must be the very same."""
    data = load_dataset(str(tiny_data), 0.25)
    gathered = []
    original = loop.Trainer.batch_on_device

    def spy(self, idx):
        gathered.append(idx.device.type)
        return original(self, idx)

    monkeypatch.setattr(loop.Trainer, "batch_on_device", spy)
    on_device = fit(TrainConfig.from_flat({**TINY, "data_on": "device"}), data)
    on_host = fit(TrainConfig.from_flat({**TINY, "data_on": "host"}), data)
    assert on_host.execution.data_on == "host" and on_device.execution.data_on == "device"
    assert len(gathered) == 2 * 3 * (len(data.train_y) // TINY["batch_size"])  # every step of both runs
    assert [r["train_loss"] for r in on_host.history] == [r["train_loss"] for r in on_device.history]
    assert [r["val_loss"] for r in on_host.history] == [r["val_loss"] for r in on_device.history]
    assert on_host.test["predictions"] == on_device.test["predictions"]
    assert on_host.test["loss"] == on_device.test["loss"]
