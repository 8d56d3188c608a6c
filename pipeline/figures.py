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
    """images (rows, cols, H, W) in [0, 1] as a grey grid, or (rows, cols, H, W, 3) RGB."""
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell, rows * cell + (0.4 if title else 0)),
                             squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(np.clip(images[r, c], 0, 1), cmap="gray" if images.ndim == 4 else None, vmin=0, vmax=1,
                      interpolation="nearest")
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


def progressive_figure(language, encoded, picks, path: str | Path, row_labels: list[str], title: str,
                       originals: np.ndarray | None = None, show_positions: bool = False) -> None:
    """Sequences `picks` of `encoded`, each decoded after every stage of its language (bit-planes
    for wavelets), coarse to fine, one row each; `originals` (N, H, W) in [0, 1] (colour:
    (N, H, W, 3)) add a last column; `show_positions` adds a row under each with where that
    stage's tokens sit (i1, i2; colour: the luma's), at the image's scale."""
    decoded = [language.progressive(encoded, j) for j in picks]
    stages = max(len(names) for _, names, _ in decoded)
    names = max((names for _, names, _ in decoded), key=len)
    height, width, *channels = decoded[0][0].shape[1:]
    per_pick = 2 if show_positions else 1
    cells = np.zeros((per_pick * len(picks), stages + (originals is not None), height, width, *channels))
    rows = np.arange(height) * language.size // height
    cols = np.arange(width) * language.size // width
    labels = []
    for n, (j, (images, _, stage_of_token)) in enumerate(zip(picks, decoded)):
        r = per_pick * n
        cells[r, :len(images)] = images
        cells[r, len(images):stages] = images[-1]  # a shorter sequence is complete: repeat its image
        if originals is not None:
            cells[r, stages] = originals[n]
        labels.append(row_labels[n])
        if show_positions:
            seq = slice(encoded.offsets[j], encoded.offsets[j + 1])
            i1, i2, luma = encoded.i1[seq], encoded.i2[seq], encoded.component[seq] == 0
            for stage in range(len(images)):
                where = np.zeros((language.size, language.size))
                here = (stage_of_token == stage) & luma
                np.add.at(where, (i1[here], i2[here]), 1)
                cells[r + 1, stage] = (where / max(1.0, where.max()))[np.ix_(rows, cols)].reshape(
                    height, width, *[1] * len(channels))
            labels.append("token\npositions")
    image_grid(cells, path, labels, list(names) + (["original"] if originals is not None else []), title=title)


def heatmap(values: np.ndarray, row_names: list[str], col_names: list[str], ylabel: str, xlabel: str, title: str,
            path: str | Path) -> None:
    """A grid of numbers, annotated, the lowest outlined."""
    fig, ax = plt.subplots(figsize=(1.2 * len(col_names) + 2, 0.8 * len(row_names) + 1.5))
    ax.imshow(values, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(col_names)), col_names)
    ax.set_yticks(range(len(row_names)), row_names)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for (r, c), value in np.ndenumerate(values):
        ax.text(c, r, f"{value:.1f}", ha="center", va="center", color="white", fontsize=8)
    if np.isfinite(values).any():
        r, c = np.unravel_index(np.nanargmin(values), values.shape)
        ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_title(title, fontsize=9)
    save(fig, path)
