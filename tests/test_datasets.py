"""The download stage's data sets beyond the IDX files: CIFAR-10's python archive (in its official
format, written here), CIFAR-10 as JPEG files (the mirror's real test split), and a user's image
folder (written here with Pillow, hostile parts included). Every source verified or refused with
one line naming the file; nothing written on failure."""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import plain_params
from PIL import Image
from typer.testing import CliRunner

from pipeline import params
from pipeline.cli import app
from pipeline.datasets import cifar10, image_folder
from pipeline.datasets.sources import MIRROR_ENV, ChecksumError
from pipeline.io import InputError
from pipeline.stages import download

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# The committed figures' MNIST arrays (data/raw/mnist in dvc.lock before classes.json was added).
MNIST_MD5 = {"train_images.npy": "6e5236d1fa7110b7d4c75d3822137908",
             "train_labels.npy": "dffea18b4ea22cd987304e6309c007f6",
             "test_images.npy": "7942b66f2197f22a8ed486c6bc205255",
             "test_labels.npy": "20a4caeeaa85a07ed75c82c04991a0b3"}


def test_mnist_arrays_stay_byte_identical(mnist_raw):
    for name, md5 in MNIST_MD5.items():
        assert hashlib.md5((mnist_raw / name).read_bytes()).hexdigest() == md5, name


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    archive.addfile(member, io.BytesIO(data))


