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
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from . import formats, provenance
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
    """One split's sequences with their grammar masks, assembled into padded batches."""

    def __init__(self, split: formats.TokenSplit, mask_table: np.ndarray, start_token: int):
        encoded = split.encoded
        self.tokens, self.bp, self.i1, self.i2 = encoded.tokens, encoded.bp, encoded.i1, encoded.i2
        self.offsets = encoded.offsets
        self.mask_codes = split.mask_codes
        self.mask_table = torch.from_numpy(mask_table)
        self.start_token = start_token
        self.lengths = encoded.lengths
        self.e0 = encoded.initial_exponents.astype(np.int64)
        self.labels = split.labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        """Padded tensors for the given sequences: inputs are the previous tokens (the start token
        first), targets the tokens (-1 on padding), positions those of the targets, `valid` the
        ids the grammar allows at each target (all of them on padding)."""
        width = int(self.lengths[rows].max())
        out = {name: np.zeros((len(rows), width), np.int64) for name in ("prev", "bp", "i1", "i2", "code")}
        out["target"] = np.full((len(rows), width), -1, np.int64)
        for r, j in enumerate(rows):
            seq = slice(self.offsets[j], self.offsets[j + 1])
            n = self.lengths[j]
            out["target"][r, :n] = self.tokens[seq]
            out["prev"][r, 0] = self.start_token
            out["prev"][r, 1:n] = self.tokens[seq][:-1]
            out["bp"][r, :n], out["i1"][r, :n], out["i2"][r, :n] = self.bp[seq], self.i1[seq], self.i2[seq]
            out["code"][r, :n] = self.mask_codes[seq]
        code = torch.from_numpy(out.pop("code"))
        valid = self.mask_table[code]
        valid[torch.from_numpy(out["target"] < 0)] = True  # padding: no -inf rows
        tensors = {name: torch.from_numpy(a).to(device) for name, a in out.items()}
        tensors["valid"] = valid.to(device)
        tensors["e0"] = torch.from_numpy(self.e0[rows]).to(device)
        tensors["label"] = torch.from_numpy(self.labels[rows]).to(device)
        return tensors


class LengthBatches:
    """Global batches of `batch_size * world` similar-length sequences, a fresh seeded order every
    epoch; rank r trains on the r-th slice of each.

    The global batch of step s depends only on (seed, s, batch_size * world): a resumed run sees
    the same batches as an uninterrupted one, and 2 processes of batch b see what one process of
    batch 2b sees. Every batch is full (a random few sequences sit out each epoch instead).
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, world: int = 1, rank: int = 0):
        self.lengths, self.batch_size, self.seed, self.world, self.rank = lengths, batch_size, seed, world, rank
        self.global_size = batch_size * world
        if len(lengths) < self.global_size:
            raise ValueError(f"train.batch_size={batch_size} x {world} process(es) needs at least "
                             f"{self.global_size} training sequences; data/tokens has {len(lengths)}")
        self.per_epoch = len(lengths) // self.global_size
        self._epoch_number, self._batches = -1, []

    def _epoch(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        # Sort by length with random tie-breaking and jitter, so batches change between epochs.
        keys = self.lengths + rng.uniform(0, 32, len(self.lengths))
        sitting_out = rng.choice(len(keys), len(keys) % self.global_size, replace=False)
        keys[sitting_out] = np.inf
        order = np.argsort(keys, kind="stable")[:self.per_epoch * self.global_size]
        batches = order.reshape(self.per_epoch, self.global_size)
        return [batches[i] for i in rng.permutation(self.per_epoch)]

    def global_rows(self, step: int) -> np.ndarray:
        epoch, index = divmod(step, self.per_epoch)
        if epoch != self._epoch_number:
            self._epoch_number, self._batches = epoch, self._epoch(epoch)
        return self._batches[index]

    def rows(self, step: int) -> np.ndarray:
        """This rank's share of the global batch of `step`."""
        return self.global_rows(step)[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]


