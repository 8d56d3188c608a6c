"""PNG figures for reports/ (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_file  # noqa: E402


def save(fig, path: str | Path) -> None:
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def image_grid(images: np.ndarray, path: str | Path, row_labels=None, col_labels=None,
               title: str | None = None, cell: float = 1.0) -> None:
    """images (rows, cols, H, W) in [0, 1] as a grey grid."""
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell, rows * cell + (0.4 if title else 0)),
                             squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(np.clip(images[r, c], 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col_labels is not None and r == 0:
                ax.set_title(col_labels[c], fontsize=7)
            if row_labels is not None and c == 0:
                ax.set_ylabel(row_labels[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    save(fig, path)


def histogram(series: dict[str, np.ndarray], path: str | Path, xlabel: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, values in series.items():
        ax.hist(values, bins=60, alpha=0.6, density=True, label=f"{name} (mean {values.mean():.1f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    save(fig, path)


def bars(names: list[str], values: list[float], path: str | Path, xlabel: str, ylabel: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(names, values, color="#4c72b0")
    ax.set_ylim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    save(fig, path)
