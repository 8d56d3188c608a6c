"""The train stage on a tiny model: loss goes down, resume after SIGKILL gives the same weights,
divergence stops cleanly, DDP with two CPU processes, HF save/load round trip."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline import dwt, model as model_mod, params, shards
from pipeline import tokenize as tokenize_stage
from pipeline import train as train_stage

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"n_layer": 1, "n_embd": 32, "n_head": 2, "dropout": 0.1}
TINY_TRAIN = {"steps": 12, "batch_size": 8, "log_every": 2, "eval_every": 4, "eval_batches": 1,
              "final_eval_images": 16, "checkpoint_every": 4, "warmup_steps": 2}


@pytest.fixture(scope="module")
def tokens(mnist_raw, tmp_path_factory) -> Path:
    """data/tokens of the first 160 MNIST images per split, f = -1."""
    root = tmp_path_factory.mktemp("tokens")
    dwt.run("mnist", "haar", 160, mnist_raw, root / "dwt", root / "dwt.json")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tokenizer"]["final_exponent"] = -1  # ~430 tokens per image keeps CPU steps quick
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    p = params.load(root / "params.yaml", ("tokenizer",))
    tokenize_stage.run(p, root / "dwt", root / "data" / "tokens", root / "t.json", root / "fig")
    return root / "data" / "tokens"


def workdir(tmp_path: Path, tokens: Path, model=None, train=None) -> Path:
    """A directory laid out like the repository for `python -m pipeline train`."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"].update(TINY_MODEL, **(model or {}))
    raw["train"].update(TINY_TRAIN, **(train or {}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "data").mkdir(exist_ok=True)
    if not (tmp_path / "data" / "tokens").exists():
        (tmp_path / "data" / "tokens").symlink_to(tokens)
    return tmp_path


def run_stage(cwd: Path, *args: str, prefix=(), wait=True):
    env = dict(os.environ, PYTHONPATH=str(REPO), WAVELET_DEVICE="cpu", OMP_NUM_THREADS="1")
    command = [*prefix, *(["-m", "pipeline"] if prefix else [sys.executable, "-m", "pipeline"]), *args]
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return process
    out, _ = process.communicate(timeout=600)
    return process.returncode, out


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def test_training_lowers_the_loss_and_saves_a_usable_model(tmp_path, tokens):
    cwd = workdir(tmp_path, tokens, train={"steps": 30, "lr": 3e-3})
    p = params.load(cwd / "params.yaml", ("model", "train"))
    metrics = train_stage.run(p, "cpu", cwd / "data/tokens", cwd / "ck", cwd / "model", cwd / "live")
    curve = [float(line.split("\t")[1]) for line in (cwd / "live/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]]
    assert curve[-1] < curve[0] - 0.3
    summary = json.loads((cwd / "live/metrics.json").read_text())
    assert summary["test"]["bits_per_token"] == pytest.approx(metrics["test"]["bits_per_token"])
    # Grammar masking can only help: the code length is at most the unmasked NLL.
    assert metrics["test"]["bits_per_token"] < metrics["test"]["unmasked_bits_per_token"]
    assert metrics["test"]["bits_per_image"] == pytest.approx(
        metrics["test"]["bits_per_token"] * metrics["test"]["tokens"] / metrics["test"]["images"])

    loaded = model_mod.WaveletGPT.from_pretrained(cwd / "model")
    meta = shards.read_meta(cwd / "data/tokens")
    assert loaded.config.initial_exponent_counts == meta["initial_exponent_counts"]
    assert (loaded.config.wavelet, loaded.config.final_exponent, loaded.config.size) == ("haar", -1, 32)
    assert loaded.config.token_names[0] == "Group4x4"


@pytest.mark.parametrize("position,condition", [("sequence", "class"), ("both", "none")])
def test_position_and_condition_ablations_train(tmp_path, tokens, position, condition):
    cwd = workdir(tmp_path, tokens, model={"position": position, "condition": condition},
                  train={"steps": 4, "grammar_mask": False})
    p = params.load(cwd / "params.yaml", ("model", "train"))
    metrics = train_stage.run(p, "cpu", cwd / "data/tokens", cwd / "ck", cwd / "model", cwd / "live")
    assert np.isfinite(metrics["test"]["unmasked_bits_per_token"])
    config = model_mod.WaveletGPT.from_pretrained(cwd / "model").config
    assert (config.position, config.condition) == (position, condition)


def test_sigkill_then_rerun_gives_the_same_weights(tmp_path, tokens):
    settings = {"steps": 150, "checkpoint_every": 5, "eval_every": 1000}
    (tmp_path / "straight").mkdir()
    (tmp_path / "killed").mkdir()
    straight = workdir(tmp_path / "straight", tokens, train=settings)
    code, out = run_stage(straight, "train")
    assert code == 0, out

    killed = workdir(tmp_path / "killed", tokens, train=settings)
    process = run_stage(killed, "train", wait=False)
    checkpoint = killed / "data/checkpoints/last.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    step = torch.load(checkpoint, weights_only=False)["step"]
    assert 0 < step < settings["steps"], "the run was not interrupted mid-way"
    assert not (killed / "data/model").exists()

    code, out = run_stage(killed, "train")
    assert code == 0, out
    assert f"resuming from data/checkpoints/last.pt at step {step}" in out
    a, b = weights(straight / "data/model"), weights(killed / "data/model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps_logged = [int(line.split("\t")[0]) for line in
                    (killed / "reports/train/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]]
    assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == settings["steps"]


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, tokens):
    cwd = workdir(tmp_path, tokens, train={"lr": 1e30, "warmup_steps": 0, "checkpoint_every": 1,
                                           "grad_clip": 1e30})
    code, out = run_stage(cwd, "train")
    assert code == 1
    assert "training loss is" in out and "last good checkpoint" in out
    state = torch.load(cwd / "data/checkpoints/last.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (cwd / "data/model").exists()


def test_ddp_with_two_cpu_processes(tmp_path, tokens):
    cwd = workdir(tmp_path, tokens, train={"steps": 6})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    code, out = run_stage(cwd, "train", prefix=torchrun)
    assert code == 0, out
    assert "2 process(es)" in out
    summary = json.loads((cwd / "reports/train/metrics.json").read_text())
    assert summary["processes"] == 2 and np.isfinite(summary["test"]["bits_per_token"])
    assert (cwd / "data/model/model.safetensors").is_file()
