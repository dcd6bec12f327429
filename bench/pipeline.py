"""Input pipeline: cvstudy's batched on-device policies vs the original study's per-sample PIL
DataLoader (same policy, same output size, batch 32, 0 workers, same device). Goal: >= 10x.

    PYTHONPATH=. python bench/pipeline.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from bench.common import record, timed  # noqa: E402
from trainers.augment import BatchTransform  # noqa: E402

BATCH = 32


def reference_transform(policy: str, size: int):
    """The original study's torchvision v1 pipelines (FACTS.md), resizing first as it did."""
    resize = [T.Resize((size, size))] if size != 32 else []
    if policy == "seed":
        return T.Compose([*resize, T.RandomHorizontalFlip(0.5), T.RandomVerticalFlip(0.2), T.RandomRotation(40),
                          T.ColorJitter(0.2, 0.2, 0.2, 0.1), T.ToTensor(), T.RandomErasing(0.5),
                          T.Normalize((0.5,) * 3, (0.5,) * 3)])
    return T.Compose([*resize, T.RandomCrop(size, padding=4 * size // 32), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize((0.5,) * 3, (0.5,) * 3)])


class NpyDataset(Dataset):
    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def main() -> None:
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    n = 20 * BATCH
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=n)
    x_dev = torch.from_numpy(x).to(device)
    for size in (224, 32):
        for policy in ("seed", "basic"):
            loader = DataLoader(NpyDataset(x, y, reference_transform(policy, size)), batch_size=BATCH, num_workers=0)

            def reference():
                for xb, _ in loader:
                    xb.to(device)
                if device.type == "cuda":
                    torch.cuda.synchronize()

            transform = BatchTransform(policy, size, (0.5,) * 3, (0.5,) * 3, channels_last=device.type == "cuda")
            order = torch.randperm(n, device=device)

            def ours():
                for i in range(0, n, BATCH):
                    transform(x_dev[order[i:i + BATCH]], train=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()

            ours()  # warm-up
            t_ref, t_ours = timed(reference, 2), timed(ours, 3)
            record("pipeline", policy=policy, size=size, batch=BATCH, device=str(device),
                   reference_images_per_s=round(n / t_ref), cvstudy_images_per_s=round(n / t_ours),
                   ratio=round(t_ref / t_ours, 1), goal=">= 10")


if __name__ == "__main__":
    main()
