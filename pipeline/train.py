"""Stage `train`: fit the wavelet transformer to the token shards.

    python -m pipeline train                            # one process, device auto
    torchrun --nproc-per-node 4 -m pipeline train       # DistributedDataParallel

Sequences are batched by similar length (padding is masked out of the loss); AdamW with linear
warmup and cosine decay; gradient clipping; fixed seeds. The forward pass runs in bf16 autocast
(`train.precision`, on CUDA and on CPUs with bf16 instructions alike; fp32 weights and optimizer)
with PyTorch's SDPA attention. A checkpoint lands in data/checkpoints
every `train.checkpoint_every` steps; rerunning after an interruption continues from it and, on
CPU, ends with the same weights as an uninterrupted run. Rank 0 logs (dvclive) and saves.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import grammar, shards
from .io import atomic_dir, atomic_file
from .model import START, WaveletGPT, WaveletGPTConfig, bits, token_nll, unpack_valid
from .params import Params
from .progress import log, track

DEVICE_ENV = "WAVELET_DEVICE"
CHECKPOINT = "last.pt"


class TrainingDiverged(RuntimeError):
    pass


# ----- data -----

class TokenData:
    """One split's sequences with their grammar masks, assembled into padded batches."""

    def __init__(self, split: shards.TokenSplit, language: grammar.Language):
        e = split.encoded
        self.tokens, self.bp, self.i1, self.i2, self.offsets = e.tokens, e.bp, e.i1, e.i2, e.offsets
        self.masks = grammar.sequence_masks(e.tokens, e.offsets, e.initial_exponents, language)
        self.lengths = e.lengths
        self.e0 = e.initial_exponents.astype(np.int64)
        self.labels = split.labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        """Padded tensors for the given sequences: inputs are the previous tokens (START first),
        targets the tokens (-1 on padding), positions those of the targets."""
        width = int(self.lengths[rows].max())
        out = {name: np.zeros((len(rows), width), np.int64) for name in ("prev", "bp", "i1", "i2")}
        out["target"] = np.full((len(rows), width), -1, np.int64)
        out["mask"] = np.full((len(rows), width), 0xFF, np.int64)  # padding: all ids "valid", no -inf rows
        for r, j in enumerate(rows):
            seq = slice(self.offsets[j], self.offsets[j + 1])
            n = self.lengths[j]
            out["target"][r, :n] = self.tokens[seq]
            out["prev"][r, 0] = START
            out["prev"][r, 1:n] = self.tokens[seq][:-1]
            for name in ("bp", "i1", "i2", "mask"):
                out[name][r, :n] = getattr(self, name + "s" if name == "mask" else name)[seq]
        tensors = {name: torch.from_numpy(a).to(device) for name, a in out.items()}
        tensors["e0"] = torch.from_numpy(self.e0[rows]).to(device)
        tensors["label"] = torch.from_numpy(self.labels[rows]).to(device)
        return tensors


