from __future__ import annotations

import numpy as np
import pytest

from pipeline import formats, idx, wavelets
from pipeline.stages import dwt


@pytest.mark.parametrize("wavelet", ["haar", "bior4.4", "db3", "sym5", "coif2", "rbio3.1"])
def test_round_trip_on_real_images(mnist_raw, wavelet):
    images, _ = idx.load_split(mnist_raw, "test")
    coeffs, worst = dwt.transform(images[:500], wavelet)
    assert coeffs.shape == (500, 32, 32) and coeffs.dtype == np.float64
    assert worst < dwt.RECONSTRUCTION_TOLERANCE
    pixels = wavelets.crop(wavelets.inverse(coeffs, wavelet), 28, 28)
    assert np.array_equal(wavelets.to_uint8(pixels), images[:500])


def test_haar_layout_matches_the_spec(mnist_raw):
    images, _ = idx.load_split(mnist_raw, "test")
    padded = wavelets.pad(images[:50])
    # Centred: rows and columns 2..29 of 32.
    assert np.array_equal(padded[:, 2:30, 2:30] * 255, images[:50])
    coeffs = wavelets.forward(padded, "haar")
    # Orthonormal Haar, 4 levels: each LL coefficient is the sum of its 16 x 16 quadrant / 16.
    quadrants = padded.reshape(50, 2, 16, 2, 16).sum(axis=(2, 4)) / 16
    np.testing.assert_allclose(coeffs[:, :2, :2], quadrants, atol=1e-12)
    assert np.abs(coeffs).max() <= 16
    # Finest bottom-right subband (diagonal detail) sits at [16:32, 16:32]: a horizontal edge
    # has no diagonal component, so only top-right / bottom-left move for a pure row image.
    row_image = np.zeros((1, 32, 32))
    row_image[0, 3, :] = 1.0
    c = wavelets.forward(row_image, "haar")[0]
    assert np.abs(c[16:32, 16:32]).max() < 1e-12 and np.abs(c[16:32, 0:16]).max() > 0.1


def test_stage_writes_coeffs_labels_and_metrics(mnist_raw, tmp_path):
    metrics = dwt.run("mnist", "bior4.4", 300, raw=mnist_raw, dwt=tmp_path / "dwt", metrics=tmp_path / "dwt.json")
    coeffs, labels = formats.read_dwt(tmp_path / "dwt", "train")
    assert coeffs.shape == (300, 32, 32) and labels.shape == (300,)
    assert metrics["test"]["max_reconstruction_error"] < 1e-9
    assert (tmp_path / "dwt.json").is_file()


def test_the_colour_transform_is_jpeg2000s_ict_pinned_by_numbers():
    pixels = np.array([[[[255, 0, 0], [255, 255, 255]], [[0, 0, 255], [0, 0, 0]]]], np.uint8)  # red, white; blue, black
    components = wavelets.to_components(pixels)
    np.testing.assert_allclose(components[0, :, 0, 0], [0.299, -0.168736, 0.5], atol=1e-12)  # red
    np.testing.assert_allclose(components[0, :, 0, 1], [1.0, 0.0, 0.0], atol=1e-12)  # white: no chroma
    np.testing.assert_allclose(components[0, :, 1, 0], [0.114, 0.5, -0.081312], atol=1e-12)  # blue
    np.testing.assert_allclose(wavelets.to_rgb(components), pixels / 255.0, atol=1e-12)


def test_halving_averages_each_2_by_2_block_and_repeats_an_odd_edge():
    values = np.arange(9.0).reshape(1, 3, 3)
    np.testing.assert_array_equal(wavelets.halve(values), [[[2.0, 3.5], [6.5, 8.0]]])
    np.testing.assert_array_equal(wavelets.double(wavelets.halve(values), 3, 3),
                                  [[[2.0, 2.0, 3.5], [2.0, 2.0, 3.5], [6.5, 6.5, 8.0]]])


@pytest.mark.parametrize("chroma,chroma_size", [("full", 32), ("half", 16)])
def test_colour_images_give_luma_and_chroma_matrices_that_reconstruct(tmp_path, chroma, chroma_size):
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, n in (("train", 12), ("test", 5)):
        np.save(raw / f"{split}_images.npy", rng.integers(0, 256, (n, 20, 20, 3), dtype=np.uint8))
        np.save(raw / f"{split}_labels.npy", np.arange(n, dtype=np.int16) % 2)
    (raw / "classes.json").write_text('["cat", "dog"]')
    metrics = dwt.run("folder", "bior4.4", None, chroma, raw=raw, dwt=tmp_path / "dwt", metrics=tmp_path / "dwt.json")
    assert metrics["train"]["max_reconstruction_error"] < 1e-9 and metrics["train"]["max_colour_transform_error"] < 1e-9
    luma, labels = formats.read_dwt(tmp_path / "dwt", "train")
    chroma_coeffs = np.load(tmp_path / "dwt" / "train_chroma.npy")
    assert luma.shape == (12, 32, 32) and chroma_coeffs.shape == (12, 2, chroma_size, chroma_size)
    assert formats.read_dwt_image(tmp_path / "dwt") == {"height": 20, "width": 20, "channels": 3, "chroma": chroma,
                                                        "classes": ["cat", "dog"]}
    images = np.load(raw / "train_images.npy")
    y = wavelets.crop(wavelets.inverse(luma, "bior4.4"), 20, 20)
    colour = wavelets.inverse(chroma_coeffs.reshape(24, chroma_size, chroma_size), "bior4.4").reshape(12, 2, chroma_size, chroma_size)
    colour = wavelets.crop(colour, *((20, 20) if chroma == "full" else (10, 10)))
    if chroma == "half":
        colour = wavelets.double(colour, 20, 20)
    rgb = wavelets.to_uint8(wavelets.to_rgb(np.concatenate([y[:, None], colour], axis=1)))
    if chroma == "full":  # the whole chain is lossless before any quantisation
        assert np.array_equal(rgb, images)
    else:  # 4:2:0 keeps the luma exactly and the chroma's 2 x 2 means
        components = wavelets.to_components(images)
        np.testing.assert_allclose(y, components[:, 0], atol=1e-9)
        np.testing.assert_allclose(colour[..., ::2, ::2], wavelets.halve(components[:, 1:]), atol=1e-9)
