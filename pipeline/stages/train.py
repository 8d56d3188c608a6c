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
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from .. import provenance
from ..devices import Distributed, autocast, environment, resolve_device, slow_bf16
from ..io import InputError, atomic_dir, atomic_file, stage_paths
from ..params import Params
from ..progress import log, track

PARAMS = ("profile", "threads", "model", "train")
INPUTS = {"tokens": "data/tokens"}
# The curves and the summary are dvclive's folder published as reports/train (see published_folder).
OUTPUTS = {"model": "data/model", "checkpoints": "data/checkpoints",
           "metrics": "reports/train/metrics.json", "plots": "reports/train/plots/metrics"}
CHECKPOINT = "last.pt"
LIVE = "live"  # the run's dvclive folder, beside the checkpoint until the run succeeds


class TrainingDiverged(RuntimeError):
    pass


# ----- model, optimiser, schedule -----

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


def training_task(p: Params, tokens_root: Path, device: torch.device, dist: Distributed):
    """The train stage's task for `model.family`."""
    if p.model.family == "diffusion":
        from ..models.diffusion.task import DiffusionTask

        return DiffusionTask(p, tokens_root, device, dist)
    from ..models.transformer.task import TransformerTask

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


def resume(checkpoint_dir: Path, run_fingerprint: str, model, optimizer, schedule, dist: Distributed) -> int:
    """The step to start from: that of a checkpoint of this very run, else 0."""
    checkpoint_path = checkpoint_dir / CHECKPOINT
    state = load_checkpoint(checkpoint_path, run_fingerprint)
    start_step = 0
    if state is not None:
        start_step = restore(state, model, optimizer, schedule)
        log(f"resuming from {checkpoint_path} at step {start_step}")
    elif dist.is_main:
        shutil.rmtree(checkpoint_dir / LIVE, ignore_errors=True)  # a new run: the old run's curves go
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    return start_step


def for_training(model: torch.nn.Module, device: torch.device, dist: Distributed, compile: bool) -> torch.nn.Module:
    """The module the steps call: compiled on CUDA, wrapped in DDP across processes."""
    # Compiled (CUDA): dynamic shapes over widths padded to multiples of 64, so it compiles once
    # rather than once per batch width.
    trained = torch.compile(model, dynamic=True) if compile and device.type == "cuda" else model
    if dist.world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None)
    return trained


def log_progress(live, task, schedule, loss: float, per_s: float, done: int, steps: int, eval_rows: np.ndarray,
                 settings) -> None:
    """This step's curves; every `eval_every` steps (and at the last) the validation figures too."""
    live.step = done
    for name, value in task.loss_figures(loss).items():
        live.log_metric(name, value)
    live.log_metric(f"train/{task.unit}s_per_s", per_s)
    live.log_metric("train/lr", schedule.get_last_lr()[0])
    if done % settings.eval_every == 0 or done == steps:
        val = task.validate(eval_rows)
        task.model.train()
        for name, value in task.validation_figures(val).items():
            live.log_metric(name, value)
        log(f"step {done}: train loss {loss:.4f}, {task.describe_validation(val)}, {per_s:,.0f} {task.unit}s/s")
    live.make_summary()


def published_folder(paths) -> Path:
    """Where the finished run's dvclive folder goes: the folder of `metrics`, which dvclive lays
    out as metrics.json beside plots/metrics (the layout dvc.yaml declares)."""
    folder = paths.metrics.parent
    if paths.metrics.name != "metrics.json" or paths.plots != folder / "plots" / "metrics":
        raise ValueError(f"train: metrics {paths.metrics} and plots {paths.plots} are not dvclive's "
                         "<folder>/metrics.json and <folder>/plots/metrics")
    return folder


def run(p: Params, device_name: str = "auto", **paths: str | Path) -> dict | None:
    paths = stage_paths(INPUTS, OUTPUTS, paths)
    live_dir = published_folder(paths)
    settings = p.train
    dist = Distributed()
    device = resolve_device(device_name, p.profile, dist.local_rank)
    dist.start(device)
    torch.manual_seed(settings.seed)
    task = training_task(p, paths.tokens, device, dist)
    model = task.model
    steps, flops = planned_steps(p, task)
    optimizer, schedule = build_optimizer(model, p, device, steps)
    checkpoint_path, run_log = paths.checkpoints / CHECKPOINT, paths.checkpoints / LIVE
    run_fingerprint = fingerprint(p, task.meta, dist.world, paths.tokens)
    start_step = resume(paths.checkpoints, run_fingerprint, model, optimizer, schedule, dist)
    trained = for_training(model, device, dist, settings.compile)
    live = open_live_log(run_log, start_step) if dist.is_main else None
    n_params = sum(w.numel() for w in model.parameters())
    log(f"model: {n_params:,} parameters, device {device}, {dist.world} process(es), {task.describe()}; "
        f"{steps} steps, {flops:.3g} training FLOPs")
    if settings.precision == "bf16" and slow_bf16(device):
        log("warning: this CPU has no fast bf16 kernels (no AVX-512): bf16 training runs about 50x slower "
            "than fp32 here; -S train.precision=fp32 is the fast choice on it (other figures than bf16's)")

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
            per_s = totals[1].item() / (time.perf_counter() - clock)
            log_progress(live, task, schedule, loss.item(), per_s, done, steps, eval_rows, settings)
        if done % settings.checkpoint_every == 0 or done == steps:
            if dist.is_main:
                save_checkpoint(checkpoint_path, model, optimizer, schedule, done, run_fingerprint)
            dist.barrier()

    metrics = None
    if dist.is_main:
        seconds = time.perf_counter() - clock
        metrics = finish(task, live, device, paths.model, run_log, live_dir, steps=steps, flops=flops,
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
               "device": device.type, "processes": processes, "environment": environment(device)}
    for key, value in metrics.items():
        live.summary[key] = value
    live.make_summary()
    publish(run_log, live_dir)
    return metrics


def main(p: Params, device: str) -> None:
    run(p, device)
