"""Every run's cost: parameters, forward GFLOPs, peak memory, training device time and images, and
inference throughput, measured on the run's device."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from trainers.config import COST_METRICS, TrainConfig
from trainers.cost import forward_gflops
from trainers.data import load_dataset
from trainers.loop import fit
from trainers.models import create

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
    model = create(TrainConfig.from_flat({"model": "resnet18"}).model, 10)
    small, large = (forward_gflops(model, size, torch.device("cpu")) for size in (32, 64))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, 3, 64, 64))
    assert large == pytest.approx(counter.get_total_flops() / 1e9)
    assert large / small == pytest.approx(4.0, rel=0.05)  # a conv net's FLOPs scale with the pixels
