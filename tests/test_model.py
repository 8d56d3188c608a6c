from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.languages.grammar import masks_to_bool
from pipeline.languages.wavelet import WaveletLanguage
from pipeline.models.transformer.network import (
    Decoder,
    WaveletGPT,
    WaveletGPTConfig,
    token_nll,
)


def _inputs(batch=3, length=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 9, (batch, length), generator=g)
    bp = torch.randint(0, 8, (batch, length), generator=g)
    i1 = torch.randint(0, 32, (batch, length), generator=g)
    i2 = torch.randint(0, 32, (batch, length), generator=g)
    return x, bp, i1, i2, torch.tensor([0, 1, 3][:batch]), torch.tensor([0, 5, 10][:batch])


@pytest.mark.parametrize("position", ["wavelet", "sequence", "both"])
def test_kv_cached_steps_equal_the_full_forward(position):
    torch.manual_seed(0)
    model = WaveletGPT(WaveletGPTConfig(n_layer=2, n_embd=64, n_head=4, n_positions=64, position=position)).eval()
    x, bp, i1, i2, e0, labels = _inputs()
    full = model(x, bp, i1, i2, e0, labels)
    decoder = Decoder(model, 3, capacity=16)  # grows twice on the way
    steps = torch.stack([decoder.step(x[:, t], bp[:, t], i1[:, t], i2[:, t], e0, labels) for t in range(40)], 1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["wavelet", "sequence", "both"])
def test_every_token_sees_its_whole_prefix(position):
    model = WaveletGPT(WaveletGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64, position=position)).eval()
    x, bp, i1, i2, e0, labels = _inputs()
    changed = x.clone()
    changed[:, 0] = (x[:, 0] + 1) % 9
    delta = (model(changed, bp, i1, i2, e0, labels) - model(x, bp, i1, i2, e0, labels)).abs().amax(dim=(0, 2))
    assert (delta > 0).all(), "a later token does not depend on the first one"


def test_conditioning_reaches_the_logits():
    model = WaveletGPT(WaveletGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=1)).eval()
    x, bp, i1, i2, e0, labels = _inputs()
    assert not torch.equal(model(x, bp, i1, i2, e0, labels), model(x, bp, i1, i2, e0, (labels + 1) % 10))
    assert not torch.equal(model(x, bp, i1, i2, e0, labels), model(x, bp, i1, i2, (e0 + 1) % 4, labels))
    blind = WaveletGPT(WaveletGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=1, condition="none")).eval()
    assert torch.equal(blind(x, bp, i1, i2, e0, labels), blind(x, bp, i1, i2, e0, (labels + 1) % 10))


def test_masked_nll_ignores_padding_and_forbidden_ids():
    logits = torch.zeros(1, 3, 8)
    targets = torch.tensor([[2, 5, -1]])
    valid = torch.from_numpy(masks_to_bool(np.array([[0b1100, 0b1100000, 0xFF]])))
    nll = token_nll(logits, targets, valid)
    torch.testing.assert_close(nll, torch.tensor([[0.6931472, 0.6931472, 0.0]]))
    torch.testing.assert_close(token_nll(logits, targets, None)[0, :2], torch.full((2,), 2.0794415))


def test_save_and_load_round_trip(tmp_path):
    language = WaveletLanguage("bior4.4", "zerotree", -4)
    config = WaveletGPTConfig.for_language(language, n_layer=1, n_embd=32, n_head=2, n_positions=1,
                                           initial_exponent_counts={"3": {"1": 7}})
    model = WaveletGPT(config).eval()
    model.save_pretrained(tmp_path)
    loaded = WaveletGPT.from_pretrained(tmp_path)
    x, bp, i1, i2, e0, labels = _inputs()
    assert torch.equal(model(x, bp, i1, i2, e0, labels), loaded(x, bp, i1, i2, e0, labels))
    assert loaded.language == language and loaded.config.initial_exponent_counts == {"3": {"1": 7}}
    assert (loaded.config.e0_min, loaded.config.e0_max, loaded.config.max_planes) == (-3, 5, 9)


def test_decoder_rows_at_different_points_equal_the_full_forward():
    """Per-row cache lengths: a prefilled row, a row that starts later, a dropped row and a row
    that restarts on a new sequence, all stepping together, each equal to the full forward."""
    torch.manual_seed(0)
    model = WaveletGPT(WaveletGPTConfig(n_layer=2, n_embd=64, n_head=4, n_positions=64, position="both")).eval()
    x, bp, i1, i2, e0, labels = _inputs(batch=3, length=40)
    full = model(x, bp, i1, i2, e0, labels)
    decoder = Decoder(model, 3, capacity=8)  # grows on the way
    # Row 0 starts from a 12-token prefix (prefilled), row 1 from 5, row 2 from nothing.
    rows = torch.tensor([0, 1])
    lengths = np.array([12, 5])
    decoder.prefill(rows, x[:2, :12], bp[:2, :12], i1[:2, :12], i2[:2, :12], e0[:2], labels[:2], lengths)
    position = np.array([12, 5, 0])
    seen = {r: [] for r in range(3)}
    for _ in range(20):
        pick = torch.as_tensor(position)
        r = torch.arange(3)
        logits = decoder.step(x[r, pick], bp[r, pick], i1[r, pick], i2[r, pick], e0, labels)
        for row in range(3):
            seen[row].append((position[row], logits[row]))
        position += 1
    for row in range(3):
        for t, logit in seen[row]:
            torch.testing.assert_close(logit, full[row, t], atol=1e-5, rtol=1e-5)
    # Drop row 1; row 2 restarts on row 1's sequence and catches up alone with row 0.
    decoder.keep(np.array([0, 2]))
    decoder.restart(np.array([1]))
    position = np.array([32, 0])
    source = torch.tensor([0, 1])
    for _ in range(6):
        pick = torch.as_tensor(position)
        logits = decoder.step(x[source, pick], bp[source, pick], i1[source, pick], i2[source, pick], e0[source],
                              labels[source])
        for n in range(2):
            torch.testing.assert_close(logits[n], full[source[n], position[n]], atol=1e-5, rtol=1e-5)
        position += 1


def test_the_bf16_decode_path_equals_the_full_forward_within_tolerance():
    torch.manual_seed(0)
    model = WaveletGPT(WaveletGPTConfig(n_layer=2, n_embd=64, n_head=4, n_positions=1)).eval()
    x, bp, i1, i2, e0, labels = _inputs()
    full = model(x, bp, i1, i2, e0, labels)
    decoder = Decoder(model.to(torch.bfloat16), 3, capacity=64)  # weights cast once, as the sampler does on CUDA
    steps = torch.stack([decoder.step(x[:, t], bp[:, t], i1[:, t], i2[:, t], e0, labels) for t in range(40)], 1)
    assert steps.dtype == torch.bfloat16
    torch.testing.assert_close(steps.float(), full, atol=0.08, rtol=0.05)