def load_data(tokens_root: Path) -> tuple[dict, TokenData, TokenData]:
    """meta.json and both splits, checked against the data contract and the language's grammar."""
    meta = formats.read_meta(tokens_root)
    language = from_description(meta["language"])
    splits = [TokenData(formats.read_split(tokens_root, split, meta, with_masks=True), language.mask_table,
                        language.vocab_size) for split in ("train", "test")]
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
        initial_exponent_counts=meta["initial_exponent_counts"], attn_implementation="sdpa",
    )


def build_optimizer(model: torch.nn.Module, p: Params, device: torch.device):
    """AdamW (weight decay on matrices only) and its warmup + cosine schedule."""
    settings = p.train
    decay = [w for w in model.parameters() if w.requires_grad and w.dim() >= 2]
    no_decay = [w for w in model.parameters() if w.requires_grad and w.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr, betas=(0.9, 0.95),
                                  fused=device.type == "cuda")
    schedule = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, settings.warmup_steps, settings.steps, min_lr_rate=settings.min_lr_ratio)
    return optimizer, schedule


def class_dropout(labels: torch.Tensor, p: Params, step: int, dist: Distributed, null_class: int) -> torch.Tensor:
    """Replace a `train.cond_dropout` share of labels by the null class (classifier-free guidance).
    Drawn for the global batch from (seed, step), so it survives resumes and does not depend on
    the number of processes."""
    size = p.train.batch_size
    generator = torch.Generator().manual_seed(p.train.seed * 1_000_003 + step)
    drop = torch.rand(size * dist.world, generator=generator) < p.train.cond_dropout
    drop = drop[dist.rank * size:dist.rank * size + len(labels)]
    return torch.where(drop.to(labels.device), torch.full_like(labels, null_class), labels)


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
    model.train()
    return {"bits_per_token": bits(masked / tokens), "bits_per_image": bits(masked / len(rows)),
            "unmasked_bits_per_token": bits(unmasked / tokens),
            "unmasked_bits_per_image": bits(unmasked / len(rows)), "images": int(len(rows)),
            "tokens": tokens}


# ----- the loop -----

def train_step(trained, model, optimizer, schedule, batch: dict, p: Params, dist: Distributed, device) -> torch.Tensor:
    """One optimizer step on this rank's share of the global batch; returns the summed NLL (nats)
    and the token count of this share."""
    with autocast(device, p.train.precision):
        logits = trained(batch["prev"], batch["bp"], batch["i1"], batch["i2"], batch["e0"], batch["label"])
    nll = token_nll(logits, batch["target"], batch["valid"] if p.train.grammar_mask else None).sum()
    tokens = (batch["target"] >= 0).sum()
    # DDP averages gradients over processes: scaling by world / global tokens makes the update
    # that of the mean NLL over every token of the global batch.
    global_tokens = dist.all_sum(tokens.float())
    (nll * dist.world / global_tokens).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), p.train.grad_clip)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return torch.stack([nll.detach().float(), tokens.float()])


