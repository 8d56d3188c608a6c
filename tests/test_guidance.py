"""Classifier-free guidance, pinned by numbers for both model families: the conditional half
carries the class, the unconditional half the null class, and the result is
unconditional + scale * (conditional - unconditional). Each test fails if the halves are
swapped, if both halves carry the class, or if the scale multiplies the wrong difference."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.generation import guide, guided_step
from pipeline.models.diffusion.sampler import DiffusionSampler

NULL = 10  # the null class of a 10-class model


def test_the_formula_on_hand_made_numbers():
    conditional, unconditional = torch.tensor([3.0, -1.0]), torch.tensor([1.0, 2.0])
    assert guide(conditional, unconditional, 2.0).tolist() == [5.0, -4.0]  # 1 + 2 * 2, 2 + 2 * -3
    assert guide(conditional, unconditional, 1.0).tolist() == [3.0, -1.0]  # the conditional
    assert guide(conditional, unconditional, 0.0).tolist() == [1.0, 2.0]  # the unconditional


class TableDecoder:
    """A decoder whose logits are a hand-made row per class: what guided_step must combine."""

    TABLE = {3: [2.0, 0.0, 0.0], NULL: [0.0, 1.0, 0.0]}

    def step(self, prev, bp, i1, i2, e0, labels, context=None, component=None):
        assert len(prev) == len(labels) == 2  # the one sequence, twice
        return torch.tensor([self.TABLE[int(label)] for label in labels])


def test_transformer_guidance_on_hand_made_logits():
    one = torch.zeros(1, dtype=torch.long)
    logits = guided_step(TableDecoder(), one, one, one, one, one, torch.tensor([3]), NULL, 2.0)
    # conditional [2, 0, 0], unconditional [0, 1, 0]: [0, 1, 0] + 2 * [2, -1, 0]
    assert logits.tolist() == [[4.0, -1.0, 0.0]]
    probabilities = logits.softmax(-1)[0].tolist()
    expected = np.exp([4.0, -1.0, 0.0]) / np.exp([4.0, -1.0, 0.0]).sum()
    assert probabilities == pytest.approx(expected.tolist(), abs=1e-6)
    # a scale below 1 interpolates towards the unconditional
    half = guided_step(TableDecoder(), one, one, one, one, one, torch.tensor([3]), NULL, 0.5)
    assert half.tolist() == [[1.0, 0.5, 0.0]]


class TableUNet:
    """A UNet whose noise prediction is the class id everywhere (the null class: 10)."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, class_labels=None):
        self.calls.append(class_labels.tolist())
        return SimpleNamespace(sample=class_labels.float()[:, None, None, None].expand_as(x).clone())


def test_diffusion_guidance_on_hand_made_noise_predictions():
    sampler = DiffusionSampler.__new__(DiffusionSampler)  # no files: a stub network
    sampler.unet, sampler.conditional, sampler.n_classes = TableUNet(), True, NULL
    x = torch.zeros(2, 1, 4, 4)
    eps = sampler.noise_prediction(x, 5, torch.tensor([3, 7]), 2.0)
    # row 1: 10 + 2 * (3 - 10) = -4; row 2: 10 + 2 * (7 - 10) = 4
    assert eps[:, 0, 0, 0].tolist() == [-4.0, 4.0]
    assert sampler.unet.calls == [[3, 7, NULL, NULL]]
    assert sampler.noise_prediction(x, 5, torch.tensor([3, 7]), 1.0)[:, 0, 0, 0].tolist() == [3.0, 7.0]
    assert sampler.noise_prediction(x, 5, torch.tensor([3, 7]), 0.0)[:, 0, 0, 0].tolist() == [10.0, 10.0]
