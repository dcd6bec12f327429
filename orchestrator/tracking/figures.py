"""Figures that runs log and reports show, and the one choice of matplotlib's backend: headless (Agg),
made before pyplot is imported; every figure cvstudy draws takes ``plt`` from here."""

from __future__ import annotations

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 -- after the backend is chosen

__all__ = ["confusion_figure", "plt"]


def confusion_figure(matrix, labels, title: str = ""):
    """Row-normalised confusion matrix with counts, as a matplotlib figure."""
    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k), dpi=110)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if m[i, j]:
                ax.text(
                    j,
                    i,
                    f"{int(m[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(k), labels, fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}\n(colour: row-normalised; numbers: counts)", fontsize=8)
    fig.tight_layout()
    return fig
