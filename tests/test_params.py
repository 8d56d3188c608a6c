"""Every bad value stops its stage with one line naming key, value and what is allowed; exit 2;
nothing written."""
from __future__ import annotations

import importlib
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
    p = params.load(REPO / "params.yaml", params.ALL_KEYS)
    assert p.dataset == "mnist" and p.wavelet == "haar"


BAD = [
    ("dwt", {"dataset": "cifar100"}, "dataset", "mnist, fashion_mnist, cifar10, cifar10_jpeg, folder"),
    ("dwt", {"wavelet": "haar2"}, "wavelet", "bior4.4"),
    ("dwt", {"wavelet": "morl"}, "wavelet", "db2"),  # continuous wavelets cannot do a DWT
    ("dwt", {"dwt.limit": 0}, "dwt.limit", ">= 1"),
    ("dwt", {"dwt.limit": "all"}, "dwt.limit", "an integer"),
    ("download", {"dataset": "fashion-mnist"}, "dataset", "fashion_mnist"),
    ("tokenize", {"tokenizer.method": "zero-tree"}, "tokenizer.method", "zeroblock, zerotree"),
    ("tokenize", {"tokenizer.final_exponent": -20}, "tokenizer.final_exponent", ">= -12"),
    ("tokenize", {"tokenizer.final_exponent": [-3, -2, -1]}, "tokenizer.final_exponent",
     "one integer, or a list of 4: 28 x 28 images have 4 decomposition levels"),
    ("tokenize", {"tokenizer.final_exponent": [-3, -2, -2, -1], "dataset": "folder",
                  "folder": {"path": "/", "test_share": 0.1, "seed": 0}, "image": {"size": 16, "channels": 1}},
     "tokenizer.final_exponent", "a list of 3: 16 x 16 images have 3 decomposition levels"),
    ("tokenize", {"tokenizer.final_exponent": [-1, -2, -2, -3]}, "tokenizer.final_exponent", "non-decreasing"),
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
    ("train", {"profile": None}, "profile", "cpu, gpu"),
    ("dwt", {"trian": 5}, "trian", "no such key; known keys: profile"),
    ("train", {"threads": 0}, "threads", "an integer >= 1"),
    ("sample", {"threads": True}, "threads", "an integer"),
    ("train", {"train.lr": "4e-4x"}, "train.lr", "a number"),
    ("tokenize", {"tokenizer.bpe_vocab_size": 5}, "tokenizer.bpe_vocab_size", "0 (off), or 9..65536"),
    ("download", {"image.size": 300}, "image.size", "an integer <= 256"),
    ("download", {"image.channels": 2}, "image.channels", "1 (grey) or 3 (RGB)"),
    ("download", {"image.size": 32}, "image.size", "28: dataset mnist has 28 x 28 grey images (only dataset folder"),
    ("download", {"folder": {"path": "/x", "test_share": 1.0, "seed": 0}}, "folder.test_share", "< 1.0"),
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
    value = value[key.split(".")[-1]] if isinstance(value, dict) else value  # a whole group: its bad key's value
    assert f"{key}={value!r}" in lines[0] and allowed in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def _cli(tmp_path: Path, command: str, override: dict):
    """`python -m pipeline <command>` (in process) on params.yaml with `override` (whole keys)."""
    Path("params.yaml").write_text(yaml.safe_dump({**DEFAULTS, **override}))
    result = CliRunner().invoke(app, [command])
    lines = [line for line in result.output.splitlines() if line.startswith("error")]
    return result.exit_code, lines[0] if lines else result.output


def test_download_takes_colour_and_other_sizes_and_a_folder_needs_its_path(tmp_path, monkeypatch):
    from pipeline.stages import download

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({**DEFAULTS, "dataset": "cifar10_jpeg", "image": {"size": 32, "channels": 3}}))
    p = params.load(path, download.PARAMS)
    assert (p.dataset, p.image.size, p.image.channels, p.folder) == ("cifar10_jpeg", 32, 3, None)
    monkeypatch.chdir(tmp_path)
    folder = {"path": None, "test_share": 0.1, "seed": 0}
    code, line = _cli(tmp_path, "download", {"dataset": "folder", "folder": folder})
    assert code == 2 and "folder.path=None is not allowed; expected the folder of your images" in line, line
    code, line = _cli(tmp_path, "download", {"dataset": "folder", "folder": {**folder, "path": "no/such/dir"}})
    assert code == 2 and "folder.path='no/such/dir' is not allowed; expected an existing directory" in line, line


def test_every_stage_that_reads_the_data_set_declares_its_images():
    from pipeline.cli import STAGES

    for stage in STAGES:  # so that params.load refuses what the stages after dwt cannot carry
        declared = importlib.import_module(f"pipeline.stages.{stage}").PARAMS
        assert "dataset" not in declared or "image" in declared, stage


def test_unknown_and_missing_keys_are_refused():
    raw = _with({"tokenizer.methd": "zerotree"})
    with pytest.raises(params.ParamError, match=r"tokenizer\.methd.*known keys"):
        params.validate("tokenizer", raw["tokenizer"])
    del raw["tokenizer"]["methd"], raw["tokenizer"]["method"]
    with pytest.raises(params.ParamError, match=r"tokenizer\.method.*missing"):
        params.validate("tokenizer", raw["tokenizer"])


