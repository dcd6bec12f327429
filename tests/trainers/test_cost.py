"""Every run's cost: parameters, forward GFLOPs, peak memory, training device time and images, and
inference throughput, measured on the run's device."""

import time
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cvstudy.trainers.config import COST_METRICS, TrainConfig
from cvstudy.trainers.cost import INFERENCE_BATCH, forward_gflops, inference_speed, peak_memory_mb
from cvstudy.trainers.data import load_dataset
from cvstudy.trainers.loop import fit
from cvstudy.trainers.models import create

TINY = {"model": "test_resnet", "batch_size": 8, "epochs": 2, "lr": 3e-3, "device": "cpu"}


def test_a_run_reports_every_cost_metric(tiny_data):
    data = load_dataset(str(tiny_data), 0.25)
    result = fit(TrainConfig.from_flat(TINY), data)
    cost = result.cost
    assert set(cost) == set(COST_METRICS) and all(v > 0 for v in cost.values())
    steps = (len(data.train_x) // 8) * 8  # images per epoch: whole batches only
    assert cost["train_images"] == 2 * steps
    assert cost["train_device_seconds"] == pytest.approx(sum(r["epoch_seconds"] for r in result.history))
    assert cost["params"] == result.num_params
    assert cost["inference_images_per_second"] == pytest.approx(32 / (cost["inference_ms_per_batch"] / 1e3))


def test_gflops_are_torch_flop_counts_and_grow_with_the_pixels():
    model = create(TrainConfig.from_flat({"model": "resnet18"}).network, 10)
    small, large = (forward_gflops(model, size, torch.device("cpu")) for size in (32, 64))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, 3, 64, 64))
    assert large == pytest.approx(counter.get_total_flops() / 1e9)
    assert large / small == pytest.approx(4.0, rel=0.05)  # a conv net's FLOPs scale with the pixels


def _vm_hwm_mib() -> float:
    """The process's peak resident set as the kernel reports it in /proc (kB), in MiB: another route
    than getrusage, which cvstudy reads."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak from Linux's /proc")
def test_cpu_peak_memory_is_the_processes_peak_resident_set_in_mib():
    import numpy as np

    block = np.ones(160 * 2**20 // 8)  # 160 MiB touched: the peak grows by about that
    kernel = _vm_hwm_mib()
    ours = peak_memory_mb(torch.device("cpu"))
    del block
    assert ours == pytest.approx(kernel, abs=16)  # MiB: both read the same high-water mark, moments apart
    assert ours >= 160


def test_gflops_of_a_tiny_conv_net_counted_by_hand():
    """Conv 3->4, 3x3, padding 1 on 8x8: 8*8 outputs * 4 channels * 3*3*3 multiply-adds = 6,912; then a
    linear layer 256->5: 1,280 multiply-adds. Two FLOPs per multiply-add: 16,384 FLOPs."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.Flatten(), torch.nn.Linear(256, 5, bias=False)
    )
    # Exact: FLOPs are an integer count, and 16,384 / 1e9 rounds the same way on every CPU.
    assert forward_gflops(model, 8, torch.device("cpu")) == 16_384 / 1e9
    # The probe image is made on the run's device (the meta device here: another than the CPU's default).
    seen = []
    model.to("meta").register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].device))
    assert forward_gflops(model, 8, torch.device("meta")) == 16_384 / 1e9
    assert seen == [torch.device("meta")]


def test_inference_speed_is_milliseconds_per_batch_of_32_against_a_forward_of_known_length():
    """A forward that sleeps 30 ms: a batch cannot take less, and on a loaded machine not many times more."""

    def forward(x):
        time.sleep(0.030)
        return x

    ms, per_second = inference_speed(forward, 8, torch.device("cpu"), False, torch.contiguous_format)
    assert 30 <= ms <= 30 * 4
    assert per_second == pytest.approx(INFERENCE_BATCH / (ms / 1e3), rel=1e-9)
    assert INFERENCE_BATCH == 32


def test_inference_speed_times_after_a_warm_up_at_most_five_batches_or_a_quarter_second_and_reports_the_median():
    """Counted calls of forwards of known length: one warm-up, then five fast batches; batches of 0.1 s
    stop once a quarter second has passed (three at most). Scripted lengths (0, then 1, 1, 50, 50, 50 ms)
    put the median at 50 ms, which a sleep can only overshoot. The run's global generator is untouched."""
    cpu, layout = torch.device("cpu"), torch.contiguous_format
    shapes = []
    before = torch.get_rng_state()
    inference_speed(lambda x: shapes.append(tuple(x.shape)) or x, 8, cpu, False, layout)
    assert shapes == [(INFERENCE_BATCH, 3, 8, 8)] * 6
    assert torch.equal(torch.get_rng_state(), before)

    slow_calls = []
    inference_speed(lambda x: slow_calls.append(time.sleep(0.1)) or x, 8, cpu, False, layout)
    assert 2 <= len(slow_calls) <= 1 + 3

    lengths = iter([0.0, 0.001, 0.001, 0.050, 0.050, 0.050])
    ms, _ = inference_speed(lambda x: time.sleep(next(lengths)) or x, 8, cpu, False, layout)
    assert ms >= 50


def test_inference_speed_applies_the_runs_autocast_in_bfloat16_whatever_the_process_default():
    """Autocast is on exactly when the run asks for it, in bfloat16 even where the process's default
    autocast type on this device is another (float16 here, set for the test and put back)."""
    seen = []

    def forward(x):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return x

    default = torch.get_autocast_dtype("cpu")
    torch.set_autocast_dtype("cpu", torch.float16)
    try:
        for amp in (False, True):
            seen.clear()
            inference_speed(forward, 8, torch.device("cpu"), amp, torch.contiguous_format)
            assert {enabled for enabled, _ in seen} == {amp}
            if amp:
                assert {dtype for _, dtype in seen} == {torch.bfloat16}
    finally:
        torch.set_autocast_dtype("cpu", default)


def test_peak_memory_units_on_cuda_and_macos_from_a_known_reading(monkeypatch):
    """The branches a Linux CPU does not reach, on readings of known size: CUDA reports bytes for the
    run's device, macOS's ru_maxrss is bytes and Linux's KiB; all come out in MiB."""
    from types import SimpleNamespace

    import cvstudy.trainers.cost as cost

    cuda = torch.device("cuda", 1)
    asked, reset = [], []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: asked.append(d) or 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "init", lambda: reset.append("init"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: reset.append(d))
    assert cost.peak_memory_mb(cuda) == 3072.0 and asked == [cuda]
    cost.reset_peak_memory(torch.device("cpu"))
    cost.reset_peak_memory(cuda)
    # the CPU's peak cannot be reset; on CUDA, CUDA is initialised first (a fresh process has no
    # statistics to reset: "Invalid device argument" on an H200), then the run's device is named
    assert reset == ["init", cuda]

    monkeypatch.setattr(cost.resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=5 * 2**20))
    monkeypatch.setattr(cost.sys, "platform", "darwin")
    assert cost.peak_memory_mb(torch.device("cpu")) == 5.0  # 5 MiB in bytes
    monkeypatch.setattr(cost.sys, "platform", "linux")
    assert cost.peak_memory_mb(torch.device("cpu")) == 5120.0  # 5 GiB in KiB
