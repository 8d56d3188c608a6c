"""The one PSNR (pipeline/psnr.py), pinned by numbers on hand-made images."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline import psnr


def test_per_image_psnr_and_its_summary():
    originals = np.array([[[0, 0]], [[10, 20]], [[7, 7]]], np.uint8)
    images = np.array([[[255, 0]], [[11, 19]], [[7, 7]]], np.uint8)
    values = psnr.per_image(images, originals)
    # mse 255^2 / 2 -> 10 log10(2); mse 1 -> 20 log10(255); equal -> inf
    assert values[:2] == pytest.approx([3.0103, 48.1308], abs=1e-4) and np.isinf(values[2])
    figures = psnr.summary(values)
    assert figures["psnr_db"] == pytest.approx((3.0103 + 48.1308) / 2, abs=1e-4)
    assert figures["psnr_db_min"] == pytest.approx(3.0103, abs=1e-4)
    assert figures["identical_share"] == pytest.approx(1 / 3)
    assert psnr.describe(figures) == "25.57 dB"


def test_lossless_images_have_no_finite_psnr():
    images = np.zeros((2, 3, 3), np.uint8)
    figures = psnr.summary(psnr.per_image(images, images))
    assert figures == {"psnr_db": None, "psnr_db_min": None, "identical_share": 1.0}
    assert psnr.describe(figures) == "identical"
    with pytest.raises(ValueError, match="shape"):
        psnr.per_image(images, images[:1])
