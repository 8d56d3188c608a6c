"""Stage `download`: the data set's images and labels, verified, as arrays in data/raw/<dataset>/.

`{train,test}_images.npy` uint8 (N, H, W) grey or (N, H, W, 3) RGB, `{train,test}_labels.npy`
int16, and `classes.json`, the class names in label order. The readers (pipeline/datasets/): the
IDX files of mnist and fashion_mnist, CIFAR-10's python archive (cifar10), CIFAR-10 as JPEG files
(cifar10_jpeg), and a folder of your own images (folder). The published data sets come from the
mirror named by WAVELET_DATA_MIRROR or their public sources, every file verified by its digests;
nothing is written unless all of it was read, and nothing is left on failure.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..datasets import Dataset, cifar10, idx_files, image_folder
from ..datasets.sources import MIRROR_ENV
from ..io import atomic_dir, stage_paths
from ..params import FolderParams, ImageParams
from ..progress import log

PARAMS = ("dataset", "image", "folder")
INPUTS: dict[str, str] = {}
OUTPUTS = {"raw": "data/raw/{dataset}"}


def load(dataset: str, image: ImageParams | None, folder: FolderParams | None) -> Dataset:
    mirror = os.environ.get(MIRROR_ENV)
    if dataset in idx_files.DATASETS:
        return idx_files.load(dataset, mirror)
    if dataset == "cifar10":
        return cifar10.load(mirror)
    if dataset == "cifar10_jpeg":
        return cifar10.load_jpeg(mirror)
    return image_folder.load(Path(folder.path), image.size, image.channels, folder.test_share, folder.seed)


def run(dataset: str, image: ImageParams | None = None, folder: FolderParams | None = None,
        **paths: str | Path) -> Path:
    """Write the data set into the folder `raw` (data/raw/<dataset>). `image` and `folder`, the
    params groups, are read by dataset folder only: the other data sets' images are what they are
    (params.py holds `image` to them)."""
    final = stage_paths(INPUTS, OUTPUTS, paths, dataset=dataset).raw
    data = load(dataset, image, folder)
    with atomic_dir(final) as tmp:
        data.save(tmp)
    log(f"wrote {final}: {', '.join(f'{len(images)} {split}' for split, (images, _) in data.splits.items())} "
        f"images of {len(data.classes)} classes")
    return final


def main(p, device: str) -> None:
    run(p.dataset, p.image, p.folder)
