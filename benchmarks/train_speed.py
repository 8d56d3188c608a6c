"""Training throughput of the train stage's own steps: tokens/s and model FLOP/s.

    python benchmarks/train_speed.py                                     # params.yaml, data/tokens
    python benchmarks/train_speed.py --shape distilgpt2 --device cuda --compile --batch-size 64

Builds the stage's TransformerTask from --params (the model, batches, masks, precision of a
real run; --shape, --batch-size and --compile override those) over the token shards in
--tokens, and times `train.train_step` after a warm-up (which includes compilation). FLOPs
are the stage's own count (FlopCounterMode, per batch shape).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import torch

from pipeline import params
from pipeline.devices import Distributed, resolve_device
from pipeline.models.transformer.task import TransformerTask
from pipeline.stages import train

SHAPES = {"distilgpt2": (6, 768, 12), "small": (4, 128, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tokens", default="data/tokens")
    parser.add_argument("--shape", choices=SHAPES, help="override model.n_layer, n_embd, n_head")
    parser.add_argument("--batch-size", type=int, help="override train.batch_size")
    parser.add_argument("--precision", choices=params.PRECISIONS, help="override train.precision")
    parser.add_argument("--compile", action="store_true", help="torch.compile as the stage does on CUDA")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    p = params.load(args.params, train.PARAMS)
    model, settings = p.model, p.train
    if args.shape:
        n_layer, n_embd, n_head = SHAPES[args.shape]
        model = replace(model, n_layer=n_layer, n_embd=n_embd, n_head=n_head)
    settings = replace(settings, compile=args.compile, batch_size=args.batch_size or settings.batch_size,
                       precision=args.precision or settings.precision)
    p = params.Params({**p._values, "model": model, "train": settings})
    device = resolve_device(args.device, p.profile)
    dist = Distributed()
    task = TransformerTask(p, Path(args.tokens), device, dist)
    optimizer, schedule = train.build_optimizer(task.model, p, device, args.steps + 3)
    trained = torch.compile(task.model, dynamic=True) if args.compile else task.model

    def step(i: int) -> tuple[int, int, float]:
        batch = task.batch(i)
        loss_and_count = train.train_step(task, trained, optimizer, schedule, batch, p, dist)
        return int(batch["target"].numel()), int(loss_and_count[1]), task.step_flops(i)

    for i in range(3):  # warm-up (and compilation)
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, padded, real, flops = time.perf_counter(), 0, 0, 0.0
    for i in range(3, 3 + args.steps):
        step_padded, step_real, step_flops = step(i)
        padded, real, flops = padded + step_padded, real + step_real, flops + step_flops
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    figures = {"date": str(date.today()), "device": name, "torch": torch.__version__, "compile": args.compile,
               "precision": settings.precision, "shape": [model.n_layer, model.n_embd, model.n_head],
               "batch_size": settings.batch_size, "language": task.meta["language"],
               "mean_length": float(np.mean(task.train_data.lengths)), "steps": args.steps,
               "real_tokens_per_s": real / elapsed, "padded_tokens_per_s": padded / elapsed,
               "model_tflops_per_s": flops / elapsed / 1e12,
               "parameters": sum(w.numel() for w in task.model.parameters())}
    print(f"date {figures['date']}, {name}, torch {torch.__version__}, compile={args.compile}, "
          f"precision {settings.precision}")
    print(f"shape {model.n_layer} x {model.n_embd} ({model.n_head} heads, {figures['parameters'] / 1e6:.2f}M params), "
          f"batch {settings.batch_size}, mean length {figures['mean_length']:.0f}")
    print(f"train: {figures['real_tokens_per_s']:,.0f} real tokens/s ({figures['padded_tokens_per_s']:,.0f} incl. "
          f"padding), {figures['model_tflops_per_s']:.3f} TFLOP/s counted")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