def test_final_exponent_is_one_integer_or_one_per_level():
    tokenizer = DEFAULTS["tokenizer"]
    assert params.validate("tokenizer", {**tokenizer, "final_exponent": -3}).final_exponent == -3
    per_level = params.validate("tokenizer", {**tokenizer, "final_exponent": [-3, -2, -2, -1]})
    assert per_level.final_exponent == [-3, -2, -2, -1]
    with pytest.raises(params.ParamError, match=r"tokenizer\.final_exponent\[1\]=-20 is not allowed; expected an "
                                                r"integer >= -12$"):
        params.validate("tokenizer", {**tokenizer, "final_exponent": [-3, -20, -2, -1]})


def test_a_yaml_number_without_a_dot_is_a_number_and_a_group_stays_a_dataclass():
    from dataclasses import asdict, replace

    p = params.load(REPO / "params.yaml", params.ALL_KEYS)
    train = params.validate("train", {**DEFAULTS["train"], "lr": "4e-4"})  # YAML reads 4e-4 as a string
    assert train.lr == 4e-4 and asdict(train)["lr"] == 4e-4
    assert asdict(p.tune)["cfg_scales"] == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError):  # replace validates again
        replace(p.train, lr=-1.0)
    with pytest.raises(params.ParamError, match=r"tune\.top_ps\[1\]=0\.0 is not allowed; expected a number > 0\.0"):
        params.validate("tune", {**DEFAULTS["tune"], "top_ps": [0.6, 0.0]})


def test_a_stage_run_through_the_cli_uses_the_threads_param(tmp_path, monkeypatch):
    import torch

    from pipeline.stages import train

    seen = []
    monkeypatch.setattr(train, "main", lambda p, device: seen.append((p.threads, torch.get_num_threads())))
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(_with({"threads": 2})))
    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["train", "--device", "cpu"])
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert seen == [(2, 2)]


def test_the_stages_that_declare_threads_run_torch_and_the_others_do_not():
    from pipeline import provenance
    from pipeline.cli import STAGES

    for stage in STAGES:
        declared = "threads" in importlib.import_module(provenance.stage_module(stage)).PARAMS
        # The CLI reaches pipeline.devices by name for these; their own imports must list it in dvc.yaml.
        assert declared == ("pipeline.devices" in provenance.module_closure(provenance.stage_module(stage))), stage


def compose(*overrides: str) -> dict:
    """conf/ composed as `dvc exp run -S ...` composes it (DVC's own function), as a dict."""
    from dvc.utils.hydra import compose_and_dump

    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "params.yaml"
        compose_and_dump(out, str(REPO / "conf"), None, "config", folder, list(overrides))
        return yaml.safe_load(out.read_text())


def test_committed_params_are_conf_composed_with_the_cpu_profile():
    from dvc.utils.hydra import compose_and_dump

    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "params.yaml"
        compose_and_dump(out, str(REPO / "conf"), None, "config", folder, [])
        assert out.read_text() == (REPO / "params.yaml").read_text(), \
            "params.yaml is stale: regenerate it with `make params` after editing conf/"
    assert DEFAULTS["profile"] == "cpu"


def test_gpu_profile_lays_its_values_over_the_groups_and_explicit_overrides_win(tmp_path):
    gpu = compose("profile=gpu")
    assert gpu["profile"] == "gpu" and gpu["tokenizer"]["final_exponent"] == -3
    assert (gpu["model"]["n_layer"], gpu["model"]["n_embd"], gpu["model"]["n_head"]) == (6, 768, 12)
    assert gpu["model"]["position"] == "wavelet"  # not in the profile: the group's own value
    # An explicit override wins over the profile, whichever comes first on the command line.
    for overrides in (("profile=gpu", "tokenizer.final_exponent=-4"), ("tokenizer.final_exponent=-4", "profile=gpu")):
        assert compose(*overrides)["tokenizer"]["final_exponent"] == -4
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(gpu))
    p = params.load(path, params.ALL_KEYS)
    assert p.sample.per_class * 10 == p.eval.num_samples == 10000
    cpu = params.load(REPO / "params.yaml", params.ALL_KEYS)
    assert cpu.tokenizer.final_exponent == -1 and cpu.model.n_layer == 4


def test_a_data_set_is_a_config_group_and_explicit_overrides_win(tmp_path):
    assert (DEFAULTS["dataset"], DEFAULTS["image"], DEFAULTS["folder"]) == ("mnist", {"size": 28, "channels": 1}, None)
    cifar = compose("dataset=cifar10_jpeg")
    assert (cifar["dataset"], cifar["image"], cifar["folder"]) == ("cifar10_jpeg", {"size": 32, "channels": 3}, None)
    assert compose("dataset=fashion_mnist")["image"] == {"size": 28, "channels": 1}
    for overrides in (("dataset=folder", "folder.path=/data", "image.channels=3"),
                      ("image.channels=3", "folder.path=/data", "dataset=folder")):
        mine = compose(*overrides)
        assert mine["image"] == {"size": 28, "channels": 3}
        assert mine["folder"] == {"path": "/data", "test_share": 0.1, "seed": 0}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(cifar))
    assert params.load(path, ("dataset", "image", "folder")).image.channels == 3


def test_a_stage_cannot_read_a_key_it_did_not_declare():
    p = params.load(REPO / "params.yaml", ("dataset", "sample"))
    assert p.dataset == "mnist" and p.sample.per_class > 0
    with pytest.raises(AttributeError, match="'train' was not declared by this stage"):
        p.train


@pytest.mark.parametrize("text,expected", [
    ("dataset: [mnist\n", "line 2, column 1"),
    ("- a\n- b\n", "holds a list, not a mapping"),
])
def test_unreadable_params_file_is_one_line(tmp_path, monkeypatch, text, expected):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(text)
    result = CliRunner().invoke(app, ["dwt"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "params.yaml" in lines[0] and expected in lines[0], result.output
