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
