"""CUDA-only checks: they run where a GPU is (`make gpu-check` runs them, `pytest -m gpu` collects them)
and skip elsewhere, saying why. Everything else about the GPU configuration runs on the CPU in
tests/trainers/test_execution.py."""

import subprocess

import pytest
import torch

from cvstudy.trainers.augment import BatchTransform
from cvstudy.trainers.config import AugConfig, TrainConfig
from cvstudy.trainers.data import load_dataset
from cvstudy.trainers.loop import build_optimizer, fit
from tests.conftest import CVSTUDY, clean_env, mlflow_runs, preempted_state, run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU visible)")]
TINY = {"model": "test_resnet", "batch_size": 8, "epochs": 3, "lr": 3e-3, "aug": "basic", "device": "cuda"}


def test_the_cuda_resize_branch_matches_the_cpu_pipeline_within_one_grey_level():
    images = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)
    transform = BatchTransform(AugConfig(aug="none"), 96, (0.5,) * 3, (0.5,) * 3)
    cpu = transform(images, train=False)
    cuda = transform(images.cuda(), train=False).cpu()  # CUDA has no uint8 bilinear kernel: the float branch
    assert cuda.shape == cpu.shape
    assert (cuda - cpu).abs().max().item() <= 1.0 / 255 / 0.5 + 1e-5  # one grey level, normalised


def test_cvstudy_train_in_a_fresh_process_trains_on_cuda_and_records_what_ran(tiny_data, tmp_path):
    """A fresh process's first CUDA call was the reset of the allocator's peak statistics, which do not
    exist before CUDA initialises: `cvstudy train --device cuda` failed (seen on an H200)."""
    args = ["train", "--data", str(tiny_data), "--model", "test_resnet", "--epochs", "2", "--device", "cuda"]
    proc = run_cli([*args, "--batch-size", "8"], cwd=tmp_path, process=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = mlflow_runs(tmp_path, "cvstudy-train")
    tags = run.data.tags
    assert run.info.status == "FINISHED"
    assert (tags["cvstudy.amp_dtype"], tags["cvstudy.memory_format"]) == ("bfloat16", "channels_last")
    assert run.data.metrics["cost/peak_memory_mb"] > 0


def test_the_optimiser_is_fused_on_cuda():
    model = torch.nn.Linear(4, 2).cuda()
    optimizer = build_optimizer(model, TrainConfig().optim, torch.device("cuda"))
    assert all(group.get("fused") for group in optimizer.param_groups)


def test_a_resumed_cuda_run_ends_within_tolerance_of_the_uninterrupted_one(tiny_data, tmp_path):
    data = load_dataset(str(tiny_data), 0.25)
    config = TrainConfig.from_flat(TINY)
    whole = fit(config, data)

    resumed = fit(config, data, resume=preempted_state(fit, config, data, tmp_path / "state", after_epoch=1))
    # cuDNN's autotuned kernels make CUDA runs float-tolerance, not bit for bit
    assert [r["train_loss"] for r in resumed.history] == pytest.approx(
        [r["train_loss"] for r in whole.history], rel=1e-2
    )


def test_five_trials_in_one_worker_do_not_grow_peak_memory(tiny_data):
    from cvstudy.orchestrator.sweep.worker import release_device_memory

    data = load_dataset(str(tiny_data), 0.25)
    peaks = []
    for seed in range(5):
        torch.cuda.reset_peak_memory_stats()
        fit(TrainConfig.from_flat({**TINY, "epochs": 1, "seed": seed}), data)
        release_device_memory("cuda:0")
        peaks.append(torch.cuda.max_memory_allocated())
    assert max(peaks[1:]) <= peaks[0] * 1.05, peaks


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_workers_on_two_devices_never_train_on_the_same_one(tmp_path, tiny_data):
    from tests.orchestrator.test_sweep import _load, study_file

    path = study_file(tmp_path, tiny_data, pruner="none")
    proc = subprocess.run(
        [CVSTUDY, "sweep", "--study-file", path, "--trials", "6", "--devices", "cuda:0,cuda:1"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = [t for t in _load(tmp_path).trials if t.state.name == "COMPLETE"]
    by_device: dict[str, set] = {}
    for t in trials:
        by_device.setdefault(t.user_attrs["device"], set()).add(t.user_attrs["pid"])
    assert set(by_device) == {"cuda:0", "cuda:1"} and all(len(pids) == 1 for pids in by_device.values())
    assert not set.intersection(*by_device.values())  # one worker per device, never the same device twice
