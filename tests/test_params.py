"""Every bad value stops its stage with one line naming key, value and what is allowed; exit 2;
nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline import params
from pipeline.cli import app

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())


def _with(override: dict) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(DEFAULTS))
    for dotted, value in override.items():
        node = raw
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return raw


def test_defaults_are_valid():
    p = params.load(REPO / "params.yaml", tuple(params.GROUPS))
    assert p.dataset == "mnist" and p.wavelet == "haar"


BAD = [
    ("dwt", {"dataset": "cifar10"}, "dataset", "mnist, fashion_mnist"),
    ("dwt", {"wavelet": "haar2"}, "wavelet", "bior4.4"),
    ("dwt", {"wavelet": "morl"}, "wavelet", "db2"),  # continuous wavelets cannot do a DWT
    ("dwt", {"dwt.limit": 0}, "dwt.limit", ">= 1"),
    ("dwt", {"dwt.limit": "all"}, "dwt.limit", "an integer"),
    ("download", {"dataset": "fashion-mnist"}, "dataset", "fashion_mnist"),
    ("tokenize", {"tokenizer.method": "zero-tree"}, "tokenizer.method", "zeroblock, zerotree"),
    ("tokenize", {"tokenizer.final_exponent": -20}, "tokenizer.final_exponent", ">= -12"),
    ("train", {"model.n_embd": 130}, "model.n_embd", "multiple of model.n_head=4"),
    ("train", {"model.position": "rope"}, "model.position", "wavelet, sequence, both"),
    ("train", {"train.lr": -1.0}, "train.lr", "> 0.0"),
    ("train", {"train.grammar_mask": "yes"}, "train.grammar_mask", "true or false"),
    ("train", {"train.precision": "fp16"}, "train.precision", "bf16, fp32"),
    ("sample", {"sample.top_p": 0.0}, "sample.top_p", "> 0.0"),
    ("sample", {"sample.classes": "digits"}, "sample.classes", "list of class ids"),
    ("train_classifier", {"train_classifier.epochs": 0}, "train_classifier.epochs", ">= 1"),
    ("evaluate", {"eval.reference_images": 20000}, "eval.reference_images", "<= 10000"),
    ("evaluate", {"profile": "tpu"}, "profile", "cpu, gpu"),
]


@pytest.mark.parametrize("command,override,key,allowed", BAD)
def test_bad_value_is_refused_with_one_clear_line(tmp_path, monkeypatch, command, override, key, allowed):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(_with(override)))
    result = CliRunner().invoke(app, [command])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    value = list(override.values())[0]
    assert f"{key}={value!r}" in lines[0] and allowed in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_unknown_and_missing_keys_are_refused():
    raw = _with({"tokenizer.methd": "zerotree"})
    with pytest.raises(params.ParamError, match=r"tokenizer\.methd.*known keys"):
        params._build(params.TokenizerParams, raw, "tokenizer")
    del raw["tokenizer"]["methd"], raw["tokenizer"]["method"]
    with pytest.raises(params.ParamError, match=r"tokenizer\.method.*missing"):
        params._build(params.TokenizerParams, raw, "tokenizer")


def test_gpu_profile_lays_its_values_over_the_groups(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_with({"profile": "gpu"})))
    p = params.load(path, tuple(params.GROUPS))
    assert p.tokenizer.final_exponent == -3
    assert (p.model.n_layer, p.model.n_embd, p.model.n_head) == (6, 768, 12)
    assert p.sample.per_class * 10 == p.eval.num_samples == 10000
    assert p.model.position == "wavelet"  # not in the profile: the group's own value
    cpu = params.load(REPO / "params.yaml", tuple(params.GROUPS))
    assert cpu.tokenizer.final_exponent == -1 and cpu.model.n_layer == 4


def test_bad_profiles_are_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_with({"profile": "tpu"})))
    with pytest.raises(params.ParamError, match="profile='tpu'.*cpu, gpu"):
        params.load(path)
    raw = _with({"profile": "gpu"})
    raw["profiles"]["gpu"]["trian"] = {"steps": 1}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(params.ParamError, match="profiles.gpu.trian"):
        params.load(path)
    raw = _with({"profile": "gpu"})
    raw["profiles"]["gpu"]["train"]["stpes"] = 1
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(params.ParamError, match="train.stpes.*known keys"):
        params.load(path, ("train",))