def _cifar_archive(path: Path, per_batch: int = 2) -> None:
    """A small cifar-10-python.tar.gz in the official format: pickled dicts with bytes keys, one
    row of R, G and B planes (32 x 32 each, row-major) per image. Image 0 of data_batch_3 has one
    pixel, (y 1, x 2), of R 10, G 20, B 30; every other pixel is 0."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        meta = {b"label_names": [name.encode() for name in CIFAR_CLASSES], b"num_vis": 3072}
        _add(archive, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
        for b, name in enumerate([*cifar10.BATCHES["train"], "test_batch"]):
            rows = np.zeros((per_batch, 3072), np.uint8)
            if name == "data_batch_3":
                rows[0, [0 * 1024 + 34, 1 * 1024 + 34, 2 * 1024 + 34]] = 10, 20, 30  # 34 = 1 * 32 + 2
            batch = {b"batch_label": name.encode(), b"labels": [(b + i) % 10 for i in range(per_batch)],
                     b"data": rows, b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
            _add(archive, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
    (path / "cifar10").mkdir(parents=True)
    (path / "cifar10" / "cifar-10-python.tar.gz").write_bytes(buffer.getvalue())


@pytest.fixture
def cifar_mirror(tmp_path, monkeypatch) -> Path:
    mirror = tmp_path / "mirror"
    _cifar_archive(mirror)
    data = (mirror / "cifar10" / "cifar-10-python.tar.gz").read_bytes()
    monkeypatch.setattr(cifar10, "MD5", hashlib.md5(data).hexdigest())
    monkeypatch.setattr(cifar10, "SHA256", hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(cifar10, "URL_PREFIX", "http://127.0.0.1:9/")  # never the network
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    return mirror


def test_cifar10_archive_gives_rgb_images_pixel_exact(tmp_path, cifar_mirror):
    out = download.run("cifar10", raw=tmp_path / "raw" / "cifar10")
    train, test = np.load(out / "train_images.npy"), np.load(out / "test_images.npy")
    assert train.shape == (10, 32, 32, 3) and test.shape == (2, 32, 32, 3) and train.dtype == np.uint8
    # Batches in order: data_batch_3's first image is the fifth of the training split.
    assert train[4, 1, 2].tolist() == [10, 20, 30]
    assert np.count_nonzero(train) == 3
    assert np.load(out / "train_labels.npy").tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert np.load(out / "test_labels.npy").dtype == np.int16
    assert json.loads((out / "classes.json").read_text()) == CIFAR_CLASSES


def test_corrupted_cifar10_archive_is_refused_and_nothing_left(tmp_path, cifar_mirror):
    archive = cifar_mirror / "cifar10" / "cifar-10-python.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 1
    archive.write_bytes(bytes(data))
    out = tmp_path / "raw" / "cifar10"
    with pytest.raises(ChecksumError) as error:
        download.run("cifar10", raw=out)
    message = str(error.value)
    assert str(archive) in message and cifar10.MD5 in message and hashlib.md5(data).hexdigest() in message
    assert len(message.splitlines()) == 1
    assert not out.exists() and list(out.parent.glob("*")) == []


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, "JPEG", quality=75)
    return buffer.getvalue()


def test_cifar10_jpeg_real_test_split_and_a_small_train_split(tmp_path, mirror, monkeypatch):
    # The real test split (10,000 images, a few seconds); a train tar of one flat-coloured image
    # per class written here, in the same layout (decoding all 50,000 real ones takes too long).
    folder = tmp_path / "mirror" / cifar10.JPEG_FOLDER
    folder.mkdir(parents=True)
    (folder / "test.tar.gz").symlink_to(mirror / cifar10.JPEG_FOLDER / "test.tar.gz")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for label, name in reversed(list(enumerate(CIFAR_CLASSES))):  # member order does not matter
            _add(archive, f"{name}/0001.jpg", _jpeg((25 * label, 0, 255 - 25 * label)))
    (folder / "train.tar").write_bytes(buffer.getvalue())
    monkeypatch.setitem(cifar10.JPEG_SHA256, "train", hashlib.sha256(buffer.getvalue()).hexdigest())
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    out = download.run("cifar10_jpeg", raw=tmp_path / "raw" / "cifar10_jpeg")
    test, labels = np.load(out / "test_images.npy"), np.load(out / "test_labels.npy")
    assert test.shape == (10000, 32, 32, 3) and test.dtype == np.uint8 and labels.dtype == np.int16
    assert np.bincount(labels).tolist() == [1000] * 10
    assert len(np.unique(labels[:100])) == 10  # shuffled: the first images of a split hold every class
    assert json.loads((out / "classes.json").read_text()) == CIFAR_CLASSES
    train = np.load(out / "train_images.npy").astype(int)
    train_labels = np.load(out / "train_labels.npy")
    assert sorted(train_labels.tolist()) == list(range(10))
    expected = np.array([(25 * label, 0, 255 - 25 * label) for label in train_labels])
    assert np.abs(train.mean(axis=(1, 2)) - expected).max() < 4  # JPEG-compressed flat colours


# --- a user's image folder ---------------------------------------------------------------------

IMAGE = params.ImageParams(size=16, channels=1)
FOLDER = {"test_share": 0.1, "seed": 0}


def _save(path: Path, image: Image.Image, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)


def _mixed_folder(root: Path) -> Path:
    """Two classes of images of every kind of mode and size, and files that are not images."""
    rng = np.random.default_rng(0)

    def noise(*shape: int) -> np.ndarray:
        return rng.integers(0, 256, shape, dtype=np.uint8)

    _save(root / "cat" / "rgba.png", Image.fromarray(noise(30, 40, 4)))
    _save(root / "cat" / "palette.png", Image.fromarray(noise(20, 20, 3)).convert("P"))
    _save(root / "cat" / "grey.jpg", Image.fromarray(noise(64, 48)))
    _save(root / "cat" / "anim.gif", Image.fromarray(noise(17, 17, 3)).convert("P"))
    _save(root / "dog" / "rgb.bmp", Image.fromarray(noise(50, 60, 3)))
    _save(root / "dog" / "strip.PNG", Image.fromarray(noise(200, 3, 3)))
    _save(root / "dog" / "photo.webp", Image.fromarray(noise(33, 31, 3)))
    (root / "README.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / "dog" / "notes.md").write_text("not an image either")
    return root


def _folder(path: Path, **changes) -> params.FolderParams:
    return params.FolderParams(path=str(path), **{**FOLDER, **changes})


@pytest.mark.parametrize("channels,shape", [(1, (16, 16)), (3, (16, 16, 3))])
def test_folder_of_mixed_modes_and_sizes_lands_at_one_shape(tmp_path, channels, shape):
    root = _mixed_folder(tmp_path / "images")
    image = params.ImageParams(size=16, channels=channels)
    out = download.run("folder", image, _folder(root), raw=tmp_path / "raw" / "folder")
    train, test = np.load(out / "train_images.npy"), np.load(out / "test_images.npy")
    assert train.shape[1:] == test.shape[1:] == shape and train.dtype == np.uint8
    assert len(train) + len(test) == 7  # README.txt, .DS_Store and notes.md skipped
    labels = np.load(out / "test_labels.npy")
    assert sorted(labels.tolist()) == [0, 1]  # one test image per class (10% of 3 or 4, at least one)
    assert json.loads((out / "classes.json").read_text()) == ["cat", "dog"]


def test_decoding_converts_16_bit_alpha_and_strips_as_documented():
    sixteen = Image.fromarray(np.full((20, 20), 128 * 257, np.uint16))  # mode I;16
    assert (image_folder.decode(sixteen, 8, 1) == 128).all()  # Pillow's own conversion gives 255
    transparent_red = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    assert (image_folder.decode(transparent_red, 8, 3) == 0).all()  # laid over black
    strip = np.zeros((200, 3, 3), np.uint8)
    strip[:, :, 0] = 255
    strip[90:110, :] = (0, 255, 0)  # the centre of a tall strip is what the square crop keeps
    out = image_folder.decode(Image.fromarray(strip), 16, 3)
    assert out.shape == (16, 16, 3) and (out[..., 1] > 200).all() and (out[..., 0] < 50).all()


def test_two_runs_give_identical_arrays(tmp_path):
    root = _mixed_folder(tmp_path / "images")
    first = download.run("folder", IMAGE, _folder(root), raw=tmp_path / "a")
    second = download.run("folder", IMAGE, _folder(root), raw=tmp_path / "b")
    for name in ("train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy", "classes.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def _flat(root: Path, names: list[str]) -> None:
    for name in names:
        _save(root / name, Image.new("L", (10, 10), 100))


def test_train_and_test_folders_are_the_split_and_a_flat_folder_is_one_class(tmp_path):
    _flat(tmp_path / "split", ["train/a/1.png", "train/a/2.png", "train/b/1.png", "test/a/9.png", "test/b/9.png"])
    out = download.run("folder", IMAGE, _folder(tmp_path / "split"), raw=tmp_path / "raw1")
    assert sorted(np.load(out / "train_labels.npy").tolist()) == [0, 0, 1]
    assert sorted(np.load(out / "test_labels.npy").tolist()) == [0, 1]
    _flat(tmp_path / "flat", [f"{i}.png" for i in range(5)])
    out = download.run("folder", IMAGE, _folder(tmp_path / "flat", test_share=0.4), raw=tmp_path / "raw2")
    assert json.loads((out / "classes.json").read_text()) == ["all"]
    assert np.load(out / "test_labels.npy").tolist() == [0, 0] and len(np.load(out / "train_labels.npy")) == 3


def _refused(tmp_path: Path, root: Path, *fragments: str) -> None:
    out = tmp_path / "raw" / "folder"
    with pytest.raises(InputError) as error:
        download.run("folder", IMAGE, _folder(root), raw=out)
    message = str(error.value)
    assert len(message.splitlines()) == 1 and all(fragment in message for fragment in fragments), message
    assert not out.exists()


def test_hostile_folders_are_refused_naming_the_file(tmp_path):
    _flat(tmp_path / "empty_class", ["a/1.png", "a/2.png"])
    (tmp_path / "empty_class" / "b").mkdir()
    (tmp_path / "empty_class" / "b" / "notes.txt").write_text("no images here")
    _refused(tmp_path, tmp_path / "empty_class", str(tmp_path / "empty_class" / "b"), "class folder without images")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "README.txt").write_text("")
    _refused(tmp_path, tmp_path / "nothing", str(tmp_path / "nothing"), "holds no images")
    _flat(tmp_path / "lonely", ["a/1.png", "a/2.png", "b/1.png"])
    _refused(tmp_path, tmp_path / "lonely", "class 'b' has 1 image")
    _flat(tmp_path / "mismatch", ["train/a/1.png", "train/b/1.png", "test/a/1.png", "test/c/1.png"])
    _refused(tmp_path, tmp_path / "mismatch", "train/ has the classes a, b but test/ has a, c")


def test_a_corrupt_image_stops_the_cli_with_one_line_and_nothing_written(tmp_path, monkeypatch):
    root = tmp_path / "images"
    _flat(root, ["a/1.png", "a/2.png", "b/1.png", "b/2.png"])
    good = (root / "b" / "2.png").read_bytes()
    (root / "b" / "2.png").write_bytes(good[:len(good) // 2])  # truncated
    raw = plain_params()
    raw.update(dataset="folder", image={"size": 16, "channels": 3}, folder={"path": str(root), **FOLDER})
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["download"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and str(root / "b" / "2.png") in lines[0] and "not a readable image" in lines[0]
    assert not Path("data").exists() or list(Path("data").rglob("*.npy")) == []
    (root / "b" / "2.png").write_bytes(good)  # repaired: colour at 16 x 16 is written ...
    result = CliRunner().invoke(app, ["download"])
    assert result.exit_code == 0, result.output
    assert np.load("data/raw/folder/train_images.npy").shape[1:] == (16, 16, 3)
    result = CliRunner().invoke(app, ["dwt"])  # ... transformed by dwt ...
    assert result.exit_code == 0, result.output
    assert np.load("data/dwt/train_chroma.npy").shape[1:] == (2, 16, 16)
    result = CliRunner().invoke(app, ["tokenize"])  # ... tokenized in the colour language ...
    assert result.exit_code == 0, result.output
    assert "component" in pq.read_schema(next(Path("data/tokens/train").glob("*.parquet"))).names
    result = CliRunner().invoke(app, ["train_classifier"])  # ... and classified in RGB
    assert result.exit_code == 0, result.output
    assert json.loads(Path("reports/classifier.json").read_text())["train_images"] == 2  # the folder's four images, split two and two

