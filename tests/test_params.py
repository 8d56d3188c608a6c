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
