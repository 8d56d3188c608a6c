"""IDX files (the MNIST container format) and the decoded arrays the pipeline stores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .io import InputError, load_labels, load_npy

SPLITS = ("train", "test")
DWT_IMAGE = "image.json"  # beside the dwt stage's coefficients: the images' height, width and class names

# IDX type codes (third byte of the magic number) to numpy dtypes; all multi-byte values are big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes) -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file into an array."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"not an IDX file: magic bytes {data[:4].hex()}")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"IDX file of shape {shape} should be {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_classes(folder: str | Path, producer: str = "download") -> list[str]:
    """The class names, in label order, of a folder the download stage (or one after it) wrote."""
    path = Path(folder) / "classes.json"
    try:
        classes = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "does not exist", producer) from None
    except (OSError, ValueError) as error:
        raise InputError(path, f"is not valid JSON ({error})", producer) from None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise InputError(path, "is not a non-empty list of class names", producer)
    return classes


def load_split(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8, or (N, H, W, 3) for RGB, and labels (N,) int16 of one split, from the dataset's folder as the
    download stage wrote it (`<folder>/<split>_images.npy`, labels within its classes.json; checked:
    InputError names a file that is not)."""
    folder = Path(folder)
    images = load_npy(folder / f"{split}_images.npy", "download")
    if images.ndim not in (3, 4) or images.shape[3:] not in ((), (3,)) or images.dtype != np.uint8 or not len(images):
        raise InputError(folder / f"{split}_images.npy", f"holds {images.dtype} of shape {images.shape}, "
                         "not (N, H, W) or (N, H, W, 3) uint8 images", "download")
    return images, load_labels(folder / f"{split}_labels.npy", len(images), len(read_classes(folder)), "download")
