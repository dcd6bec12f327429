"""``cvstudy data check``: validate a dataset as training does, summarise it, draw samples per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from cvstudy.trainers.data import load_dataset

from ..tracking.figures import plt


def data_check(
    directory: str | None, out: str | None = None, per_class: int = 8, seed: int = 0, console: Console | None = None
) -> Path:
    console = console or Console()
    d = load_dataset(directory, seed=seed)
    console.print(f"[green]ok[/]: {d.source}")
    table = Table(title=f"{d.num_classes} classes, images {d.image_size}x{d.image_size}x3 uint8")
    for col in ("class", "train", "val", "test"):
        table.add_column(col, justify="right")
    counts = [np.bincount(y, minlength=d.num_classes) for y in (d.train_y, d.val_y, d.test_y)]
    for c in range(d.num_classes):
        table.add_row(str(c), *(str(int(n[c])) for n in counts))
    table.add_row("total", *(str(int(n.sum())) for n in counts))
    console.print(table)
    full = counts[0] + counts[1]
    console.print(
        f"train imbalance ratio (largest / smallest class): {full.max() / max(full.min(), 1):.1f}; "
        f"test imbalance ratio: {counts[2].max() / max(counts[2].min(), 1):.1f}"
    )
    path = Path(out or "reports/data/samples.png")
    path.parent.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    x, y = np.concatenate([d.train_x, d.val_x]), np.concatenate([d.train_y, d.val_y])
    fig, axes = plt.subplots(d.num_classes, per_class, figsize=(per_class * 0.9, d.num_classes * 0.95), squeeze=False)
    for c in range(d.num_classes):
        idx = rng.permutation(np.flatnonzero(y == c))[:per_class]
        for j, ax in enumerate(axes[c]):
            ax.axis("off")
            if j < len(idx):
                ax.imshow(x[idx[j]], interpolation="nearest")
        axes[c][0].set_title(f"class {c} (n={full[c]})", fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    console.print(f"wrote {path}")
    return path
