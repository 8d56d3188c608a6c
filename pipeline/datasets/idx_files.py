"""MNIST and Fashion-MNIST: the four IDX files of each, verified, decoded.

Sources in order: the mirror (`$WAVELET_DATA_MIRROR/mnist/*.gz`, `.../fashion-mnist/*.gz`, a folder
or a URL prefix), Debian's `dataset-fashion-mnist` package, then the canonical public servers.
Every file is checked by the SHA-256 of its decompressed bytes (gzip bytes differ between
mirrors; the content does not).
"""
from __future__ import annotations

from ..idx import SPLITS, parse_idx
from ..progress import log
from . import Dataset
from .sources import MIRROR_ENV, DownloadError, Source, decompress, fetch, mirror_source, verify

DATASETS = ("mnist", "fashion_mnist")
# Folder name of each data set in a mirror, and the canonical public sources (in order of preference).
MIRROR_FOLDER = {"mnist": "mnist", "fashion_mnist": "fashion-mnist"}
PUBLIC_URLS = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion_mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ],
}
DEBIAN_DIRS = {"fashion_mnist": ["/usr/share/datasets/fashion-mnist"]}

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# SHA-256 of the decompressed IDX content.
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
# Class names in label order (Fashion-MNIST's as its authors name them).
CLASSES = {
    "mnist": [str(digit) for digit in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}
SPLIT_SIZES = {"train": 60000, "test": 10000}


def sources(dataset: str, mirror: str | None) -> list[Source]:
    return [*mirror_source(mirror, MIRROR_FOLDER[dataset]), *map(Source, DEBIAN_DIRS.get(dataset, [])),
            *map(Source, PUBLIC_URLS[dataset])]


def fetch_verified(dataset: str, name: str, mirror: str | None) -> bytes:
    """Decompressed, checksum-verified bytes of one IDX file, from the first source that has it."""
    hint = (f"Set {MIRROR_ENV} to a directory (or URL prefix) holding {MIRROR_FOLDER[dataset]}/{name}.gz, "
            f"e.g. export {MIRROR_ENV}=/path/to/datasets")
    data, origin = fetch(sources(dataset, mirror), name, hint)
    content = decompress(data, origin)
    verify(content, origin, {"sha256": SHA256[dataset][name]}, "decompressed content")
    log(f"{name}: verified from {origin}")
    return content


def load(dataset: str, mirror: str | None) -> Dataset:
    splits = {}
    for split in SPLITS:
        images = parse_idx(fetch_verified(dataset, FILES[f"{split}_images"], mirror))
        labels = parse_idx(fetch_verified(dataset, FILES[f"{split}_labels"], mirror))
        if images.shape != (SPLIT_SIZES[split], 28, 28) or labels.shape != (SPLIT_SIZES[split],):
            raise DownloadError(f"{split} split has shapes {images.shape} and {labels.shape}")
        splits[split] = images, labels
    return Dataset(splits, CLASSES[dataset])
