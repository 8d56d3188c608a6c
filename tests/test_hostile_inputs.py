"""Bad files between stages stop the reading stage with one line that names the file, what is
wrong and what to do, and a non-zero exit; never a traceback, never a silent pass."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import run_stage, plain_params

from pipeline import formats, metrics
from pipeline.io import InputError
from pipeline.languages.encoded import Encoded
from pipeline.languages.wavelet import WaveletLanguage
from pipeline.models import classifier
from pipeline.models.transformer.network import WaveletGPT, WaveletGPTConfig


def assert_one_line_error(code: int, out: str, *fragments: str) -> None:
    assert code == 1, out
    assert "Traceback" not in out, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: "), out
    for fragment in fragments:
        assert fragment in last, last


def params_file(folder: Path, **groups) -> None:
    raw = plain_params()
    for group, values in groups.items():
        if isinstance(values, dict):
            raw[group].update(values)
        else:
            raw[group] = values
    (folder / "params.yaml").write_text(yaml.safe_dump(raw))


TINY = {"model": {"n_layer": 1, "n_embd": 32, "n_head": 2},
        "train": {"steps": 2, "batch_size": 4, "eval_batches": 1, "final_eval_images": 8}}


@pytest.fixture
def train_dir(tmp_path, tokens) -> Path:
    """A workdir with its own copy of the token shards, for the test to damage."""
    shutil.copytree(tokens, tmp_path / "data" / "tokens")
    params_file(tmp_path, **TINY)
    return tmp_path


def _rewrite_shard(folder: Path, change) -> Path:
    shard = folder / "data/tokens/train/part-00000.parquet"
    table = change(pq.read_table(shard))
    pq.write_table(table, shard)
    return shard


def _set_list_value(table: pa.Table, column: str, row: int, index: int, value: int) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row][index] = value
    return table.set_column(table.schema.get_field_index(column), column, pa.array(values, pa.list_(pa.uint8())))


def test_label_out_of_range(train_dir):
    def change(table):
        labels = table.column("label").to_numpy().copy()
        labels[3] = 99
        return table.set_column(1, "label", pa.array(labels, pa.int16()))
    _rewrite_shard(train_dir, change)
    assert_one_line_error(*run_stage(train_dir, "train"), "data/tokens/train/part-00000.parquet",
                          "row 3: label 99 is outside 0..9", "rerun `dvc repro tokenize`")


def test_position_out_of_range(train_dir):
    _rewrite_shard(train_dir, lambda table: _set_list_value(table, "i1", 2, 5, 200))
    assert_one_line_error(*run_stage(train_dir, "train"), "part-00000.parquet", "row 2: i1 200 is outside 0..31")


def test_position_that_is_not_the_scans(train_dir):
    _rewrite_shard(train_dir, lambda table: _set_list_value(table, "i2", 4, 7, 30))
    assert_one_line_error(*run_stage(train_dir, "train"), "part-00000.parquet", "row 4: token 7 has position")


def test_token_that_breaks_the_grammar(train_dir):
    _rewrite_shard(train_dir, lambda table: _set_list_value(table, "tokens", 1, 0, 5))
    assert_one_line_error(*run_stage(train_dir, "train"), "part-00000.parquet", "row 1: token 0 is not valid there")


def test_truncated_sequence(train_dir):
    def change(table):
        for name in ("tokens", "bp", "i1", "i2"):
            values = table.column(name).to_pylist()
            values[6] = values[6][:-3]
            table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.list_(pa.uint8())))
        return table
    _rewrite_shard(train_dir, change)
    # meta.json's token count no longer agrees, or the sequence ends early: either is named.
    code, out = run_stage(train_dir, "train")
    assert_one_line_error(code, out, "data/tokens/train")
    assert "row 6: it ends after" in out or "meta.json promises" in out


def test_column_of_the_wrong_type(train_dir):
    def change(table):
        return table.set_column(1, "label", pa.array(table.column("label").to_numpy().astype(np.int64)))
    _rewrite_shard(train_dir, change)
    assert_one_line_error(*run_stage(train_dir, "train"), "part-00000.parquet", "label (int64, expected int16)")


def test_truncated_shard_and_meta(train_dir):
    shard = train_dir / "data/tokens/test/part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:500])
    assert_one_line_error(*run_stage(train_dir, "train"), "test/part-00000.parquet", "not a readable Parquet file")
    meta = train_dir / "data/tokens/meta.json"
    meta.write_text(meta.read_text()[:40])
    assert_one_line_error(*run_stage(train_dir, "train"), "data/tokens/meta.json", "is not valid JSON")


def test_zero_byte_checkpoint(train_dir):
    (train_dir / "data/checkpoints").mkdir()
    (train_dir / "data/checkpoints/last.pt").write_bytes(b"")
    assert_one_line_error(*run_stage(train_dir, "train"), "data/checkpoints/last.pt", "not a readable checkpoint",
                          "delete it to train from scratch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_profile_without_cuda_stops_at_once(train_dir):
    params_file(train_dir, profile="gpu", **TINY)
    code, out = run_stage(train_dir, "train", env={"WAVELET_DEVICE": ""})
    assert_one_line_error(code, out, "profile='gpu'", "--device cpu", "WAVELET_DEVICE=cpu")
    assert "model:" not in out  # nothing started
    code, out = run_stage(train_dir, "train", "--device", "cpu")  # asked for explicitly: it runs
    assert code == 0, out


@pytest.fixture
def model_dir(tmp_path) -> Path:
    config = WaveletGPTConfig.for_language(WaveletLanguage("haar", final_exponent=0), n_layer=1, n_embd=16,
                                           n_head=2, n_positions=1,
                                           initial_exponent_counts={str(c): {"2": 1} for c in range(10)})
    WaveletGPT(config).save_pretrained(tmp_path / "data" / "model")
    params_file(tmp_path, sample={"classes": [1], "per_class": 2, "batch_size": 2})
    return tmp_path


@pytest.mark.parametrize("name,cut", [("config.json", 30), ("model.safetensors", 100)])
def test_truncated_model_files(model_dir, name, cut):
    path = model_dir / "data/model" / name
    path.write_bytes(path.read_bytes()[:cut])
    assert_one_line_error(*run_stage(model_dir, "sample"), "data/model", "is not a loadable model",
                          "rerun `dvc repro train`")
    assert not (model_dir / "data/samples").exists()


def test_missing_model(model_dir):
    shutil.rmtree(model_dir / "data/model")
    assert_one_line_error(*run_stage(model_dir, "sample"), "data/model: holds no model")


def test_empty_and_wrong_arrays_from_earlier_stages(tmp_path):
    raw = tmp_path / "data/raw/mnist"
    raw.mkdir(parents=True)
    (raw / "train_images.npy").write_bytes(b"")
    np.save(raw / "train_labels.npy", np.zeros(3, np.int16))
    params_file(tmp_path)
    assert_one_line_error(*run_stage(tmp_path, "dwt"), "data/raw/mnist/train_images.npy",
                          "is not a readable .npy array", "rerun `dvc repro download`")
    np.save(raw / "train_images.npy", np.zeros((3, 28, 28), np.uint8))
    assert_one_line_error(*run_stage(tmp_path, "dwt"), "data/raw/mnist/classes.json", "does not exist",
                          "rerun `dvc repro download`")
    (raw / "classes.json").write_text('{"0": "zero"}')
    assert_one_line_error(*run_stage(tmp_path, "dwt"), "classes.json", "is not a non-empty list of class names")
    (raw / "classes.json").write_text(json.dumps([str(c) for c in range(10)]))
    np.save(raw / "train_labels.npy", np.array([0, 1, 12], np.int16))
    assert_one_line_error(*run_stage(tmp_path, "dwt"), "train_labels.npy", "labels 0..12, not 0..9")
    dwt_dir = tmp_path / "data/dwt"
    dwt_dir.mkdir()
    np.save(dwt_dir / "train_coeffs.npy", np.zeros((3, 32, 32)))
    np.save(dwt_dir / "train_labels.npy", np.zeros(2, np.int16))
    assert_one_line_error(*run_stage(tmp_path, "tokenize"), "data/dwt/image.json", "does not exist",
                          "rerun `dvc repro dwt`")
    (dwt_dir / "image.json").write_text(json.dumps({"height": 28, "width": 28, "classes": ["a", "b"]}))
    assert_one_line_error(*run_stage(tmp_path, "tokenize"), "data/dwt/train_labels.npy", "not (3,) integer labels",
                          "rerun `dvc repro dwt`")


def test_garbage_inception_weights_are_named(tmp_path):
    garbage = tmp_path / "inception.pth"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    with pytest.raises(InputError, match="eval.inception_weights=.*inception.pth.*is not FID Inception weights.*"
                                         "set it to null"):
        metrics.inception_extractor(str(garbage), cuda=False)


def test_damaged_classifier_and_samples_are_named(tmp_path):
    (tmp_path / "classifier").mkdir()
    (tmp_path / "classifier" / "classifier.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(InputError, match="classifier.pt: is not a readable classifier.*train_classifier"):
        classifier.load(tmp_path / "classifier")
    n = 3
    empty = Encoded(*(np.zeros(n, np.uint8) for _ in range(4)), np.arange(n + 1), np.zeros(n, np.int8))
    formats.write_samples(tmp_path / "samples.parquet", np.zeros(n), empty, np.zeros((n, 20, 20), np.uint8), 8)
    with pytest.raises(InputError, match=r"row 0: image has 400 values, expected 28 x 28.*dvc repro sample"):
        formats.read_samples(tmp_path / "samples.parquet", 28, 28, 1)
    (tmp_path / "samples.parquet").write_text(json.dumps({"not": "parquet"}))
    with pytest.raises(InputError, match="not a readable Parquet file"):
        formats.read_samples(tmp_path / "samples.parquet", 28, 28, 1)
