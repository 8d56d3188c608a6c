"""Invariants that hold across stages and that nothing else pins:

1. `tune` chooses its decoding setting on the `validation` half of the test split only, never on
   the `reported` half that evaluate scores against (end to end through `tune.run`, on a raw test
   split whose images carry their own index).
2. Each wavelet position embedding reads its own coordinate: bit-plane <- bp, row <- i1,
   column <- i2, in `WaveletGPT.embed`, in the KV-cached `Decoder` (which must agree with the
   forward pass), and in the training batches of `TokenData.batch`.
3. Labels and source indices stay aligned with their images through `dwt` and `tokenize`: every
   token sequence decodes to (nearly) the raw image its shard row names, with that image's label.

The stage calls live in the two helpers just below, so that a change in how stages take their
paths is adapted in one place.
"""
from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import plain_params
from pipeline import formats, metrics, params
from pipeline.idx import load_split
from pipeline.languages.base import from_description
from pipeline.languages.wavelet import WaveletLanguage
from pipeline.models.transformer.network import Decoder, WaveletGPT, WaveletGPTConfig
from pipeline.models.transformer.task import TokenData
from pipeline.stages import dwt, train_classifier, tune
from pipeline.stages import tokenize as tokenize_stage


# ----- the stage calls (keep every path-taking call here) -----

def tokenize_through_stages(raw: Path, work: Path, limit: int, params_path: Path) -> Path:
    """The dwt then tokenize stages on the first `limit` images of each split of the dataset folder
    `raw` (like data/raw/mnist); the tokens folder."""
    dwt.run("mnist", "haar", limit, raw=raw, dwt=work / "dwt", metrics=work / "dwt.json")
    p = params.load(params_path, tokenize_stage.PARAMS)
    tokenize_stage.run(p, dwt=work / "dwt", tokens=work / "tokens", metrics=work / "tokenize.json",
                       length_histogram=work / "tokenize_fig" / "length_histogram.png",
                       progressive=work / "tokenize_fig" / "progressive.png")
    return work / "tokens"


def tune_through_stages(raw: Path, model_dir: Path, work: Path, params_path: Path) -> dict:
    """The train_classifier stage, then the tune stage on the model in model_dir, both on the
    dataset folder `raw` (like data/raw/mnist); tune's summary."""
    p = params.load(params_path, train_classifier.PARAMS)
    train_classifier.run(p, "cpu", raw=raw, classifier=work / "classifier", metrics=work / "classifier.json")
    p = params.load(params_path, tune.PARAMS)
    return tune.run(p, "cpu", model=model_dir, classifier=work / "classifier", raw=raw, tuned=work / "tuned",
                    metrics=work / "tune.json", figures=work / "tune_fig")


