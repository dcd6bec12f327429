"""Figures that runs log and reports show, and the one choice of matplotlib's backend: headless (Agg),
made before pyplot is imported; every figure cvstudy draws takes ``plt`` from here."""

from __future__ import annotations

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 -- after the backend is chosen

__all__ = ["confusion_figure", "per_class_figure", "plt", "restyle", "styled"]

# cvstudy's one plot style: white axes, light grid on value axes only, small legible text, legends
# without frames. Heat maps turn the grid off.
STYLE = {
    "axes.facecolor": "white",
    "axes.edgecolor": "#888888",
    "axes.grid": False,
    "grid.color": "#e3e3e3",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
}


def styled():
    """A context that draws in cvstudy's style and undoes any style change made inside it: Optuna's
    matplotlib plots switch the whole process to ggplot (grey axes, white grid lines) when they draw."""
    return plt.style.context(["default", STYLE])


def restyle(ax, integer_x: bool = False) -> None:
    """An Optuna plot's axes in cvstudy's style: white background, a light grid on the value axis,
    whole-number ticks on an x axis of trial numbers, the legend beside the plot, not over the data."""
    from matplotlib.ticker import MaxNLocator

    ax.set_facecolor("white")
    ax.grid(False)
    ax.grid(axis="y", color=STYLE["grid.color"])
    for spine in ax.spines.values():
        spine.set_color(STYLE["axes.edgecolor"])
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.get_legend() is not None:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def confusion_figure(matrix, labels, title: str = ""):
    """Row-normalised confusion matrix with counts, as a matplotlib figure: no grid across the cells,
    each count white on a dark cell and black on a light one."""
    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(labels)
    with styled():
        fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k), dpi=110)
        ax.grid(False)
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


PER_CLASS_BARS = (("test_precision", "test precision"), ("test_recall", "test recall"), ("test_f1", "test F1"))


def per_class_figure(table: dict[str, list], title: str = ""):
    """A run's per-class table (``results.per_class_table``) as bars: per class, test precision, recall
    and F1 side by side, the selected epoch's validation recall as a dot; classes top to bottom with
    their test image counts, so a long tail's rare classes read at a glance."""
    classes = [f"{name} ({n})" for name, n in zip(table["class"], table["test_images"])]
    k, height = len(classes), 0.8 / len(PER_CLASS_BARS)
    with styled():
        fig, ax = plt.subplots(figsize=(6.0, 1.0 + 0.45 * k), dpi=110)
        ax.grid(axis="x", color=STYLE["grid.color"])
        ax.set_axisbelow(True)
        for i, (key, label) in enumerate(PER_CLASS_BARS):
            offsets = np.arange(k) - 0.4 + (i + 0.5) * height
            ax.barh(offsets, table[key], height=height, label=label)
        ax.plot(table["val_recall"], np.arange(k), "o", color="black", markersize=4, label="val recall")
        ax.set_yticks(range(k), classes, fontsize=8)
        ax.invert_yaxis()  # class 0 on top, as in the confusion matrix
        ax.set_xlim(0, 1)
        ax.set_xlabel("value (0 to 1)")
        ax.set_ylabel("true class (test images)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title(title, fontsize=8)
        fig.tight_layout()
    return fig
