"""Trainer overhead: ``fit``'s training images/s against a bare hand-written PyTorch loop on the same
model, batch and data (no augmentation, same optimiser). Goal: ratio >= 0.95.

    PYTHONPATH=. python bench/step.py [--model resnet50] [--steps 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import record  # noqa: E402
from cvstudy.trainers.config import TrainConfig  # noqa: E402
from cvstudy.trainers.data import Dataset  # noqa: E402
from cvstudy.trainers.loop import fit, resolve_device  # noqa: E402
from cvstudy.trainers.models import create  # noqa: E402


def synthetic(n: int, size: int, k: int = 10) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % k
    return Dataset(x, y, x[:64], y[:64], x[:64], y[:64], k, "synthetic")


def bare_loop(config: TrainConfig, data: Dataset, steps: int) -> float:
    """The simplest correct loop: uint8 batch on the device -> float, normalise, forward, CE, step."""
    device = resolve_device(config.run.device)
    torch.manual_seed(0)
    model = create(config.network, data.num_classes).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    x_all, y_all = torch.from_numpy(data.train_x).to(device), torch.from_numpy(data.train_y).to(device)
    mean = torch.tensor((0.485, 0.456, 0.406), device=device).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225), device=device).view(1, 3, 1, 1)
    b = config.optim.batch_size
    times = []
    for _step in range(steps):
        t0 = time.perf_counter()
        idx = torch.randint(0, len(x_all), (b,), device=device)
        x = (x_all[idx].permute(0, 3, 1, 2).float() / 255 - mean) / std
        loss = F.cross_entropy(model(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return b / float(np.median(times[2:]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    config = TrainConfig.from_flat(
        {
            "model": args.model,
            "aug": "none",
            "batch_size": args.batch_size,
            "epochs": 3,
            "warmup_fraction": 0.0,
            "device": "auto",
        }
    )
    data = synthetic(args.steps * args.batch_size, 32)
    bare = bare_loop(config, data, args.steps)
    result = fit(config, data)
    ours = max(row["images_per_second"] for row in result.history[1:])  # epoch 0 includes warm-up
    record(
        "step",
        model=args.model,
        batch=args.batch_size,
        device=result.device,
        bare_images_per_s=round(bare, 1),
        fit_images_per_s=round(ours, 1),
        ratio=round(ours / bare, 3),
        goal=">= 0.95",
    )


if __name__ == "__main__":
    main()