class LengthBatches:
    """Batches of similar-length sequences, a fresh seeded order every epoch.

    The batch of step s depends only on (seed, s): a resumed run sees the same batches as an
    uninterrupted one. Under DDP, rank r takes every world-th batch of the epoch.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, world: int = 1, rank: int = 0):
        self.lengths, self.batch_size, self.seed, self.world, self.rank = lengths, batch_size, seed, world, rank
        self.per_epoch = max(1, len(lengths) // (batch_size * world))
        self._epoch_number, self._batches = -1, []

    def _epoch(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        # Sort by length with random tie-breaking and jitter, so batches change between epochs.
        keys = self.lengths + rng.uniform(0, 32, len(self.lengths))
        order = np.argsort(keys, kind="stable")
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def rows(self, step: int) -> np.ndarray:
        epoch, index = divmod(step, self.per_epoch)
        if epoch != self._epoch_number:
            self._epoch_number, self._batches = epoch, self._epoch(epoch)
        return self._batches[(index * self.world + self.rank) % len(self._batches)]


# ----- model, optimiser, schedule -----

def model_config(p: Params, meta: dict) -> WaveletGPTConfig:
    m = p.model
    counts = meta["initial_exponent_counts"]
    e0_values = sorted({int(e) for per_class in counts.values() for e in per_class})
    max_planes = max(e0_values) - meta["final_exponent"]
    # GPT-2's absolute table is only read for `sequence`/`both`; leave room past the longest sequence.
    n_positions = 1 if m.position == "wavelet" else 64 * math.ceil(1.25 * meta["max_length"] / 64)
    return WaveletGPTConfig(
        n_layer=m.n_layer, n_embd=m.n_embd, n_head=m.n_head, n_positions=n_positions,
        resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.dropout,
        position=m.position, condition=m.condition, n_classes=len(counts), size=meta["size"],
        max_planes=max_planes, e0_min=min(e0_values), e0_max=max(e0_values),
        wavelet=meta["wavelet"], method=meta["method"], final_exponent=meta["final_exponent"],
        initial_threshold=meta["initial_threshold"], image_height=meta["image_height"],
        image_width=meta["image_width"], initial_exponent_counts=counts,
        attn_implementation="sdpa",
    )


def optimizer_for(model: torch.nn.Module, t) -> torch.optim.AdamW:
    # Weight decay on matrices only (not on biases, LayerNorm gains or embeddings' scale vectors).
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=t.lr, betas=(0.9, 0.95))


def learning_rate(step: int, t) -> float:
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * cosine)


# ----- devices and processes -----

def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    name = os.environ.get(DEVICE_ENV, name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ValueError(f"device {name!r} is not one of auto, cuda, cpu")
    return torch.device("cpu")


class Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.is_main = self.rank == 0

    def start(self, device: torch.device) -> None:
        if self.world > 1:
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)
            if device.type == "cuda":
                torch.cuda.set_device(device)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def stop(self) -> None:
        if self.world > 1:
            torch.distributed.destroy_process_group()


# ----- checkpoints -----

def fingerprint(p: Params, meta: dict, world: int) -> str:
    """What a checkpoint must match to be resumed (anything that changes the run)."""
    keys = {"model": asdict(p.model), "train": asdict(p.train), "meta": meta, "world": world}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(path: Path, model, optimizer, step: int, print_: str) -> None:
    state = {
        "fingerprint": print_, "step": step, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    with atomic_file(path, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: Path, print_: str) -> dict | None:
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != print_:
        log(f"{path}: made with other params or data; starting afresh")
        return None
    return state


def _truncate_live_logs(live_dir: Path, step: int) -> None:
    """Drop dvclive rows logged after the checkpoint we resume from (they will be logged again)."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        kept = [lines[0]] + [line for line in lines[1:] if int(line.split("\t")[0]) <= step]
        tsv.write_text("\n".join(kept) + "\n")


# ----- evaluation -----

@torch.no_grad()
def evaluate(model, data: TokenData, rows: np.ndarray, batch_size: int, device, autocast) -> dict:
    """Test NLL over the given sequences: bits per token and per image, grammar-masked (the code
    length) and unmasked."""
    model.eval()
    masked = unmasked = 0.0
    tokens = 0
    for start in range(0, len(rows), batch_size):
        b = data.batch(rows[start:start + batch_size], device)
        with autocast:
            logits = model(b["prev"], b["bp"], b["i1"], b["i2"], b["e0"], b["label"])
        masked += token_nll(logits, b["target"], unpack_valid(b["mask"])).sum().item()
        unmasked += token_nll(logits, b["target"], None).sum().item()
        tokens += int((b["target"] >= 0).sum())
    model.train()
    return {"bits_per_token": bits(masked / tokens), "bits_per_image": bits(masked / len(rows)),
            "unmasked_bits_per_token": bits(unmasked / tokens),
            "unmasked_bits_per_image": bits(unmasked / len(rows)), "images": int(len(rows)),
            "tokens": tokens}


# ----- the loop -----

