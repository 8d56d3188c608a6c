"""Equal compute: training FLOPs counted with FlopCounterMode and a FLOP budget; the diffusion
baseline's training and sampling; the decoding grid of the tune stage."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import plain_params
from torch.utils.flop_counter import FlopCounterMode

from pipeline import params
from pipeline.devices import Distributed
from pipeline.generation import Decoding, sample_rows
from pipeline.models.samplers import load_sampler
from pipeline.models.transformer.task import TransformerTask
from pipeline.stages import train as train_stage
from pipeline.stages import tune as tune_stage

TINY = {"model": {"n_layer": 1, "n_embd": 32, "n_head": 2, "unet_channels": [8, 16]},
        "train": {"steps": 6, "batch_size": 4, "log_every": 2, "eval_every": 3, "eval_batches": 1,
                  "final_eval_images": 8, "checkpoint_every": 3, "warmup_steps": 1}}


def load_params(tmp_path: Path, **groups) -> params.Params:
    raw = plain_params()
    for group, values in {**TINY, **groups}.items():
        raw[group] = {**raw[group], **values}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return params.load(tmp_path / "params.yaml", params.ALL_KEYS)


def test_step_flops_are_what_the_counter_counts_on_the_real_batch(tmp_path, tokens):
    p = load_params(tmp_path)
    task = TransformerTask(p, tokens, torch.device("cpu"), Distributed())
    for step in (0, 3):
        batch = task.batch(step)
        with FlopCounterMode(display=False) as counter:
            nll, _ = task.loss(task.model, batch)
            nll.backward()
        assert task.step_flops(step) == pytest.approx(counter.get_total_flops(), rel=1e-9)
    task.model.zero_grad()


def test_a_flop_budget_sets_the_steps(tmp_path, tokens):
    p = load_params(tmp_path)
    task = TransformerTask(p, tokens, torch.device("cpu"), Distributed())
    costs = np.cumsum([task.step_flops(s) for s in range(20)])
    budget = float((costs[11] + costs[12]) / 2)  # between 12 and 13 steps
    p = load_params(tmp_path, train={"flops": budget, "steps": 1})
    steps, flops = train_stage.planned_steps(p, task)
    assert steps == 12 and flops == pytest.approx(costs[11])
    p = load_params(tmp_path, train={"flops": 1.0})
    with pytest.raises(ValueError, match="train.flops=1 does not pay for one step"):
        train_stage.planned_steps(p, task)


@pytest.fixture(scope="module")
def pixel_tokens(mnist_raw, tmp_path_factory) -> Path:
    """data/tokens in the pixel language at 256 levels (the diffusion baseline's exact images)."""
    from pipeline.stages import dwt
    from pipeline.stages import tokenize as tokenize_stage

    root = tmp_path_factory.mktemp("pixels")
    dwt.run("mnist", "haar", 200, raw=mnist_raw, dwt=root / "dwt", metrics=root / "dwt.json")
    p = load_params(root, tokenizer={"method": "pixels", "pixel_levels": 256})
    tokenize_stage.run(p, dwt=root / "dwt", tokens=root / "tokens", metrics=root / "t.json",
                       length_histogram=root / "fig" / "lengths.png", progressive=root / "fig" / "progressive.png")
    return root / "tokens"


def test_diffusion_trains_counts_its_flops_and_samples_exact_pixel_sequences(tmp_path, pixel_tokens):
    p = load_params(tmp_path, model={"family": "diffusion"}, tokenizer={"method": "pixels", "pixel_levels": 256})
    paths = {"tokens": pixel_tokens, "checkpoints": tmp_path / "ck", "model": tmp_path / "model",
             "metrics": tmp_path / "live/metrics.json", "plots": tmp_path / "live/plots/metrics"}
    metrics = train_stage.run(p, "cpu", **paths)
    assert metrics["steps"] == 6 and metrics["train_flops"] > 0 and np.isfinite(metrics["test"]["mse"])
    assert json.loads((tmp_path / "model" / "diffusion.json").read_text())["family"] == "diffusion"
    # Resumable like the transformer: a rerun on the same code, params and data does nothing more.
    again = train_stage.run(p, "cpu", **paths)
    assert again["test"] == metrics["test"]

    sampler = load_sampler(tmp_path / "model", torch.device("cpu"))
    assert not sampler.autoregressive and sampler.conditional
    labels = np.repeat([2, 7], 3)
    encoded = sample_rows(sampler, labels, Decoding(cfg_scale=2.0, diffusion_steps=4), 0, 4)
    assert (encoded.lengths == 784).all()
    images = sampler.language.decode(encoded)
    assert images.shape == (6, 28, 28) and images.dtype == np.uint8
    grid = tune_stage.decoding_grid(sampler, Decoding(), p.tune)
    assert {(d.cfg_scale, d.diffusion_steps) for d in grid} == {
        (g, s) for g in p.tune.cfg_scales for s in p.tune.diffusion_steps}


def test_the_transformer_grid_is_guidance_by_top_p_and_unconditional_models_skip_guidance(tmp_path):
    p = load_params(tmp_path)

    class Sampler:
        autoregressive, conditional = True, True

    grid = tune_stage.decoding_grid(Sampler, Decoding(temperature=0.9), p.tune)
    assert len(grid) == len(p.tune.cfg_scales) * len(p.tune.top_ps)
    assert all(d.temperature == 0.9 for d in grid)
    Sampler.conditional = False
    assert {d.cfg_scale for d in tune_stage.decoding_grid(Sampler, Decoding(), p.tune)} == {1.0}
