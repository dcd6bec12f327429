"""What measuring a run's cost costs: the seconds ``trainers.cost`` adds to every run (forward GFLOPs and
inference throughput), against one training epoch of the same model on the same device, side by side.
Goal: well under a second, and a small share of an epoch.

    PYTHONPATH=. python bench/cost.py [--model resnet50] [--img-size 32] [--images 1921]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import record  # noqa: E402
from cvstudy.trainers.config import TrainConfig  # noqa: E402
from cvstudy.trainers.cost import forward_gflops, inference_speed  # noqa: E402
from cvstudy.trainers.data import Dataset  # noqa: E402
from cvstudy.trainers.loop import Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=1921, help="train images per epoch (cifar10lt-small: 1921)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.images
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n) % 10
    data = Dataset(x, y.astype(np.int64), x[:64], y[:64].astype(np.int64), x[:64], y[:64].astype(np.int64), 10, "bench")
    config = TrainConfig.from_flat({"model": args.model, "img_size": args.img_size, "epochs": 1})
    s = Trainer(config, data)
    epoch = s.train_epoch()["epoch_seconds"]  # with the validation of 64 images
    t0 = time.perf_counter()
    gflops = forward_gflops(s.model, s.img_size, s.device)
    t_flops = time.perf_counter() - t0
    t0 = time.perf_counter()
    ms, ips = inference_speed(s.forward, s.img_size, s.device, s.execution.amp, s.execution.memory_format)
    t_speed = time.perf_counter() - t0
    record(
        "cost",
        model=args.model,
        img_size=args.img_size,
        device=str(s.device),
        gflops=round(gflops, 3),
        inference_images_per_second=round(ips),
        gflops_seconds=round(t_flops, 3),
        inference_seconds=round(t_speed, 3),
        measurement_seconds=round(t_flops + t_speed, 3),
        epoch_seconds=round(epoch, 1),
        share_of_an_epoch=round((t_flops + t_speed) / epoch, 4),
        threads=torch.get_num_threads(),
    )


if __name__ == "__main__":
    main()
