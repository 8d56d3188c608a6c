"""CIFAR-10 (Krizhevsky, 2009): 50,000 + 10,000 colour images of 32 x 32 in ten classes.

`cifar10`: the official python archive, `cifar-10-python.tar.gz`, from the mirror
(`$WAVELET_DATA_MIRROR/cifar10/`) or its authors' server, verified by the MD5 they publish and by
its SHA-256 before anything in it is read (its batches are pickles, which run code when loaded).

`cifar10_jpeg`: the same images as JPEG files at quality 75 (`$WAVELET_DATA_MIRROR/cifar10-jpeg/
{train,test}.tar.gz`, members `<class>/<nnnn>.jpg`), verified by the SHA-256 of each decompressed
tar. Not the official pixels: its figures are CIFAR-10-JPEG figures, not comparable with published
CIFAR-10 ones.
"""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import PurePosixPath

import numpy as np
from PIL import Image

from ..idx import SPLITS
from ..progress import log, track
from . import Dataset
from .image_folder import decode
from .sources import MIRROR_ENV, Source, decompress, fetch, mirror_source, verify

SIDE = 32
ARCHIVE = "cifar-10-python.tar"  # fetched as .tar.gz, the archive as published
URL_PREFIX = "https://www.cs.toronto.edu/~kriz/"
MD5 = "c58f30108f718f92721af3b95e74349a"  # as its authors publish it
SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"  # the same archive (as Keras pins it)
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
MEMBERS = "cifar-10-batches-py"  # the folder of the batches in the archive

JPEG_FOLDER = "cifar10-jpeg"  # in the mirror
# SHA-256 of the decompressed tars (the mirror's SHA256SUMS.decompressed).
JPEG_SHA256 = {
    "train": "80c0d6e814a408c6743e79de0ce807ca9bfb1f2eda8b646aefb92cf54137b8e9",
    "test": "eb70d24168cbab0191879d2d3e4220dc5df457ead63053722964519dd3099cc1",
}


def _unpickle(archive: tarfile.TarFile, name: str) -> dict:
    member = archive.extractfile(f"{MEMBERS}/{name}")
    return pickle.loads(member.read(), encoding="bytes")  # safe: the archive's digests were verified


def _batches(archive: tarfile.TarFile, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        batch = _unpickle(archive, name)
        rows = np.asarray(batch[b"data"], dtype=np.uint8)  # one row per image: its R, G and B planes, row-major
        images.append(rows.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int16))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def load(mirror: str | None) -> Dataset:
    sources = [*mirror_source(mirror, "cifar10"), Source(URL_PREFIX)]
    hint = f"Set {MIRROR_ENV} to a directory holding cifar10/{ARCHIVE}.gz"
    data, origin = fetch(sources, ARCHIVE, hint)
    verify(data, origin, {"md5": MD5, "sha256": SHA256}, "file")
    log(f"{ARCHIVE}.gz: verified from {origin}")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        classes = [name.decode() for name in _unpickle(archive, "batches.meta")[b"label_names"]]
        return Dataset({split: _batches(archive, names) for split, names in BATCHES.items()}, classes)


def _jpeg_split(content: bytes, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images, labels and class names (sorted folder names) of one verified tar of `<class>/<file>.jpg`."""
    with tarfile.open(fileobj=io.BytesIO(content)) as archive:
        members = sorted(((PurePosixPath(m.name).parts, m) for m in archive.getmembers() if m.isfile()),
                         key=lambda pair: pair[0])
        classes = sorted({parts[0] for parts, _ in members})
        images, labels = [], []
        for parts, member in track(members, f"{split} images"):
            with Image.open(archive.extractfile(member)) as image:
                images.append(decode(image, SIDE, 3))
            labels.append(classes.index(parts[0]))
    return np.stack(images), np.array(labels, dtype=np.int16), classes


def load_jpeg(mirror: str | None) -> Dataset:
    hint = f"Set {MIRROR_ENV} to a directory holding {JPEG_FOLDER}/train.tar.gz and test.tar.gz"
    splits = {}
    for split in SPLITS:
        data, origin = fetch(mirror_source(mirror, JPEG_FOLDER), f"{split}.tar", hint)
        content = decompress(data, origin)
        verify(content, origin, {"sha256": JPEG_SHA256[split]}, "decompressed content")
        log(f"{split}.tar.gz: verified from {origin}")
        images, labels, classes = _jpeg_split(content, split)
        splits[split] = images, labels
    # The same ten class folders in both tars (their digests pin them), read class by class.
    return Dataset(splits, classes).shuffled(seed=0)