def raw_split(raw: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split as the download stage wrote them into the folder `raw`."""
    return load_split(raw, split)


# ----- small helpers -----

def write_params(path: Path, **groups: dict) -> Path:
    """The repository's params.yaml with some groups' keys overridden."""
    raw = plain_params()
    for group, values in groups.items():
        raw[group].update(values)
    path.write_text(yaml.safe_dump(raw))
    return path


def tiny_model(language, seed: int = 0, **kw) -> WaveletGPT:
    """An untrained one-layer WaveletGPT over `language`."""
    torch.manual_seed(seed)
    counts = {str(c): {"1": 5, "2": 3, "3": 1} for c in range(10)}
    config = WaveletGPTConfig.for_language(language, n_layer=1, n_embd=16, n_head=2, n_positions=1,
                                           initial_exponent_counts=counts, **kw)
    return WaveletGPT(config).eval()


# ----- 1. tune never chooses on the reported half -----

def indexed_test_split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n distinct images that carry their own index in their first two pixels, labels 0..9 in turn."""
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.divmod(np.arange(n), 256)
    return images, (np.arange(n) % 10).astype(np.int16)


def index_of(image: np.ndarray) -> int:
    return 256 * int(image[0, 0]) + int(image[0, 1])


def test_tune_scores_only_against_the_validation_half(tmp_path, monkeypatch):
    """Every reference image tune scores against is from the validation half, none from the reported half."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    (raw / "mnist").mkdir(parents=True)
    for split, n in (("train", 200), ("test", 400)):
        images, labels = indexed_test_split(n, rng)
        np.save(raw / "mnist" / f"{split}_images.npy", images)
        np.save(raw / "mnist" / f"{split}_labels.npy", labels)
    (raw / "mnist" / "classes.json").write_text(json.dumps([str(c) for c in range(10)]))
    tiny_model(WaveletLanguage("haar", "zerotree", 0)).save_pretrained(tmp_path / "model")
    params_path = write_params(
        tmp_path / "params.yaml",
        train_classifier={"epochs": 1, "batch_size": 100, "width": 4},
        sample={"classes": [3, 7], "per_class": 1, "batch_size": 8},
        tune={"cfg_scales": [1.0], "top_ps": [0.6, 1.0], "per_class": 3, "reference_per_class": 6})

    seen: list[np.ndarray] = []
    original = metrics.Scorer.__init__

    def recording(self, reference, *args, **kwargs):
        seen.append(np.array(reference, copy=True))
        original(self, reference, *args, **kwargs)

    monkeypatch.setattr(metrics.Scorer, "__init__", recording)
    summary = tune_through_stages(raw / "mnist", tmp_path / "model", tmp_path, params_path)

    assert len(summary["grid"]) == 2
    assert seen, "tune scored against no reference images"
    test_images, test_labels = raw_split(raw / "mnist", "test")
    validation = set(metrics.test_pool(len(test_images), "validation").tolist())
    reported = set(metrics.test_pool(len(test_images), "reported").tolist())
    assert validation and reported and not validation & reported
    for reference in seen:
        assert len(reference) == 2 * 6  # 6 of each of the 2 sampled classes
        for image in reference:
            index = index_of(image)
            assert np.array_equal(image, test_images[index]), "a reference is not an image of the test split"
            assert index not in reported, f"tune scored against test image {index}, of the reported half"
            assert index in validation
            assert test_labels[index] in (3, 7)


# ----- 2. each position embedding reads its own coordinate -----

def hand_set_model() -> WaveletGPT:
    """A model whose bit-plane, row and column tables map k to k e0, k e1 and k e2, and whose token,
    e0 and class tables are zero (the transformer's own weights stay random)."""
    model = tiny_model(WaveletLanguage("haar", "zerotree", -1), seed=1)
    with torch.no_grad():
        for table in (model.token, model.e0, model.label, model.bp, model.row, model.col):
            table.weight.zero_()
        for axis, table in enumerate((model.bp, model.row, model.col)):
            table.weight[:, axis] = torch.arange(table.num_embeddings, dtype=torch.float32)
    return model


def position_inputs(batch: int = 2, length: int = 12):
    """Inputs whose bp, i1 and i2 all differ from one another at every position."""
    g = torch.Generator().manual_seed(0)
    prev = torch.randint(0, 8, (batch, length), generator=g)
    bp = torch.arange(length).repeat(batch, 1) % 5
    i1 = 5 + (torch.arange(length) * 2 + torch.arange(batch)[:, None]) % 11  # 5..15
    i2 = 16 + (torch.arange(length) * 3 + torch.arange(batch)[:, None]) % 16  # 16..31
    e0 = torch.tensor([1, 2][:batch])
    labels = torch.tensor([4, 9][:batch])
    return prev, bp, i1, i2, e0, labels


def test_embed_reads_bp_row_and_column_from_their_own_coordinates():
    """embed() adds bp[bp] + row[i1] + col[i2]: with hand-set tables it equals bp e0 + i1 e1 + i2 e2."""
    model = hand_set_model()
    prev, bp, i1, i2, e0, labels = position_inputs()
    expected = torch.zeros(*prev.shape, model.config.n_embd)
    expected[..., 0], expected[..., 1], expected[..., 2] = bp, i1, i2
    torch.testing.assert_close(model.embed(prev, bp, i1, i2, e0, labels), expected, atol=0, rtol=0)


def test_decoder_steps_and_prefill_see_the_same_positions_as_the_forward():
    """Decoder.prefill then Decoder.step give the forward pass's logits, position for position."""
    model = hand_set_model()
    prev, bp, i1, i2, e0, labels = position_inputs()
    full = model(prev, bp, i1, i2, e0, labels)
    # Changing one coordinate changes the logits, so a coordinate mixed up on the way would show.
    for swapped in ((prev, bp, i2, i1), (prev, (bp + 1) % 5, i1, i2)):
        assert not torch.allclose(model(*swapped, e0, labels), full, atol=1e-4)
    decoder = Decoder(model, 2, capacity=4)
    prefix = 5
    decoder.prefill(torch.arange(2), prev[:, :prefix], bp[:, :prefix], i1[:, :prefix], i2[:, :prefix], e0, labels,
                    np.array([prefix, prefix]))
    stepped = [decoder.step(prev[:, t], bp[:, t], i1[:, t], i2[:, t], e0, labels) for t in range(prefix, prev.shape[1])]
    torch.testing.assert_close(torch.stack(stepped, 1), full[:, prefix:], atol=1e-5, rtol=1e-5)
    fresh = Decoder(model, 2, capacity=4)
    stepped = [fresh.step(prev[:, t], bp[:, t], i1[:, t], i2[:, t], e0, labels) for t in range(prev.shape[1])]
    torch.testing.assert_close(torch.stack(stepped, 1), full, atol=1e-5, rtol=1e-5)


def test_training_batches_hold_the_shards_position_columns(tokens):
    """TokenData.batch: bp, i1, i2 (and target, prev) are the shard's columns of the target tokens."""
    meta = formats.read_meta(tokens)
    split = formats.read_split(tokens, "train", meta)
    language = from_description(meta["language"])
    data = TokenData(split, language)
    rows = np.array([17, 3, 250, 42, 0])
    batch = data.batch(rows, torch.device("cpu"))
    for j, row in enumerate(rows):
        one = split.encoded.select([row])
        n = int(one.lengths[0])
        for name in ("bp", "i1", "i2"):
            assert np.array_equal(batch[name][j, :n].numpy(), getattr(one, name)), f"{name} of row {row}"
        assert np.array_equal(batch["target"][j, :n].numpy(), one.tokens)
        assert (batch["target"][j, n:] == -1).all()
        assert batch["prev"][j, 0] == language.vocab_size and np.array_equal(batch["prev"][j, 1:n].numpy(),
                                                                              one.tokens[:-1])
        assert batch["label"][j] == split.labels[row] and batch["e0"][j] == one.initial_exponents[0]
    # The three columns differ in these shards, so a column read in place of another would show.
    assert not np.array_equal(split.encoded.i1, split.encoded.i2)
    assert not np.array_equal(split.encoded.bp, split.encoded.i1)


# ----- 3. labels stay with their images through dwt and tokenize -----

@pytest.fixture(scope="module")
def fine_tokens(mnist_raw, tmp_path_factory) -> Path:
    """Tokens of the first 200 MNIST images of each split at f = -6 (decoded images close to the
    originals), in shards of 64 so that alignment across shards is exercised."""
    work = tmp_path_factory.mktemp("fine_tokens")
    params_path = write_params(work / "params.yaml", tokenizer={"final_exponent": -6, "shard_size": 64})
    return tokenize_through_stages(mnist_raw, work, 200, params_path)


@pytest.mark.parametrize("split", ["train", "test"])
def test_labels_and_indices_follow_their_images_through_dwt_and_tokenize(fine_tokens, mnist_raw, split):
    """Each decoded sequence's nearest raw image is the one its `index` names, with its `label`."""
    meta = formats.read_meta(fine_tokens)
    shards = formats.read_split(fine_tokens, split, meta)
    decoded = from_description(meta["language"]).decode(shards.encoded).reshape(len(shards), -1) / 255.0
    raw_images, raw_labels = raw_split(mnist_raw, split)
    raw_images = raw_images[:400].reshape(400, -1) / 255.0  # the 200 tokenized and 200 more
    mse = ((decoded ** 2).sum(1)[:, None] + (raw_images ** 2).sum(1)[None] - 2 * decoded @ raw_images.T) / 784
    nearest = mse.argmin(1)
    assert len(shards) == 200
    assert mse[np.arange(len(nearest)), nearest].max() < 1e-3, "f = -6 should decode close to the original"
    assert np.array_equal(shards.index, nearest), "a shard row's index does not name its image"
    assert np.array_equal(shards.labels, raw_labels[nearest]), "a shard row's label is not its image's"
