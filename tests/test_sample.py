"""Sampling always yields valid, canonical sequences; decoding controls; the stage's outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import REPO, plain_params
from pipeline import formats, generation, params
from pipeline.languages import coder
from pipeline.languages.wavelet import WaveletLanguage
from pipeline.models.transformer.network import WaveletGPT, WaveletGPTConfig
from pipeline.models.transformer.sampler import draw_initial_exponents
from pipeline.stages import sample as sample_stage


def untrained(method="zeroblock", final_exponent=-1, **kw) -> WaveletGPT:
    torch.manual_seed(0)
    counts = {str(c): {"1": 5, "2": 3, "3": 1} for c in range(10)}
    config = WaveletGPTConfig.for_language(WaveletLanguage("haar", method, final_exponent), n_layer=1,
                                           n_embd=16, n_head=2, n_positions=1, initial_exponent_counts=counts, **kw)
    return WaveletGPT(config).eval()


def _check_valid(model, encoded, labels):
    language = model.language.grammar
    decoded = coder.decode_batch(encoded.tokens, encoded.offsets, encoded.initial_exponents, language)
    again = coder.encode(decoded, language)
    assert np.array_equal(again.initial_exponents, encoded.initial_exponents)
    assert np.array_equal(again.offsets, encoded.offsets), "a sample's length is not canonical"
    assert np.array_equal(again.tokens, encoded.tokens), "a sample is not in canonical form"
    for name in ("bp", "i1", "i2"):
        assert np.array_equal(getattr(again, name), getattr(encoded, name))


@pytest.mark.parametrize("method,count", [("zeroblock", 400), ("zerotree", 300)])
def test_untrained_model_samples_are_all_valid_and_canonical(method, count):
    model = untrained(method)
    labels = np.arange(count) % 10
    e0 = draw_initial_exponents(model, labels, np.random.default_rng(0))
    stats = generation.SamplingStats()
    encoded = generation.generate(model, labels, e0, generation.Decoding(), seed=0, slots=128, stats=stats)
    assert len(encoded) == count
    _check_valid(model, encoded, labels)
    # Continuous batching: the rows computed follow the tokens kept (finished rows do not ride along).
    assert stats.tokens_kept == encoded.offsets[-1] and stats.traffic_ratio < 1.1


@pytest.mark.parametrize("decoding", [
    generation.Decoding(temperature=0), generation.Decoding(top_k=2),
    generation.Decoding(top_p=0.6), generation.Decoding(cfg_scale=2.0, temperature=0.7),
    generation.Decoding(cfg_scale=0.5), generation.Decoding(cfg_scale=0.0),  # towards / at unconditional
], ids=str)
def test_decoding_controls_stay_valid(decoding):
    model = untrained(final_exponent=0)
    labels = np.arange(40) % 10
    e0 = draw_initial_exponents(model, labels, np.random.default_rng(1))
    encoded = generation.generate(model, labels, e0, decoding, seed=0, slots=16)
    _check_valid(model, encoded, labels)


def test_choose_respects_the_mask_and_the_controls():
    draws = torch.from_numpy(generation.uniforms(0, np.arange(2000), np.zeros(2000)))
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0]]).repeat(2000, 1)
    valid = torch.zeros(2000, 8, dtype=torch.bool)
    valid[:, [1, 3, 4, 6]] = True
    picked = generation.choose(logits, valid, generation.Decoding(), draws)
    assert set(picked.tolist()) <= {1, 3, 4, 6} and len(set(picked.tolist())) == 4
    # The draws follow the distribution: p(1) = 0.84 of the valid mass.
    assert abs((picked == 1).float().mean().item() - 0.839) < 0.03
    assert set(generation.choose(logits, valid, generation.Decoding(temperature=0), draws).tolist()) == {1}
    assert set(generation.choose(logits, valid, generation.Decoding(top_k=2), draws).tolist()) == {1, 3}
    # top_p 0.6 keeps id 1 alone, 0.9 adds the next one.
    assert set(generation.choose(logits, valid, generation.Decoding(top_p=0.6), draws).tolist()) == {1}
    assert set(generation.choose(logits, valid, generation.Decoding(top_p=0.9), draws).tolist()) == {1, 3}
    # A draw at the very edge still lands on a valid id.
    edge = torch.tensor([0.0, 1.0 - 2.0 ** -53], dtype=torch.float64)
    assert set(generation.choose(logits[:2], valid[:2], generation.Decoding(), edge).tolist()) <= {1, 3, 4, 6}


def test_uniforms_are_uniform_and_per_row():
    u = generation.uniforms(7, np.repeat(np.arange(100), 100), np.tile(np.arange(100), 100))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01 and len(np.unique(u)) == len(u)
    assert np.array_equal(generation.uniforms(7, np.array([3]), np.array([5])), u[[305]])


def test_same_seed_same_samples():
    model = untrained(final_exponent=0)
    labels = np.arange(20) % 10
    e0 = draw_initial_exponents(model, labels, np.random.default_rng(3))
    runs = [generation.generate(model, labels, e0, generation.Decoding(), seed=7) for _ in range(2)]
    assert np.array_equal(runs[0].tokens, runs[1].tokens)
    other = generation.generate(model, labels, e0, generation.Decoding(), seed=8)
    assert not np.array_equal(runs[0].tokens, other.tokens)


@pytest.mark.parametrize("method,decoding,context", [
    ("zeroblock", generation.Decoding(), "none"), ("zerotree", generation.Decoding(cfg_scale=2.0, top_p=0.8), "none"),
    ("zerotree", generation.Decoding(cfg_scale=2.0, top_p=0.8), "scan")])
def test_continuous_batching_yields_what_one_row_at_a_time_yields(method, decoding, context):
    """Every sequence draws from its own random stream, so neither the number of slots nor the
    order in which sequences take them changes a sample; with context features, each row reads
    its own scan's. (fp64, so that the logits of a row do not move in the last bit with the
    batch shape.)"""
    model = untrained(method, final_exponent=0, context=context).double()  # f = 0: short sequences
    labels = np.arange(12) % 10  # 12 sequences: 5 slots are reused, 12 are not
    e0 = draw_initial_exponents(model, labels, np.random.default_rng(0))
    alone = [generation.generate(model, labels[j:j + 1], e0[j:j + 1], decoding, seed=3, sequence_ids=[j], slots=1)
             for j in range(len(labels))]
    for slots in (5, 12):
        together = generation.generate(model, labels, e0, decoding, seed=3, slots=slots)
        for j, one in enumerate(alone):
            assert np.array_equal(together.select([j]).tokens, one.tokens), f"sequence {j} with {slots} slots"
    # Reversed rows with their ids: the same sequences, in the new order.
    order = np.arange(len(labels))[::-1]
    reversed_run = generation.generate(model, labels[order], e0[order], decoding, seed=3, sequence_ids=order, slots=5)
    assert np.array_equal(reversed_run.select(order).tokens, together.tokens)


@pytest.mark.parametrize("context", ["none", "scan"])
def test_completions_keep_their_prefixes_and_stay_canonical(mnist_raw, context):
    """Real images' first bit-planes as prefixes (prefilled in one pass): the model writes the
    rest, and every completion is a valid, canonical sequence that starts with its prefix."""
    from pipeline import idx
    from pipeline.stages import dwt

    model = untrained(context=context)
    language = model.language
    images, labels = idx.load_split(mnist_raw, "test")
    real = language.encode(dwt.transform(images[:30], "haar")[0])
    for planes in (1, 2):
        keep = real.bp < planes
        lengths = np.add.reduceat(keep, real.offsets[:-1]) if len(real) else np.zeros(0, int)
        prefixes = type(real)(real.tokens[keep], real.bp[keep], real.i1[keep], real.i2[keep],
                              np.concatenate([[0], np.cumsum(lengths)]), real.initial_exponents)
        completed = generation.generate(model, labels[:30].astype(np.int64), real.initial_exponents.astype(np.int64),
                                          generation.Decoding(cfg_scale=2.0), seed=0, slots=8, prefixes=prefixes)
        _check_valid(model, completed, labels[:30])
        for j in range(30):
            assert np.array_equal(completed.select([j]).tokens[:lengths[j]], prefixes.select([j]).tokens)


def test_initial_exponents_follow_the_class_counts():
    model = untrained()
    model.config.initial_exponent_counts = {"0": {"1": 1}, "1": {"2": 3, "3": 1}}
    e0 = draw_initial_exponents(model, np.array([0] * 50 + [1] * 4000), np.random.default_rng(0))
    assert set(e0[:50]) == {1}
    assert abs((e0[50:] == 2).mean() - 0.75) < 0.03


@pytest.fixture
def model_dir(tmp_path) -> Path:
    model = untrained(final_exponent=0)
    model.save_pretrained(tmp_path / "data" / "model")
    raw = plain_params()
    raw["sample"].update(classes=[1, 7], per_class=3, batch_size=4, seed=5)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path


def test_stage_writes_samples_and_figures(model_dir):
    p = params.load(model_dir / "params.yaml", sample_stage.PARAMS)
    sample_stage.run(p, "cpu", model=model_dir / "data/model", samples=model_dir / "out", figures=model_dir / "fig",
                     metrics=model_dir / "s.json")
    summary = json.loads((model_dir / "s.json").read_text())
    assert summary["samples"] == 6 and summary["images_per_s"] > 0 and 1 <= summary["traffic_ratio"] < 1.5
    table = pq.read_table(model_dir / "out" / "samples.parquet")
    assert table.schema.field("label").type == pa.int16()
    assert table.schema.field("initial_exponent").type == pa.int8()
    assert table.schema.field("tokens").type == pa.list_(pa.uint8())
    assert table.schema.field("image").type == pa.list_(pa.uint8())
    samples = formats.read_samples(model_dir / "out" / "samples.parquet", 28, 28, 1)
    assert samples.labels.tolist() == [1, 1, 1, 7, 7, 7] and samples.images.shape == (6, 28, 28)
    # The stored image is the decoded sequence, clipped and rounded.
    language = WaveletGPT.load(model_dir / "data/model").language
    from pipeline import wavelets
    tokens = samples.tokens[samples.offsets[4]:samples.offsets[5]]
    approx = coder.decode(tokens, int(samples.initial_exponents[4]), language.grammar)
    assert np.array_equal(samples.images[4], wavelets.to_uint8(wavelets.crop(wavelets.inverse(approx, "haar"), 28, 28)))
    names = sorted(p.name for p in (model_dir / "fig").iterdir())
    assert names == ["class_1.png", "class_7.png", "overview.png", "progressive.png"]


def test_unknown_class_is_refused(model_dir):
    raw = yaml.safe_load((model_dir / "params.yaml").read_text())
    raw["sample"]["classes"] = [3, 12]
    (model_dir / "params.yaml").write_text(yaml.safe_dump(raw))
    p = params.load(model_dir / "params.yaml", sample_stage.PARAMS)
    with pytest.raises(ValueError, match=r"\[12\].*0\.\.9"):
        sample_stage.run(p, "cpu", model=model_dir / "data/model", samples=model_dir / "out", figures=model_dir / "fig",
                         metrics=model_dir / "s.json")
    assert not (model_dir / "out").exists()


def test_ddp_two_cpu_processes_gather_all_samples(model_dir):
    env = dict(os.environ, PYTHONPATH=str(REPO), WAVELET_DEVICE="cpu", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "pipeline", "sample"]
    result = subprocess.run(command, cwd=model_dir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "on rank 1" in result.stdout + result.stderr
    samples = formats.read_samples(model_dir / "data/samples/samples.parquet", 28, 28, 1)
    assert samples.labels.tolist() == [1, 1, 1, 7, 7, 7] and len(samples.offsets) == 7
    assert (model_dir / "reports/samples/overview.png").is_file()
