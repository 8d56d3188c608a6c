"""The train stage on a tiny model: loss goes down, resume after SIGKILL gives the same weights,
a checkpoint is resumed only by the same code and data, divergence stops cleanly and keeps the
previous results, DDP equals one process on the same global batches, HF save/load round trip."""
from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import REPO, run_stage, plain_params
from safetensors.torch import load_file

from pipeline import formats, params
from pipeline.languages.base import from_description
from pipeline.models.transformer import network as model_mod
from pipeline.models.transformer.task import model_config
from pipeline.stages import train as train_stage

TINY_MODEL = {"n_layer": 1, "n_embd": 32, "n_head": 2, "dropout": 0.1}
TINY_TRAIN = {"steps": 12, "batch_size": 8, "log_every": 2, "eval_every": 4, "eval_batches": 1,
              "final_eval_images": 16, "checkpoint_every": 4, "warmup_steps": 2}


def workdir(tmp_path: Path, tokens: Path, model=None, train=None) -> Path:
    """A directory laid out like the repository for `python -m pipeline train`."""
    raw = plain_params()
    raw["model"].update(TINY_MODEL, **(model or {}))
    raw["train"].update(TINY_TRAIN, **(train or {}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "data").mkdir(exist_ok=True)
    if not (tmp_path / "data" / "tokens").exists():
        (tmp_path / "data" / "tokens").symlink_to(tokens)
    return tmp_path


def outputs(folder: Path) -> dict[str, Path]:
    """The train stage's outputs under `folder`, its published curves in folder/live."""
    return {"checkpoints": folder / "ck", "model": folder / "model",
            "metrics": folder / "live/metrics.json", "plots": folder / "live/plots/metrics"}


def fresh(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_lowers_the_loss_and_saves_a_usable_model(tmp_path, tokens):
    cwd = workdir(tmp_path, tokens, train={"steps": 30, "lr": 3e-3})
    p = params.load(cwd / "params.yaml", train_stage.PARAMS)
    metrics = train_stage.run(p, "cpu", tokens=cwd / "data/tokens", **outputs(cwd))
    curve = [float(line.split("\t")[1]) for line in (cwd / "live/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]]
    assert curve[-1] < curve[0] - 0.3
    summary = json.loads((cwd / "live/metrics.json").read_text())
    assert summary["test"]["bits_per_token"] == pytest.approx(metrics["test"]["bits_per_token"])
    # Grammar masking can only help: the code length is at most the unmasked NLL.
    assert metrics["test"]["bits_per_token"] < metrics["test"]["unmasked_bits_per_token"]
    assert metrics["test"]["bits_per_image"] == pytest.approx(
        metrics["test"]["bits_per_token"] * metrics["test"]["tokens"] / metrics["test"]["images"])

    loaded = model_mod.WaveletGPT.load(cwd / "model")
    meta = formats.read_meta(cwd / "data/tokens")
    assert loaded.config.initial_exponent_counts == meta["initial_exponent_counts"]
    assert loaded.language == from_description(meta["language"])
    assert (loaded.language.wavelet, loaded.language.final_exponent, loaded.language.size) == ("haar", -1, 32)


def test_the_e0_table_covers_every_value_the_language_allows(tokens):
    meta = formats.read_meta(tokens)
    p = params.load(REPO / "params.yaml", train_stage.PARAMS)
    config = model_config(p, meta)
    language = from_description(meta["language"])
    assert (config.e0_min, config.e0_max) == language.e0_range == (0, 5)  # f = -1, M = 32
    seen = {int(e) for counts in meta["initial_exponent_counts"].values() for e in counts}
    test_e0 = set(formats.read_split(tokens, "test", meta).encoded.initial_exponents.tolist())
    assert test_e0 - seen, "the fixture should hold a test e0 that training never saw"


@pytest.mark.parametrize("position,condition", [("sequence", "class"), ("both", "none")])
def test_position_and_condition_ablations_train(tmp_path, tokens, position, condition):
    cwd = workdir(tmp_path, tokens, model={"position": position, "condition": condition},
                  train={"steps": 4, "grammar_mask": False})
    p = params.load(cwd / "params.yaml", train_stage.PARAMS)
    metrics = train_stage.run(p, "cpu", tokens=cwd / "data/tokens", **outputs(cwd))
    assert np.isfinite(metrics["test"]["unmasked_bits_per_token"])
    config = model_mod.WaveletGPT.load(cwd / "model").config
    assert (config.position, config.condition) == (position, condition)


def test_sigkill_then_rerun_gives_the_same_weights(tmp_path, tokens):
    settings = {"steps": 150, "checkpoint_every": 5, "eval_every": 1000}
    straight = workdir(fresh(tmp_path / "straight"), tokens, train=settings)
    code, out = run_stage(straight, "train")
    assert code == 0, out

    killed = workdir(fresh(tmp_path / "killed"), tokens, train=settings)
    process = run_stage(killed, "train", wait=False)
    checkpoint = killed / "data/checkpoints/last.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    step = torch.load(checkpoint, weights_only=False)["step"]
    assert 0 < step < settings["steps"], "the run was not interrupted mid-way"
    assert not (killed / "data/model").exists() and not (killed / "reports/train").exists()

    code, out = run_stage(killed, "train")
    assert code == 0, out
    assert f"resuming from data/checkpoints/last.pt at step {step}" in out
    assert same_weights(weights(straight / "data/model"), weights(killed / "data/model"))
    steps_logged = [int(line.split("\t")[0]) for line in
                    (killed / "reports/train/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]]
    assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == settings["steps"]


def test_divergence_stops_keeps_the_checkpoint_and_the_previous_results(tmp_path, tokens):
    cwd = workdir(tmp_path, tokens, train={"steps": 4})
    code, out = run_stage(cwd, "train")
    assert code == 0, out
    before = {path: path.read_bytes() for path in [*(cwd / "reports/train").rglob("*"), *(cwd / "data/model").rglob("*")]
              if path.is_file()}
    workdir(cwd, tokens, train={"steps": 4, "lr": 1e30, "warmup_steps": 0, "checkpoint_every": 1, "grad_clip": 1e30})
    code, out = run_stage(cwd, "train")
    assert code == 1
    assert out.strip().splitlines()[-1].startswith("error: training loss is") and "Traceback" not in out
    assert "last good checkpoint" in out and "previous reports are kept" in out
    state = torch.load(cwd / "data/checkpoints/last.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    after = {path: path.read_bytes() for path in before if path.is_file()}
    assert after == before, "the failed run changed the last good results"


def _finished_run(tmp_path: Path, tokens: Path) -> tuple[Path, Path]:
    """A finished 4-step run whose code is a copy of the package (so a test can edit it)."""
    code_root = tmp_path / "code"
    shutil.copytree(REPO / "pipeline", code_root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    cwd = workdir(fresh(tmp_path / "run"), tokens, train={"steps": 4})
    code, out = run_stage(cwd, "train", pythonpath=code_root)
    assert code == 0, out
    return cwd, code_root


def test_a_code_change_after_a_finished_run_retrains(tmp_path, tokens):
    cwd, code_root = _finished_run(tmp_path, tokens)
    first = weights(cwd / "data/model")
    code, out = run_stage(cwd, "train", pythonpath=code_root)  # same code, params, data: nothing to do
    assert code == 0 and "resuming from data/checkpoints/last.pt at step 4" in out, out
    assert same_weights(first, weights(cwd / "data/model"))

    model_py = code_root / "pipeline" / "models" / "transformer" / "network.py"
    source = model_py.read_text()
    assert '"gelu_pytorch_tanh"' in source
    model_py.write_text(source.replace('"gelu_pytorch_tanh"', '"relu"'))  # a numerics default
    code, out = run_stage(cwd, "train", pythonpath=code_root)
    assert code == 0, out
    assert "made by other code, params or data; starting afresh" in out and "resuming" not in out
    retrained = model_mod.WaveletGPT.from_pretrained(cwd / "data/model")
    assert retrained.config.activation_function == "relu"
    assert not same_weights(first, weights(cwd / "data/model"))


def test_edited_shards_after_a_finished_run_retrain(tmp_path, tokens):
    cwd, code_root = _finished_run(tmp_path, tokens)
    edited = tmp_path / "tokens"
    shutil.copytree(tokens, edited)
    (cwd / "data/tokens").unlink()
    (cwd / "data/tokens").symlink_to(edited)
    shard = edited / "train" / "part-00000.parquet"
    table = pq.read_table(shard)
    labels = table.column("label").to_numpy().copy()
    labels[0] = (labels[0] + 1) % 10  # still a valid shard, with other contents
    pq.write_table(table.set_column(1, "label", pa.array(labels, type=pa.int16())), shard)
    code, out = run_stage(cwd, "train", pythonpath=code_root)
    assert code == 0, out
    assert "starting afresh" in out and "resuming" not in out


def test_ddp_equals_one_process_on_the_same_global_batches(tmp_path, tokens):
    """Two ranks see different halves of each global batch; with gradients averaged they end with
    the weights one process gets on the whole batches. Without the all-reduce each rank would
    follow its own half, and rank 0's weights (the saved ones) would differ."""
    settings = {"steps": 6, "precision": "fp32", "cond_dropout": 0.3}
    single = workdir(fresh(tmp_path / "one"), tokens, model={"dropout": 0.0}, train={**settings, "batch_size": 8})
    code, out = run_stage(single, "train")
    assert code == 0, out
    double = workdir(fresh(tmp_path / "two"), tokens, model={"dropout": 0.0}, train={**settings, "batch_size": 4})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    code, out = run_stage(double, "train", prefix=torchrun)
    assert code == 0, out
    assert "2 process(es)" in out
    assert json.loads((double / "reports/train/metrics.json").read_text())["processes"] == 2
    a, b = weights(single / "data/model"), weights(double / "data/model")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=name)
