from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest

from pipeline.datasets import idx_files
from pipeline.datasets.sources import MIRROR_ENV, ChecksumError, DownloadError
from pipeline.stages import download


@pytest.fixture
def offline(monkeypatch):
    """No public servers or system packages: only the mirror a test sets up counts."""
    monkeypatch.setattr(idx_files, "PUBLIC_URLS", {name: [] for name in idx_files.PUBLIC_URLS})
    monkeypatch.setattr(idx_files, "DEBIAN_DIRS", {})


def test_mirror_gives_verified_arrays(mnist_raw):
    folder = mnist_raw
    assert sorted(p.name for p in folder.iterdir()) == [
        "classes.json", "test_images.npy", "test_labels.npy", "train_images.npy", "train_labels.npy"]
    assert json.loads((folder / "classes.json").read_text()) == [str(digit) for digit in range(10)]
    train = np.load(folder / "train_images.npy")
    labels = np.load(folder / "train_labels.npy")
    assert train.shape == (60000, 28, 28) and train.dtype == np.uint8
    assert labels.shape == (60000,) and set(np.unique(labels)) == set(range(10))
    assert np.load(folder / "test_images.npy").shape == (10000, 28, 28)
    assert np.bincount(labels)[1] == 6742  # the canonical count of ones in MNIST train


def test_corrupted_mirror_file_is_rejected_and_nothing_left(tmp_path, mirror, monkeypatch, offline):
    bad = tmp_path / "mirror" / "mnist"
    shutil.copytree(mirror / "mnist", bad)
    name = "t10k-labels-idx1-ubyte"
    content = bytearray(gzip.decompress((bad / f"{name}.gz").read_bytes()))
    content[100] ^= 1
    (bad / f"{name}.gz").write_bytes(gzip.compress(bytes(content)))
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    out = tmp_path / "raw" / "mnist"
    with pytest.raises(ChecksumError) as error:
        download.run("mnist", raw=out)
    message = str(error.value)
    assert name in message and idx_files.SHA256["mnist"][name] in message
    import hashlib
    assert hashlib.sha256(bytes(content)).hexdigest() in message
    assert not out.exists() and (not out.parent.exists() or list(out.parent.rglob("*")) == [])


def test_no_source_lists_what_was_tried(tmp_path, monkeypatch, offline):
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "empty"))
    with pytest.raises(DownloadError) as error:
        download.run("fashion_mnist", raw=tmp_path / "raw" / "fashion_mnist")
    message = str(error.value)
    assert str(tmp_path / "empty" / "fashion-mnist") in message
    assert MIRROR_ENV in message
    assert not (tmp_path / "raw" / "fashion_mnist").exists()


def test_uncompressed_files_and_fashion_mnist(tmp_path, mirror, monkeypatch, offline):
    # Laid out like Debian's dataset-fashion-mnist: plain IDX files are accepted as well as .gz.
    plain = tmp_path / "debian"
    plain.mkdir()
    for gz in (mirror / "fashion-mnist").glob("*.gz"):
        (plain / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.setattr(idx_files, "DEBIAN_DIRS", {"fashion_mnist": [str(plain)]})
    folder = download.run("fashion_mnist", raw=tmp_path / "raw" / "fashion_mnist")
    assert folder == tmp_path / "raw" / "fashion_mnist"
    assert np.load(folder / "test_labels.npy").shape == (10000,)


def test_sources_order():
    found = [s.location for s in idx_files.sources("fashion_mnist", "https://example.org/datasets/")]
    assert found[0] == "https://example.org/datasets/fashion-mnist"
    assert found[1] == "/usr/share/datasets/fashion-mnist"
    assert found[2:] == idx_files.PUBLIC_URLS["fashion_mnist"]
