"""Stage `download`: fetch the four IDX files of the dataset, verify them, store decoded arrays.

Sources are tried in order: the mirror named by WAVELET_DATA_MIRROR (a directory laid out like
`<mirror>/mnist/*.gz`, `<mirror>/fashion-mnist/*.gz`, or a URL prefix of that layout), Debian's
`dataset-fashion-mnist` package, then the canonical public servers. Every file is checked by the
SHA-256 of its decompressed bytes (gzip bytes differ between mirrors; the content does not).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..idx import SPLITS, parse_idx
from ..io import atomic_dir, stage_paths
from ..progress import log

MIRROR_ENV = "WAVELET_DATA_MIRROR"

# Folder name of each dataset in a mirror, and the canonical public sources (in order of preference).
MIRROR_FOLDER = {"mnist": "mnist", "fashion_mnist": "fashion-mnist"}
PARAMS = ("dataset",)
INPUTS: dict[str, str] = {}
OUTPUTS = {"raw": "data/raw/{dataset}"}
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
SPLIT_SIZES = {"train": 60000, "test": 10000}
RETRIES = 3
TIMEOUT_S = 60


class DownloadError(RuntimeError):
    """No source delivered a verified file; the message lists what was tried."""


class ChecksumError(DownloadError):
    def __init__(self, name: str, source: str, expected: str, actual: str):
        super().__init__(
            f"{name} from {source}: SHA-256 of the decompressed content is {actual}, expected {expected}"
        )


@dataclass(frozen=True)
class Source:
    """A directory or URL prefix that holds `<name>.gz` (or `<name>`) files."""

    location: str

    @property
    def is_url(self) -> bool:
        return "://" in self.location

    def fetch(self, name: str) -> tuple[bytes, str]:
        """Bytes of the file (gzip or plain) and where they came from."""
        if self.is_url:
            url = self.location.rstrip("/") + "/" + name + ".gz"
            return _fetch_url(url), url
        for candidate in (Path(self.location) / f"{name}.gz", Path(self.location) / name):
            if candidate.is_file():
                return candidate.read_bytes(), str(candidate)
        raise FileNotFoundError(f"{Path(self.location) / name}[.gz] does not exist")


def _fetch_url(url: str) -> bytes:
    last_error: Exception | None = None
    for attempt in range(RETRIES):
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                return response.read()
        except (urllib.error.URLError, OSError) as error:
            last_error = error
            if attempt + 1 < RETRIES:
                time.sleep(2**attempt)
    raise OSError(f"{url}: {last_error}")


def sources(dataset: str) -> list[Source]:
    found: list[Source] = []
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        base = mirror.rstrip("/")
        found.append(Source(f"{base}/{MIRROR_FOLDER[dataset]}"))
    found += [Source(d) for d in DEBIAN_DIRS.get(dataset, [])]
    found += [Source(u) for u in PUBLIC_URLS[dataset]]
    return found


def _decompress(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def fetch_verified(dataset: str, name: str) -> bytes:
    """Decompressed, checksum-verified bytes of one IDX file, from the first source that has it.

    A checksum mismatch is an error at once (a source that serves wrong data is not skipped over
    silently); a missing file or a network failure moves on to the next source.
    """
    expected = SHA256[dataset][name]
    tried = []
    for source in sources(dataset):
        try:
            raw, origin = source.fetch(name)
            content = _decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as error:
            tried.append(f"{source.location}: {error}")
            continue
        actual = hashlib.sha256(content).hexdigest()
        if actual != expected:
            raise ChecksumError(name, origin, expected, actual)
        log(f"{name}: verified from {origin}")
        return content
    raise DownloadError(
        f"could not fetch {name} for dataset {dataset!r}; sources tried: " + "; ".join(tried)
        + f". Set {MIRROR_ENV} to a directory (or URL prefix) holding "
        f"{MIRROR_FOLDER[dataset]}/{name}.gz, e.g. export {MIRROR_ENV}=/path/to/datasets"
    )


def run(dataset: str, **paths: str | Path) -> Path:
    """Write `{train,test}_{images,labels}.npy` into the folder `raw` (data/raw/<dataset>); nothing
    is left on failure."""
    final = stage_paths(INPUTS, OUTPUTS, paths, dataset=dataset).raw
    with atomic_dir(final) as tmp:
        for split in SPLITS:
            images = parse_idx(fetch_verified(dataset, FILES[f"{split}_images"]))
            labels = parse_idx(fetch_verified(dataset, FILES[f"{split}_labels"]))
            if images.shape != (SPLIT_SIZES[split], 28, 28) or labels.shape != (SPLIT_SIZES[split],):
                raise DownloadError(f"{split} split has shapes {images.shape} and {labels.shape}")
            np.save(tmp / f"{split}_images.npy", images.astype(np.uint8))
            np.save(tmp / f"{split}_labels.npy", labels.astype(np.int16))
    log(f"wrote {final}")
    return final


def main(p, device: str) -> None:
    run(p.dataset)
