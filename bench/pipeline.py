"""Input pipeline: cvstudy's batched on-device augmentation vs the original study's per-sample PIL
DataLoader (same operations, same output size, batch 32, 0 workers, same device). Goal: >= 10x.
Cases: the ``seed`` and ``basic`` presets, and ``every`` operation on at once.

    PYTHONPATH=. python bench/pipeline.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from bench.common import best_time, record  # noqa: E402
from cvstudy.trainers.augment import BatchTransform  # noqa: E402
from cvstudy.trainers.config import AugConfig  # noqa: E402

BATCH = 32
# Every operation on at once (the per-sample reference below applies the same set).
EVERY = {
    "trivial": True,
    "hflip": 0.5,
    "vflip": 0.2,
    "rotate": 30.0,
    "translate": 0.1,
    "scale": 0.1,
    "crop_pad": 4,
    "jitter": 0.2,
    "hue": 0.05,
    "erase": 0.25,
}
OPS = {"original": AugConfig(aug="original"), "basic": AugConfig(aug="basic"), "every": AugConfig(aug="none", **EVERY)}


def reference_transform(policy: str, size: int):
    """The original study's torchvision v1 pipelines (FACTS.md), resizing first as it did."""
    resize = [T.Resize((size, size))] if size != 32 else []
    if policy == "every":
        return T.Compose(
            [
                T.TrivialAugmentWide(),
                T.RandomHorizontalFlip(0.5),
                T.RandomVerticalFlip(0.2),
                T.RandomAffine(30, translate=(0.1, 0.1), scale=(0.9, 1.1)),
                T.RandomCrop(32, padding=4, padding_mode="reflect"),
                *resize,
                T.ColorJitter(0.2, 0.2, 0.2, 0.05),
                T.ToTensor(),
                T.RandomErasing(0.25),
                T.Normalize((0.5,) * 3, (0.5,) * 3),
            ]
        )
    if policy == "seed":
        return T.Compose(
            [
                *resize,
                T.RandomHorizontalFlip(0.5),
                T.RandomVerticalFlip(0.2),
                T.RandomRotation(40),
                T.ColorJitter(0.2, 0.2, 0.2, 0.1),
                T.ToTensor(),
                T.RandomErasing(0.5),
                T.Normalize((0.5,) * 3, (0.5,) * 3),
            ]
        )
    return T.Compose(
        [
            *resize,
            T.RandomCrop(size, padding=4 * size // 32),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.5,) * 3, (0.5,) * 3),
        ]
    )


class NpyDataset(Dataset):
    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


CASES = [(size, policy) for size in (224, 32) for policy in ("seed", "basic", "every")]
N_IMAGES = 20 * BATCH


def side_images_per_s(side: str, passes: int) -> dict[str, float]:
    """Best images/s over ``passes`` warm passes of one side, per case, in this process."""
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = np.random.default_rng(0).integers(0, 256, size=(N_IMAGES, 32, 32, 3), dtype=np.uint8)
    y = np.zeros(N_IMAGES, dtype=np.int64)
    x_dev = torch.from_numpy(x).to(device)
    result = {}
    for size, policy in CASES:
        if side == "reference":
            loader = DataLoader(NpyDataset(x, y, reference_transform(policy, size)), batch_size=BATCH, num_workers=0)

            def one_pass(loader=loader):
                for xb, _ in loader:
                    xb.to(device)
        else:
            transform = BatchTransform(OPS[policy], size, (0.5,) * 3, (0.5,) * 3, channels_last=device.type == "cuda")
            order = torch.randperm(N_IMAGES, device=device)

            def one_pass(transform=transform, order=order):
                for i in range(0, N_IMAGES, BATCH):
                    transform(x_dev[order[i : i + BATCH]], train=True)

        def synced_pass():
            one_pass()
            if device.type == "cuda":
                torch.cuda.synchronize()

        result[f"{policy}@{size}"] = N_IMAGES / best_time(synced_pass, rounds=passes)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, help="alternating reference/cvstudy processes per side")
    parser.add_argument("--side", choices=("reference", "cvstudy"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side_images_per_s(args.side, passes=3)))
        return
    # Each side runs in its own fresh process, alternately (ref, ours, ref, ours, ...), best of the rounds:
    # in one shared process, the reference's per-sample allocations leave the heap fragmented and slow
    # cvstudy's large batch buffers by 20-25 % (measured), and alternating exposes both to the VM's drift.
    best: dict[str, dict[str, float]] = {"reference": {}, "cvstudy": {}}
    for _ in range(args.rounds):
        for side in best:
            out = subprocess.run([sys.executable, __file__, "--side", side], check=True, capture_output=True, text=True)
            for case, rate in json.loads(out.stdout.strip().splitlines()[-1]).items():
                best[side][case] = max(best[side].get(case, 0.0), rate)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for size, policy in CASES:
        ref, ours = best["reference"][f"{policy}@{size}"], best["cvstudy"][f"{policy}@{size}"]
        record(
            "pipeline",
            policy=policy,
            size=size,
            batch=BATCH,
            device=device,
            rounds=args.rounds,
            reference_images_per_s=round(ref),
            cvstudy_images_per_s=round(ours),
            ratio=round(ours / ref, 1),
            goal=">= 10",
        )


if __name__ == "__main__":
    main()
