"""The data sets the download stage reads, one module per kind of source: `idx_files` (MNIST and
Fashion-MNIST), `cifar10` (CIFAR-10's python archive, and CIFAR-10 as JPEG files), `image_folder`
(a folder of your own images); `sources` fetches and verifies files. Each `load` returns a
`Dataset` built from verified bytes only."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """Per split (train, test): images uint8 (N, H, W) grey or (N, H, W, 3) RGB and labels int16
    (N,); and the class names in label order."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    classes: list[str]

    def shuffled(self, seed: int) -> "Dataset":
        """Each split in a seeded random order: a folder lists its images class by class, and the
        first N of a split (`dwt.limit`, `train_classifier.limit`) should hold every class, as the
        first N of MNIST's or CIFAR-10's own files do."""
        rng = np.random.default_rng(seed)
        order = {split: rng.permutation(len(labels)) for split, (_, labels) in self.splits.items()}
        return Dataset({split: (images[order[split]], labels[order[split]])
                        for split, (images, labels) in self.splits.items()}, self.classes)

    def save(self, folder: Path) -> None:
        """`{split}_images.npy`, `{split}_labels.npy` and `classes.json` in `folder`."""
        for split, (images, labels) in self.splits.items():
            np.save(folder / f"{split}_images.npy", images.astype(np.uint8))
            np.save(folder / f"{split}_labels.npy", labels.astype(np.int16))
        (folder / "classes.json").write_text(json.dumps(self.classes, indent=2, ensure_ascii=False) + "\n",
                                              encoding="utf-8")
