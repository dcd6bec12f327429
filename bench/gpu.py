"""GPU throughput (needs CUDA; only trainers/ and synthetic data, so it runs on a bare GPU box):

    PYTHONPATH=. python3 bench/gpu.py [--quick]

For resnet50 with the CIFAR stem at 32 px and vit_s16 at 224 px, bf16 autocast + channels_last,
with and without torch.compile: training images/s from ``fit`` (its own per-epoch figure), and the
share of step time spent in the input pipeline (gather + augment + resize + normalise), measured
alone with CUDA events. Goals on one H100: ResNet-50 >= 10,000 img/s, ViT-S/16 >= 3,000 img/s,
data share < 5 %.
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
from cvstudy.trainers.augment import BatchTransform  # noqa: E402
from cvstudy.trainers.config import AugConfig, TrainConfig  # noqa: E402
from cvstudy.trainers.data import Dataset  # noqa: E402
from cvstudy.trainers.loop import fit  # noqa: E402

CASES = [  # (name, flat config)
    (
        "resnet50-cifar-32px",
        {"model": "resnet50", "cifar_stem": True, "img_size": 32, "batch_size": 512, "aug": "basic"},
    ),
    ("vit_s16-224px", {"model": "vit_s16", "img_size": 224, "batch_size": 256, "aug": "basic"}),
]


def synthetic(n: int, k: int = 10) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n) % k
    return Dataset(x, y, x[:1024], y[:1024], x[:1024], y[:1024], k, "synthetic")


def pipeline_ms(policy: str, img_size: int, batch: int, x: torch.Tensor, steps: int = 50) -> float:
    """Milliseconds per batch of the input pipeline alone (gather + augment + resize + normalise)."""
    t = BatchTransform(AugConfig(aug=policy), img_size, (0.5,) * 3, (0.5,) * 3, channels_last=x.is_cuda)

    def one() -> None:
        t(x[torch.randint(0, len(x), (batch,), device=x.device)], train=True)

    for _ in range(5):
        one()
    if not x.is_cuda:
        t0 = time.perf_counter()
        for _ in range(steps):
            one()
        return 1000 * (time.perf_counter() - t0) / steps
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        one()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def run(
    cases: list[tuple[str, dict]], images: int, device: str, epochs: int, compiles: tuple[bool, ...] = (False, True)
) -> None:
    """Each case eager and compiled (``compiles``), bf16 + channels-last: training images/s from ``fit``
    (its best epoch after the first, which holds the compilation) and the input pipeline's share of a step."""
    data = synthetic(images)
    x_dev = torch.from_numpy(data.train_x).to(device)
    name_of_device = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    for compile_ in compiles:  # every case eager before any compiles: compilation takes the longest
        for name, flat in cases:
            config = TrainConfig.from_flat(
                {
                    **flat,
                    "epochs": epochs,
                    "warmup_fraction": 0.0,
                    "compile": compile_,
                    "device": device,
                    "amp": True,
                    "channels_last": True,
                }
            )
            try:
                result = fit(config, data)
            except Exception as err:  # noqa: BLE001 -- e.g. compile unavailable: record and go on
                record("gpu", case=name, compile=compile_, error=f"{type(err).__name__}: {err}"[:300])
                continue
            ips = max(row["images_per_second"] for row in result.history[1:])
            step_ms = 1000 * config.optim.batch_size / ips
            data_ms = pipeline_ms(config.augmentation.aug, result.img_size, config.optim.batch_size, x_dev)
            record(
                "gpu",
                case=name,
                compile=compile_,
                device=name_of_device,
                batch=config.optim.batch_size,
                images_per_s=round(ips),
                step_ms=round(step_ms, 2),
                data_ms=round(data_ms, 2),
                data_share=round(data_ms / step_ms, 4),
                goal=">= 10000 img/s"
                if name.startswith("resnet")
                else ">= 3000 img/s"
                if name.startswith("vit")
                else "smoke",
            )
            if device == "cuda":
                torch.cuda.empty_cache()


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs CUDA")
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer images per epoch")
    args = parser.parse_args()
    run(CASES, 10_240 if args.quick else 25_600, "cuda", 3)


if __name__ == "__main__":
    main()
