from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import plain_params
from pipeline import formats, params
from pipeline.languages import coder
from pipeline.stages import dwt
from pipeline.stages import tokenize as tokenize_stage


@pytest.fixture(scope="module")
def small_dwt(mnist_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dwt")
    dwt.run("mnist", "haar", 250, raw=mnist_raw, dwt=out / "dwt", metrics=out / "dwt.json")
    return out / "dwt"


def _outputs(folder: Path) -> dict[str, Path]:
    """The tokenize stage's outputs under `folder`, the figures in folder/fig."""
    return {"tokens": folder / "tokens", "metrics": folder / "tokenize.json",
            "length_histogram": folder / "fig" / "length_histogram.png", "progressive": folder / "fig" / "progressive.png"}


def _params(tmp_path: Path, **tokenizer) -> params.Params:
    raw = plain_params()
    raw["tokenizer"].update(tokenizer)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return params.load(path, tokenize_stage.PARAMS)


@pytest.mark.parametrize("method,final_exponent", [("zeroblock", -1), ("zerotree", -1), ("zerotree", [-2, -2, -1, -1])])
def test_stage_writes_the_data_contract(small_dwt, tmp_path, method, final_exponent):
    p = _params(tmp_path, method=method, shard_size=100, final_exponent=final_exponent)
    out = tmp_path / "tokens"
    metrics = tokenize_stage.run(p, dwt=small_dwt, **_outputs(tmp_path))
    assert [path.name for path in formats.shard_paths(out, "train")] == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    schema = pq.read_schema(out / "train" / "part-00000.parquet")
    assert schema.field("index").type == pa.int32() and schema.field("label").type == pa.int16()
    assert schema.field("initial_exponent").type == pa.int8()
    for name in ("tokens", "bp", "i1", "i2"):
        assert schema.field(name).type == pa.list_(pa.uint8())

    coeffs, labels = formats.read_dwt(small_dwt, "train")
    language = tokenize_stage.language_for(p, np.asarray(coeffs), formats.read_dwt_image(small_dwt))
    expected = coder.encode(np.asarray(coeffs), language.grammar)
    assert schema.names == ["index", "label", "initial_exponent", "tokens", "bp", "i1", "i2"]  # grey: no component
    split = formats.read_split(out, "train", check_grammar=True)
    assert np.array_equal(split.encoded.offsets, expected.offsets)
    for name in ("tokens", "bp", "i1", "i2"):
        assert np.array_equal(getattr(split.encoded, name), getattr(expected, name))
    assert np.array_equal(split.labels, labels) and np.array_equal(split.index, np.arange(250))

    meta = formats.read_meta(out)
    language = meta["language"]
    assert language["method"] == method and language["wavelet"] == "haar" and language["family"] == "wavelet"
    assert language["final_exponent"] == p.tokenizer.final_exponent
    assert meta["token_names"][7] == "ZeroTree" and language["size"] == 32 and meta["vocab_size"] == 8
    assert meta["splits"]["test"]["images"] == 250
    assert sum(sum(c.values()) for c in meta["initial_exponent_counts"].values()) == 250
    assert set(meta["initial_exponent_counts"]) == {str(c) for c in range(10)}
    assert meta["classes"] == [str(c) for c in range(10)] and meta["n_classes"] == 10
    assert (language["image_height"], language["image_width"]) == (28, 28)

    saved = json.loads((tmp_path / "tokenize.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for split_name in ("train", "test"):
        assert saved[split_name]["psnr_db"] > 18  # f = -1: about 20 dB on MNIST (finer per level: more)
        by_plane = saved[split_name]["tokens_per_image_by_plane"]
        assert abs(sum(by_plane.values()) - saved[split_name]["length_mean"]) < 0.01
    assert (tmp_path / "fig" / "progressive.png").stat().st_size > 10_000
    assert (tmp_path / "fig" / "length_histogram.png").stat().st_size > 5_000


def test_failed_run_leaves_no_output(small_dwt, tmp_path, monkeypatch):
    p = _params(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(formats.pq, "write_table", broken)
    with pytest.raises(RuntimeError):
        tokenize_stage.run(p, dwt=small_dwt, **_outputs(tmp_path))
    assert not (tmp_path / "tokens").exists() and not (tmp_path / "tokenize.json").exists()
    assert [x.name for x in tmp_path.iterdir()] == ["params.yaml"]
