"""Stage `train`: fit the transformer to the token shards.

    python -m pipeline train                            # one process, device auto
    torchrun --nproc-per-node 4 -m pipeline train       # DistributedDataParallel

Sequences are batched by similar length (padding is masked out of the loss); AdamW with linear
warmup and cosine decay to a floor (transformers' schedule); gradient clipping; fixed seeds. The
forward pass runs in bf16 autocast (`train.precision`; fp32 weights and optimizer) with PyTorch's
SDPA attention. Under DDP the global batch of a step is the same as a single process's with
`world` times the batch size, and the loss is normalised by the global token count, so the
result does not depend on how many processes share the work.

A checkpoint lands in data/checkpoints every `train.checkpoint_every` steps; rerunning after an
interruption continues from it and, on CPU, ends with the same weights as an uninterrupted run.
It is resumed only by the same code, params and data (its fingerprint holds their digests). The
training curves are logged (dvclive) beside the checkpoint and published to reports/train only
when the run succeeds, so a failed run leaves the previous reports in place. Rank 0 logs and saves.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from . import formats, provenance
from .batches import LengthBatches, class_dropout
from .devices import Distributed, autocast, resolve_device
from .io import InputError, atomic_dir, atomic_file
from .language import from_description
from .model import WaveletGPT, WaveletGPTConfig, bits, token_nll
from .params import Params
from .progress import log, track

PARAMS = ("profile", "model", "train")
CHECKPOINT = "last.pt"
LIVE = "live"  # the run's dvclive folder, beside the checkpoint until the run succeeds


class TrainingDiverged(RuntimeError):
    pass


# ----- data -----

class TokenData:
    """One split's sequences, assembled into padded batches with their grammar masks."""

    def __init__(self, split: formats.TokenSplit, language, pad_to: int = 1):
        self.encoded = split.encoded
        self.language = language
        self.start_token = language.vocab_size
        self.pad_to = pad_to
        self.lengths = self.encoded.lengths
        self.e0 = self.encoded.initial_exponents.astype(np.int64)
        self.labels = split.labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def width(self, rows: np.ndarray) -> int:
        """The padded width of a batch of these sequences: the longest, rounded up to `pad_to`."""
        return self.pad_to * -(-int(self.lengths[rows].max()) // self.pad_to)

    def batch(self, rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        """Padded tensors for the given sequences: inputs are the previous tokens (the start token
        first), targets the tokens (-1 on padding), positions those of the targets, `valid` the
        ids the grammar allows at each target (all of them on padding)."""
        width = self.width(rows)
        chosen = self.encoded.select(rows)
        lengths, offsets = chosen.lengths, chosen.offsets
        filled = np.arange(width)[None, :] < lengths[:, None]
        out = {name: np.zeros((len(rows), width), np.int64) for name in ("prev", "bp", "i1", "i2")}
        out["target"] = np.full((len(rows), width), -1, np.int64)
        out["target"][filled] = chosen.tokens
        out["prev"][:, 0] = self.start_token
        out["prev"][:, 1:] = np.where(filled[:, 1:], out["target"][:, :-1], 0)
        for name in ("bp", "i1", "i2"):
            out[name][filled] = getattr(chosen, name)
        valid = np.ones((len(rows), width, self.language.vocab_size), bool)  # padding: no -inf rows
        valid[filled] = self.language.valid_ids(chosen)
        tensors = {name: torch.from_numpy(a).to(device) for name, a in out.items()}
        tensors["valid"] = torch.from_numpy(valid).to(device)
        tensors["e0"] = torch.from_numpy(self.e0[rows]).to(device)
        tensors["label"] = torch.from_numpy(self.labels[rows]).to(device)
        return tensors


COMPILED_WIDTH_STEP = 64  # torch.compile sees one width per 64 tokens (and dynamic shapes), not one per step


def load_data(tokens_root: Path, pad_to: int = 1) -> tuple[dict, TokenData, TokenData]:
    """meta.json and both splits, checked against the data contract and the language's grammar."""
    meta = formats.read_meta(tokens_root)
    language = from_description(meta["language"])
    splits = [TokenData(formats.read_split(tokens_root, split, meta, check_grammar=True), language, pad_to)
              for split in ("train", "test")]
    return meta, *splits


# ----- model, optimiser, schedule -----

def model_config(p: Params, meta: dict) -> WaveletGPTConfig:
    shape = p.model
    # GPT-2's absolute table is only read for `sequence`/`both`; leave room past the longest sequence.
    n_positions = 1 if shape.position == "wavelet" else 64 * math.ceil(1.25 * meta["max_length"] / 64)
    return WaveletGPTConfig.for_language(
        from_description(meta["language"]),
        n_layer=shape.n_layer, n_embd=shape.n_embd, n_head=shape.n_head, n_positions=n_positions,
        resid_pdrop=shape.dropout, embd_pdrop=shape.dropout, attn_pdrop=shape.dropout,
        position=shape.position, condition=shape.condition, n_classes=meta["n_classes"],
        initial_exponent_counts=meta["initial_exponent_counts"], longest_sequence=meta["max_length"],
        attn_implementation="sdpa",
    )


def build_optimizer(model: torch.nn.Module, p: Params, device: torch.device, steps: int):
    """AdamW (weight decay on matrices only) and its warmup + cosine schedule over `steps`."""
    settings = p.train
    decay = [w for w in model.parameters() if w.requires_grad and w.dim() >= 2]
    no_decay = [w for w in model.parameters() if w.requires_grad and w.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr, betas=(0.9, 0.95),
                                  fused=device.type == "cuda")
    schedule = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, settings.warmup_steps, steps, min_lr_rate=settings.min_lr_ratio)
    return optimizer, schedule


# ----- checkpoints -----

def fingerprint(p: Params, meta: dict, world: int, tokens_root: Path) -> str:
    """What a checkpoint must match to be resumed: params, the code the stage runs, the data it
    reads, and the number of processes."""
    keys = {"model": asdict(p.model), "train": asdict(p.train), "meta": meta, "world": world,
            "code": provenance.code_digest("train"),
            "data": provenance.digest_tree(tokens_root)}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(path: Path, model, optimizer, schedule, step: int, run_fingerprint: str) -> None:
    state = {
        "fingerprint": run_fingerprint, "step": step, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    with atomic_file(path, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: Path, run_fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        found = state.get("fingerprint")
    except Exception as error:  # torch raises many kinds for a damaged file
        raise InputError(path, f"is not a readable checkpoint ({type(error).__name__}: {error})",
                         fix="delete it to train from scratch") from None
    if found != run_fingerprint:
        log(f"{path}: made by other code, params or data; starting afresh")
        return None
    return state


def restore(state: dict, model, optimizer, schedule) -> int:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"]


# ----- logging -----

def open_live_log(folder: Path, start_step: int):
    """dvclive in the run's own folder; a resumed run drops rows logged after its checkpoint."""
    from dvclive import Live

    if start_step:
        for tsv in (folder / "plots" / "metrics").rglob("*.tsv"):
            lines = tsv.read_text().splitlines()
            kept = [lines[0]] + [line for line in lines[1:] if int(line.split("\t")[0]) <= start_step]
            tsv.write_text("\n".join(kept) + "\n")
    live = Live(dir=str(folder), resume=start_step > 0, report=None, save_dvc_exp=False, dvcyaml=None)
    live.step = start_step
    return live


def publish(folder: Path, destination: Path) -> None:
    """The finished run's logs replace the previous ones in one rename."""
    with atomic_dir(destination) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)


# ----- evaluation -----

@torch.no_grad()
def evaluate(model, data: TokenData, rows: np.ndarray, batch_size: int, device, precision: str) -> dict:
    """Test NLL over the given sequences: bits per token and per image, grammar-masked (the code
    length) and unmasked."""
    model.eval()
    masked = unmasked = 0.0
    tokens = 0
    for start in range(0, len(rows), batch_size):
        batch = data.batch(rows[start:start + batch_size], device)
        with autocast(device, precision):
            logits = model(batch["prev"], batch["bp"], batch["i1"], batch["i2"], batch["e0"], batch["label"])
        masked += token_nll(logits, batch["target"], batch["valid"]).sum().item()
        unmasked += token_nll(logits, batch["target"], None).sum().item()
        tokens += int((batch["target"] >= 0).sum())
    return {"bits_per_token": bits(masked / tokens), "bits_per_image": bits(masked / len(rows)),
            "unmasked_bits_per_token": bits(unmasked / tokens),
            "unmasked_bits_per_image": bits(unmasked / len(rows)), "images": int(len(rows)),
            "tokens": tokens}


# ----- the loop -----

class TransformerTask:
    """What the training loop needs to know about the transformer: its batches, loss, FLOPs,
    validation, final figures and how it is saved. (pipeline/diffusion.py has the other one.)"""

    def __init__(self, p: Params, tokens_root: Path, device: torch.device, dist: Distributed):
        self.p, self.device, self.dist = p, device, dist
        self.compiled = p.train.compile and device.type == "cuda"
        meta, self.train_data, self.test_data = load_data(tokens_root, COMPILED_WIDTH_STEP if self.compiled else 1)
        self.meta = meta
        self.model = WaveletGPT(model_config(p, meta)).to(device)
        self.batches = LengthBatches(self.train_data.lengths, p.train.batch_size, p.train.seed, dist.world, dist.rank)
        self.model.eval()  # no dropout: counting must not draw from the random stream
        self._flops = quadratic_flops(self._one_step)
        self.model.zero_grad(set_to_none=True)
        self.model.train()
        self.unit = "token"

    def describe(self) -> str:
        return f"{len(self.train_data)} training sequences"

    def batch(self, step: int) -> dict:
        batch = self.train_data.batch(self.batches.rows(step), self.device)
        if self.model.config.condition == "class" and self.p.train.cond_dropout > 0:
            batch["label"] = class_dropout(batch["label"], self.p, step, self.dist, self.model.config.null_class)
        return batch

    def loss(self, trained, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed NLL (nats) of this rank's share, and its token count."""
        logits = trained(batch["prev"], batch["bp"], batch["i1"], batch["i2"], batch["e0"], batch["label"])
        nll = token_nll(logits, batch["target"], batch["valid"] if self.p.train.grammar_mask else None).sum()
        return nll, (batch["target"] >= 0).sum()

    def _one_step(self, width: int) -> None:
        """Forward and backward of one sequence of `width` tokens, for the FLOP counter."""
        x = torch.zeros(1, width, dtype=torch.long, device=self.device)
        zero = torch.zeros(1, dtype=torch.long, device=self.device)
        with autocast(self.device, self.p.train.precision):
            logits = self.model(x, x, x, x, zero + self.model.config.e0_min, zero)
        logits.float().sum().backward()

    def step_flops(self, step: int) -> float:
        """Training FLOPs of a step (all processes): each rank's batch at its padded width."""
        rows = self.batches.global_rows(step)
        size = self.p.train.batch_size
        return sum(self._flops(len(share), self.train_data.width(share))
                   for share in (rows[r * size:(r + 1) * size] for r in range(self.dist.world)))

    def validate(self, rows: np.ndarray) -> dict:
        return evaluate(self.model, self.test_data, rows, self.p.train.batch_size, self.device, self.p.train.precision)

    def validation_figures(self, val: dict) -> dict:
        return {"val/loss": val["bits_per_token"] * math.log(2), "val/bits_per_token": val["bits_per_token"]}

    def describe_validation(self, val: dict) -> str:
        return f"val {val['bits_per_token']:.4f} bits/token"

    def loss_figures(self, loss: float) -> dict:
        return {"train/loss": loss, "train/bits_per_token": bits(loss)}

    def final(self) -> dict:
        """Test NLL over `train.final_eval_images` test sequences."""
        n = len(self.test_data)
        rows = np.arange(n if self.p.train.final_eval_images is None else min(n, self.p.train.final_eval_images))
        final = self.validate(rows)
        log(f"test NLL over {final['images']} images: {final['bits_per_token']:.4f} bits/token, "
            f"{final['bits_per_image']:.1f} bits/image")
        return final

    @property
    def n_eval(self) -> int:
        return len(self.test_data)

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder)
        for name, text in self.model.language.artifacts().items():
            (folder / name).write_text(text)


def quadratic_flops(one_step) -> "callable":
    """FLOPs of a training step of B sequences of width T, counted by torch's FlopCounterMode.

    A transformer step costs B (a T + b T^2) (projections and MLPs linear in T, attention
    quadratic); two counted widths give a and b exactly, so every step's count is known from its
    batch shape without counting it (a deterministic figure, unlike wall-clock)."""
    counts = {}
    for width in (64, 128):
        with FlopCounterMode(display=False) as counter:
            one_step(width)
        counts[width] = counter.get_total_flops()
    b = (counts[128] - 2 * counts[64]) / (128 ** 2 - 2 * 64 ** 2)
    a = (counts[64] - b * 64 ** 2) / 64
    return lambda batch, width: batch * (a * width + b * width * width)


def make_task(p: Params, tokens_root: Path, device: torch.device, dist: Distributed):
    if p.model.family == "diffusion":
        from .diffusion import DiffusionTask

        return DiffusionTask(p, tokens_root, device, dist)
    return TransformerTask(p, tokens_root, device, dist)


def planned_steps(p: Params, task) -> tuple[int, float]:
    """`train.steps`, or with `train.flops` set, the most steps whose FLOPs fit in that budget;
    and the FLOPs of those steps."""
    total, step = 0.0, 0
    limit = p.train.flops
    while (step < p.train.steps) if limit is None else True:
        cost = task.step_flops(step)
        if limit is not None and total + cost > limit:
            break
        total, step = total + cost, step + 1
    if step == 0:
        raise ValueError(f"params.yaml: train.flops={limit:g} does not pay for one step ({task.step_flops(0):.3g} FLOPs)")
    return step, total


def train_step(task, trained, optimizer, schedule, batch: dict, p: Params, dist: Distributed) -> torch.Tensor:
    """One optimizer step on this rank's share of the global batch; returns the summed loss and
    the count (tokens, or pixels) of this share."""
    with autocast(task.device, p.train.precision):
        loss_sum, count = task.loss(trained, batch)
    # DDP averages gradients over processes: scaling by world / global count makes the update
    # that of the mean loss over the whole global batch.
    global_count = dist.all_sum(count.float())
    (loss_sum * dist.world / global_count).backward()
    torch.nn.utils.clip_grad_norm_(task.model.parameters(), p.train.grad_clip)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return torch.stack([loss_sum.detach().float(), count.float()])


def run(p: Params, device_name: str = "auto", tokens_root: str | Path = "data/tokens",
        checkpoint_dir: str | Path = "data/checkpoints", model_dir: str | Path = "data/model",
        live_dir: str | Path = "reports/train") -> dict | None:
    settings = p.train
    dist = Distributed()
    device = resolve_device(device_name, p.profile, dist.local_rank)
    dist.start(device)
    torch.manual_seed(settings.seed)
    tokens_root, checkpoint_dir = Path(tokens_root), Path(checkpoint_dir)
    task = make_task(p, tokens_root, device, dist)
    model = task.model
    steps, flops = planned_steps(p, task)
    optimizer, schedule = build_optimizer(model, p, device, steps)
    checkpoint_path, run_log = checkpoint_dir / CHECKPOINT, checkpoint_dir / LIVE
    run_fingerprint = fingerprint(p, task.meta, dist.world, tokens_root)
    state = load_checkpoint(checkpoint_path, run_fingerprint)
    start_step = 0
    if state is not None:
        start_step = restore(state, model, optimizer, schedule)
        log(f"resuming from {checkpoint_path} at step {start_step}")
    elif dist.is_main:
        shutil.rmtree(run_log, ignore_errors=True)  # a new run: the old run's curves go
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()

    # Compiled (CUDA): dynamic shapes over widths padded to multiples of 64, so it compiles once
    # rather than once per batch width.
    trained = torch.compile(model, dynamic=True) if settings.compile and device.type == "cuda" else model
    if dist.world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None)
    live = open_live_log(run_log, start_step) if dist.is_main else None
    n_params = sum(w.numel() for w in model.parameters())
    log(f"model: {n_params:,} parameters, device {device}, {dist.world} process(es), {task.describe()}; "
        f"{steps} steps, {flops:.3g} training FLOPs")

    eval_rows = np.arange(min(task.n_eval, settings.eval_batches * settings.batch_size))
    totals, clock = torch.zeros(2), time.perf_counter()
    model.train()
    for step in track(range(start_step, steps), "train", total=steps - start_step):
        batch = task.batch(step)
        loss_and_count = dist.all_sum(train_step(task, trained, optimizer, schedule, batch, p, dist)).cpu()
        loss = loss_and_count[0] / loss_and_count[1]
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"training loss is {loss.item()} at step {step}; the last good checkpoint "
                f"({checkpoint_path}) and the previous reports are kept. Lower train.lr or raise "
                f"train.warmup_steps.")
        totals += loss_and_count
        done = step + 1
        if live is not None and (done % settings.log_every == 0 or done == steps):
            elapsed = time.perf_counter() - clock
            live.step = done
            for name, value in task.loss_figures(loss.item()).items():
                live.log_metric(name, value)
            live.log_metric(f"train/{task.unit}s_per_s", totals[1].item() / elapsed)
            live.log_metric("train/lr", schedule.get_last_lr()[0])
            if done % settings.eval_every == 0 or done == steps:
                val = task.validate(eval_rows)
                model.train()
                for name, value in task.validation_figures(val).items():
                    live.log_metric(name, value)
                log(f"step {done}: train loss {loss.item():.4f}, {task.describe_validation(val)}, "
                    f"{totals[1].item() / elapsed:,.0f} {task.unit}s/s")
            live.make_summary()
        if done % settings.checkpoint_every == 0 or done == steps:
            if dist.is_main:
                save_checkpoint(checkpoint_path, model, optimizer, schedule, done, run_fingerprint)
            dist.barrier()

    metrics = None
    if dist.is_main:
        seconds = time.perf_counter() - clock
        metrics = finish(task, live, device, Path(model_dir), run_log, Path(live_dir), steps=steps, flops=flops,
                         seconds=seconds, per_s=totals[1].item() / seconds, processes=dist.world)
    dist.barrier()
    dist.stop()
    return metrics


def finish(task, live, device, model_dir: Path, run_log: Path, live_dir: Path, steps: int, flops: float,
           seconds: float, per_s: float, processes: int) -> dict:
    """Final test figures, the model, the summary; then publish the curves."""
    final = task.final()
    with atomic_dir(model_dir) as tmp:
        task.save(tmp)
    metrics = {"test": final, "parameters": sum(w.numel() for w in task.model.parameters()), "steps": steps,
               "train_flops": flops, "train_seconds": seconds, f"train_{task.unit}s_per_s": per_s,
               "device": device.type, "processes": processes}
    for key, value in metrics.items():
        live.summary[key] = value
    live.make_summary()
    publish(run_log, live_dir)
    return metrics


def main(p: Params, device: str) -> None:
    run(p, device)