def run(p: Params, device_name: str = "auto", tokens_root: str | Path = "data/tokens",
        checkpoint_dir: str | Path = "data/checkpoints", model_dir: str | Path = "data/model",
        live_dir: str | Path = "reports/train") -> dict | None:
    t = p.train
    dist = Distributed()
    device = resolve_device(device_name, dist.local_rank)
    dist.start(device)
    torch.manual_seed(t.seed)
    meta = shards.read_meta(tokens_root)
    language = grammar.Language(meta["size"], meta["method"], meta["final_exponent"], meta["initial_threshold"])
    train_data = TokenData(shards.read_split(tokens_root, "train"), language)
    test_data = TokenData(shards.read_split(tokens_root, "test"), language)

    model = WaveletGPT(model_config(p, meta)).to(device)
    optimizer = optimizer_for(model, t)
    checkpoint_path, live_dir = Path(checkpoint_dir) / CHECKPOINT, Path(live_dir)
    print_ = fingerprint(p, meta, dist.world)
    state = load_checkpoint(checkpoint_path, print_)
    start_step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        start_step = state["step"]
        log(f"resuming from {checkpoint_path} at step {start_step}")
    elif dist.is_main:
        shutil.rmtree(live_dir, ignore_errors=True)
        checkpoint_path.parent.mkdir(parents=True, exist_ok=True)

    trained = model
    if t.compile and device.type == "cuda":
        trained = torch.compile(model)
    if dist.world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if t.precision == "bf16" else nullcontext()

    live = None
    if dist.is_main:
        from dvclive import Live

        if start_step:
            _truncate_live_logs(live_dir, start_step)
        live = Live(dir=str(live_dir), resume=start_step > 0, report=None, save_dvc_exp=False,
                    dvcyaml=None)
        live.step = start_step
    n_params = sum(p_.numel() for p_ in model.parameters())
    log(f"model: {n_params:,} parameters, device {device}, {dist.world} process(es), "
        f"{len(train_data)} training sequences")

    batches = LengthBatches(train_data.lengths, t.batch_size, t.seed, dist.world, dist.rank)
    eval_rows = np.arange(min(len(test_data), t.eval_batches * t.batch_size))
    tokens_seen, clock = 0, time.perf_counter()
    model.train()
    for step in track(range(start_step, t.steps), "train", total=t.steps - start_step):
        lr = learning_rate(step, t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        b = train_data.batch(batches.rows(step), device)
        labels = b["label"]
        if model.config.condition == "class" and t.cond_dropout > 0:
            drop = torch.rand(labels.shape) < t.cond_dropout
            labels = torch.where(drop.to(device), torch.full_like(labels, model.config.null_class), labels)
        with autocast:
            logits = trained(b["prev"], b["bp"], b["i1"], b["i2"], b["e0"], labels)
        valid = unpack_valid(b["mask"]) if t.grammar_mask else None
        n_tokens = (b["target"] >= 0).sum()
        loss = token_nll(logits, b["target"], valid).sum() / n_tokens
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"training loss is {loss.item()} at step {step}; the last good checkpoint "
                f"({checkpoint_path}) is kept. Lower train.lr or raise train.warmup_steps.")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += int(n_tokens) * dist.world

        done = step + 1
        if live is not None and (done % t.log_every == 0 or done == t.steps):
            elapsed = time.perf_counter() - clock
            live.step = done
            live.log_metric("train/loss", loss.item())
            live.log_metric("train/bits_per_token", bits(loss.item()))
            live.log_metric("train/tokens_per_s", tokens_seen / elapsed)
            live.log_metric("train/lr", lr)
            if done % t.eval_every == 0 or done == t.steps:
                val = evaluate(model, test_data, eval_rows, t.batch_size, device, autocast)
                live.log_metric("val/loss", val["bits_per_token"] * math.log(2))
                live.log_metric("val/bits_per_token", val["bits_per_token"])
                log(f"step {done}: train {bits(loss.item()):.4f} bits/token, "
                    f"val {val['bits_per_token']:.4f} bits/token, {tokens_seen / elapsed:,.0f} tokens/s")
            live.make_summary()
        if done % t.checkpoint_every == 0 or done == t.steps:
            if dist.is_main:
                save_checkpoint(checkpoint_path, model, optimizer, done, print_)
            dist.barrier()

    metrics = None
    if dist.is_main:
        rows = np.arange(len(test_data) if t.final_eval_images is None else min(len(test_data), t.final_eval_images))
        final = evaluate(model, test_data, rows, t.batch_size, device, autocast)
        log(f"test NLL over {final['images']} images: {final['bits_per_token']:.4f} bits/token, "
            f"{final['bits_per_image']:.1f} bits/image")
        with atomic_dir(model_dir) as tmp:
            model.save_pretrained(tmp)
        metrics = {"test": final, "parameters": n_params, "steps": t.steps,
                   "train_tokens_per_s": tokens_seen / (time.perf_counter() - clock),
                   "device": device.type, "processes": dist.world}
        live.summary["test"] = final
        for key in ("parameters", "train_tokens_per_s", "device", "processes"):
            live.summary[key] = metrics[key]
        live.make_summary()
    dist.barrier()
    dist.stop()
    return metrics