def run(p: Params, device_name: str = "auto", tokens_root: str | Path = "data/tokens",
        checkpoint_dir: str | Path = "data/checkpoints", model_dir: str | Path = "data/model",
        live_dir: str | Path = "reports/train") -> dict | None:
    settings = p.train
    dist = Distributed()
    device = resolve_device(device_name, p.profile, dist.local_rank)
    dist.start(device)
    torch.manual_seed(settings.seed)
    tokens_root, checkpoint_dir = Path(tokens_root), Path(checkpoint_dir)
    meta, train_data, test_data = load_data(tokens_root)

    model = WaveletGPT(model_config(p, meta)).to(device)
    optimizer, schedule = build_optimizer(model, p, device)
    checkpoint_path, run_log = checkpoint_dir / CHECKPOINT, checkpoint_dir / LIVE
    run_fingerprint = fingerprint(p, meta, dist.world, tokens_root)
    state = load_checkpoint(checkpoint_path, run_fingerprint)
    start_step = 0
    if state is not None:
        start_step = restore(state, model, optimizer, schedule)
        log(f"resuming from {checkpoint_path} at step {start_step}")
    elif dist.is_main:
        shutil.rmtree(run_log, ignore_errors=True)  # a new run: the old run's curves go
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()

    trained = torch.compile(model) if settings.compile and device.type == "cuda" else model
    if dist.world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None)
    live = open_live_log(run_log, start_step) if dist.is_main else None
    n_params = sum(w.numel() for w in model.parameters())
    log(f"model: {n_params:,} parameters, device {device}, {dist.world} process(es), "
        f"{len(train_data)} training sequences")

    batches = LengthBatches(train_data.lengths, settings.batch_size, settings.seed, dist.world, dist.rank)
    eval_rows = np.arange(min(len(test_data), settings.eval_batches * settings.batch_size))
    totals, clock = torch.zeros(2), time.perf_counter()
    model.train()
    for step in track(range(start_step, settings.steps), "train", total=settings.steps - start_step):
        batch = train_data.batch(batches.rows(step), device)
        if model.config.condition == "class" and settings.cond_dropout > 0:
            batch["label"] = class_dropout(batch["label"], p, step, dist, model.config.null_class)
        nll_and_tokens = dist.all_sum(train_step(trained, model, optimizer, schedule, batch, p, dist, device)).cpu()
        loss = nll_and_tokens[0] / nll_and_tokens[1]
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"training loss is {loss.item()} at step {step}; the last good checkpoint "
                f"({checkpoint_path}) and the previous reports are kept. Lower train.lr or raise "
                f"train.warmup_steps.")
        totals += nll_and_tokens
        done = step + 1
        if live is not None and (done % settings.log_every == 0 or done == settings.steps):
            elapsed = time.perf_counter() - clock
            live.step = done
            live.log_metric("train/loss", loss.item())
            live.log_metric("train/bits_per_token", bits(loss.item()))
            live.log_metric("train/tokens_per_s", totals[1].item() / elapsed)
            live.log_metric("train/lr", schedule.get_last_lr()[0])
            if done % settings.eval_every == 0 or done == settings.steps:
                val = evaluate(model, test_data, eval_rows, settings.batch_size, device, settings.precision)
                live.log_metric("val/loss", val["bits_per_token"] * math.log(2))
                live.log_metric("val/bits_per_token", val["bits_per_token"])
                log(f"step {done}: train {bits(loss.item()):.4f} bits/token, "
                    f"val {val['bits_per_token']:.4f} bits/token, {totals[1].item() / elapsed:,.0f} tokens/s")
            live.make_summary()
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            if dist.is_main:
                save_checkpoint(checkpoint_path, model, optimizer, schedule, done, run_fingerprint)
            dist.barrier()

    metrics = None
    if dist.is_main:
        metrics = finish(p, model, test_data, live, device, Path(model_dir), run_log, Path(live_dir),
                         tokens_per_s=totals[1].item() / (time.perf_counter() - clock), processes=dist.world)
    dist.barrier()
    dist.stop()
    return metrics


def finish(p: Params, model, test_data: TokenData, live, device, model_dir: Path, run_log: Path,
           live_dir: Path, tokens_per_s: float, processes: int) -> dict:
    """Final test NLL, the model in HuggingFace format, the summary; then publish the curves."""
    settings = p.train
    rows = np.arange(len(test_data) if settings.final_eval_images is None else min(len(test_data), settings.final_eval_images))
    final = evaluate(model, test_data, rows, settings.batch_size, device, settings.precision)
    log(f"test NLL over {final['images']} images: {final['bits_per_token']:.4f} bits/token, "
        f"{final['bits_per_image']:.1f} bits/image")
    with atomic_dir(model_dir) as tmp:
        model.save_pretrained(tmp)
    metrics = {"test": final, "parameters": sum(w.numel() for w in model.parameters()), "steps": settings.steps,
               "train_tokens_per_s": tokens_per_s, "device": device.type, "processes": processes}
    live.summary["test"] = final
    for key in ("parameters", "train_tokens_per_s", "device", "processes"):
        live.summary[key] = metrics[key]
    live.make_summary()
    publish(run_log, live_dir)
    return metrics


def main(p: Params, device: str) -> None:
    run(p, device)
