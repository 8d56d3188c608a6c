"""A folder of your own images as a data set (dataset folder), and the decoding of one image.

The folder holds one subfolder per class (`<path>/<class>/*.png`; classes in sorted order of the
folder names) or the images themselves (one class, "all": an unconditional data set). If it holds
`train/` and `test/`, those are the split (with the same class folders); otherwise a seeded share
of each class is the test split. Files with other extensions (README.txt, .DS_Store) and hidden
entries are skipped and counted; an image file that does not decode is an error naming it.

Each image is converted to grey ("L") or RGB, transparent pixels laid over black (a transparent
pixel's stored colour is arbitrary), 16-bit grey scaled to 8 bits, then scaled with Lanczos
resampling so that its shorter side is the target size and centre-cropped to a square.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..io import InputError
from ..progress import log, track
from . import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
UNCONDITIONAL = "all"  # the one class of a folder without class folders
MODES = {1: "L", 3: "RGB"}  # image.channels -> Pillow mode


def decode(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """An opened image as uint8 (size, size) grey or (size, size, 3) RGB."""
    if image.mode.startswith("I"):  # 16-bit grey: Pillow's own conversion would clip at 255
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int64) >> 8, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    image = ImageOps.fit(image.convert(MODES[channels]), (size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def _read(path: Path, size: int, channels: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return decode(image, size, channels)
    except Exception as error:  # noqa: BLE001 (Pillow's decoders raise many kinds of errors on a damaged file)
        raise InputError(path, f"is not a readable image ({type(error).__name__}: {error})",
                         fix="fix or remove it") from None


def _entries(folder: Path) -> tuple[list[Path], list[Path], int]:
    """The class folders and the image files directly in `folder` (sorted), and how many entries
    were skipped (hidden, or files of other extensions)."""
    visible = sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))
    folders = [entry for entry in visible if entry.is_dir()]
    images = [entry for entry in visible if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES]
    return folders, images, len(list(folder.iterdir())) - len(folders) - len(images)


def list_classes(folder: Path) -> tuple[dict[str, list[Path]], int]:
    """Class name -> its image files (classes and files sorted by name), and how many entries were
    skipped; InputError for an empty folder or class folder."""
    folders, images, skipped = _entries(folder)
    if folders and images:
        raise InputError(folder, f"holds both class folders ({folders[0].name}, ...) and images ({images[0].name}, "
                         "...)", fix="put every image in a class folder, or remove the folders")
    if not folders:
        if not images:
            raise InputError(folder, f"holds no images ({', '.join(IMAGE_SUFFIXES)})",
                             fix="add images or class folders")
        return {UNCONDITIONAL: images}, skipped
    classes = {}
    for class_folder in folders:
        nested, classes[class_folder.name], class_skipped = _entries(class_folder)
        skipped += class_skipped + len(nested)
        if not classes[class_folder.name]:
            raise InputError(class_folder, f"is a class folder without images ({', '.join(IMAGE_SUFFIXES)})",
                             fix="add images or remove it")
    return classes, skipped


def split_classes(classes: dict[str, list[Path]], test_share: float,
                  seed: int) -> dict[str, dict[str, list[Path]]]:
    """A seeded split of each class: round(test_share x its images) in test, at least one in each split."""
    rng = np.random.default_rng(seed)
    splits: dict[str, dict[str, list[Path]]] = {"train": {}, "test": {}}
    for name, files in classes.items():
        if len(files) < 2:
            raise InputError(files[0].parent, f"class {name!r} has {len(files)} image; a train and a test split "
                             "need at least 2", fix="add images to it")
        n_test = min(max(1, round(test_share * len(files))), len(files) - 1)
        in_test = set(rng.choice(len(files), n_test, replace=False).tolist())
        splits["test"][name] = [file for i, file in enumerate(files) if i in in_test]
        splits["train"][name] = [file for i, file in enumerate(files) if i not in in_test]
    return splits


def _arrays(classes: dict[str, list[Path]], size: int, channels: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    files = [(label, path) for label, paths in enumerate(classes.values()) for path in paths]
    images = np.stack([_read(path, size, channels) for _, path in track(files, f"{split} images")])
    return images, np.array([label for label, _ in files], dtype=np.int16)


def load(folder: Path, size: int, channels: int, test_share: float, seed: int) -> Dataset:
    """The images of `folder`, size x size, grey (channels 1) or RGB (3), each split in an order
    shuffled with `seed`."""
    if (folder / "train").is_dir() != (folder / "test").is_dir():
        raise InputError(folder, "holds only one of train/ and test/", fix="give it both (the split) or neither")
    if (folder / "train").is_dir():
        (train, skipped_train), (test, skipped_test) = list_classes(folder / "train"), list_classes(folder / "test")
        if list(train) != list(test):
            raise InputError(folder, f"train/ has the classes {', '.join(train)} but test/ has {', '.join(test)}",
                             fix="give both the same class folders")
        skipped = skipped_train + skipped_test + len(list(folder.iterdir())) - 2  # what sits beside train/ and test/
        splits = {"train": train, "test": test}
    else:
        classes, skipped = list_classes(folder)
        splits = split_classes(classes, test_share, seed)
    log(f"{folder}: {sum(len(files) for files in splits['train'].values())} train and "
        f"{sum(len(files) for files in splits['test'].values())} test images in {len(splits['train'])} classes; "
        f"skipped {skipped} entries that are not image files or are hidden")
    return Dataset({split: _arrays(classes, size, channels, split) for split, classes in splits.items()},
                   list(splits["train"])).shuffled(seed)
