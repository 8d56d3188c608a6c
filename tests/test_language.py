"""The token-language interface: the pixel language (the baseline without wavelets) next to the
wavelet language, driven by the same stages."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import generation, idx
from pipeline.languages.base import from_description
from pipeline.languages.pixels import PixelLanguage
from pipeline.languages.wavelet import WaveletLanguage
from pipeline.models.transformer.network import WaveletGPT, WaveletGPTConfig
from pipeline.models.transformer.sampler import draw_initial_exponents
from pipeline.stages import dwt


@pytest.fixture(scope="module")
def real(mnist_raw):
    images, labels = idx.load_split(mnist_raw, "test")
    return images[:200], labels[:200]


def test_pixels_at_256_levels_are_the_images_exactly(real):
    images, _ = real
    language = PixelLanguage("haar", 256)
    coeffs, _ = dwt.transform(images, "haar")
    encoded = language.encode(coeffs)  # from the dwt stage's coefficients, as tokenize does
    assert np.array_equal(encoded.offsets, np.arange(201) * 784)
    assert np.array_equal(language.decode(encoded), images)
    assert np.array_equal(language.encode_images(images).tokens, encoded.tokens)


def test_quantised_pixels(real):
    images, _ = real
    language = PixelLanguage("haar", 4)
    encoded = language.encode_images(images)
    assert set(np.unique(encoded.tokens)) <= {0, 1, 2, 3}
    decoded = language.decode(encoded)
    assert set(np.unique(decoded)) <= {0, 85, 170, 255}
    assert np.abs(decoded.astype(int) - images).max() <= 43  # half a step of 255 / 3
    # Raster positions: row, column; one plane.
    assert encoded.i1[:30].tolist() == [0] * 28 + [1, 1] and encoded.i2[27:30].tolist() == [27, 0, 1]
    assert not encoded.bp.any() and not encoded.initial_exponents.any()
    assert language.valid_ids(encoded).all()


def test_pixel_sequences_are_checked(real):
    language = PixelLanguage("haar", 4)
    encoded = language.encode_images(real[0][:3])
    broken = encoded.select([0, 1, 2])
    broken.i2[800] = 5
    with pytest.raises(ValueError, match="sequence 1: token 16 has position i2=5"):
        language.check(broken)
    short = broken.select([0])
    short = type(short)(short.tokens[:-1], short.bp[:-1], short.i1[:-1], short.i2[:-1], np.array([0, 783]),
                        short.initial_exponents)
    with pytest.raises(ValueError, match="ends after 783 tokens"):
        language.check(short)
    wrong = encoded.select([0])
    wrong.tokens[3] = 9
    with pytest.raises(ValueError, match="token 3 is 9, not a level 0..3"):
        language.decode(wrong)
    # A prefix decodes, the rest of the image black.
    prefix = encoded.select([0])
    prefix = type(prefix)(prefix.tokens[:100], prefix.bp[:100], prefix.i1[:100], prefix.i2[:100], np.array([0, 100]),
                          prefix.initial_exponents)
    assert not language.decode(prefix)[0, 4:].any()


def test_descriptions_round_trip():
    for language in (PixelLanguage("bior4.4", 16), WaveletLanguage("haar", "zerotree", -2, "uniform")):
        assert from_description(language.describe()) == language
    with pytest.raises(ValueError, match="family 'jpeg'"):
        from_description({"family": "jpeg"})


def test_untrained_pixel_model_samples_are_valid_and_full_length():
    torch.manual_seed(0)
    language = PixelLanguage("haar", 4)
    counts = {str(c): {"0": 1} for c in range(10)}
    model = WaveletGPT(WaveletGPTConfig.for_language(language, n_layer=1, n_embd=16, n_head=2, n_positions=1,
                                                     initial_exponent_counts=counts)).eval()
    labels = np.arange(60) % 10
    e0 = draw_initial_exponents(model, labels, np.random.default_rng(0))
    encoded = generation.generate(model, labels, e0, generation.Decoding(top_p=0.9, cfg_scale=2.0), seed=0,
                                    slots=16)
    assert (encoded.lengths == 784).all()
    language.check(encoded)  # every position is the raster scan's
    assert language.decode(encoded).shape == (60, 28, 28)
