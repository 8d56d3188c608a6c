"""Training throughput of the wavelet transformer: tokens/s and model FLOP/s.

    python benchmarks/train_speed.py --shape distilgpt2 --device cuda --batch-size 32 [--compile]
    python benchmarks/train_speed.py --shape small --device cpu [--precision fp32]

Uses the real pipeline's batches (length-bucketed, grammar-masked) from data/tokens when it
exists, else random sequences of --length tokens. FLOPs per token: 6 N (N = non-embedding
parameters) + 6 n_layer T n_embd for attention (forward + backward), as in the PaLM appendix.
"""
from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from datetime import date
from pathlib import Path

import numpy as np
import torch

from pipeline import params, train
from pipeline.devices import resolve_device
from pipeline.language import WaveletLanguage
from pipeline.model import WaveletGPT, WaveletGPTConfig, token_nll

SHAPES = {"distilgpt2": (6, 768, 12), "small": (4, 128, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="small")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--length", type=int, default=1200, help="sequence length without data/tokens")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--precision", choices=params.PRECISIONS, default="bf16", help="as train.precision")
    parser.add_argument("--dropout", type=float, default=0.0, help="as model.dropout")
    parser.add_argument("--tokens", default="data/tokens")
    args = parser.parse_args()

    device = resolve_device(args.device)
    n_layer, n_embd, n_head = SHAPES[args.shape]
    language = WaveletLanguage("haar", final_exponent=-3)
    config = WaveletGPTConfig.for_language(language, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=1,
                                           attn_implementation="sdpa", resid_pdrop=args.dropout,
                                           embd_pdrop=args.dropout, attn_pdrop=args.dropout)
    model = WaveletGPT(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if args.compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()

    if Path(args.tokens, "meta.json").is_file():
        meta, data, _ = train.load_data(Path(args.tokens))
        batches = train.LengthBatches(data.lengths, args.batch_size, seed=0)
        source = f"{args.tokens} (mean length {data.lengths.mean():.0f})"
        get = lambda step: data.batch(batches.rows(step), device)  # noqa: E731
    else:
        source = f"random, length {args.length}"

        def get(step):
            shape = (args.batch_size, args.length)
            b = {k: torch.randint(0, 8, shape, device=device) for k in ("prev", "target", "bp")}
            b["prev"][:, 0] = config.start_token
            b.update(i1=torch.randint(0, 32, shape, device=device), i2=torch.randint(0, 32, shape, device=device),
                     valid=torch.ones(*shape, 8, dtype=torch.bool, device=device),
                     e0=torch.randint(0, 4, (shape[0],), device=device),
                     label=torch.randint(0, 10, (shape[0],), device=device))
            return b

    def step(i: int) -> int:
        b = get(i)
        with autocast:
            logits = forward(b["prev"], b["bp"], b["i1"], b["i2"], b["e0"], b["label"])
        loss = token_nll(logits, b["target"], b["valid"]).sum() / (b["target"] >= 0).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int(b["target"].numel()), int((b["target"] >= 0).sum()), b["target"].shape[1]

    for i in range(3):  # warm-up (and compilation)
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, padded, real, widths = time.perf_counter(), 0, 0, []
    for i in range(3, 3 + args.steps):
        p_, r_, w_ = step(i)
        padded, real, widths = padded + p_, real + r_, widths + [w_]
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start

    non_embedding = sum(p.numel() for name, p in model.named_parameters()
                        if "transformer.h." in name or name == "head.weight")
    flops_per_token = 6 * non_embedding + 6 * n_layer * float(np.mean(widths)) * n_embd
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"date {date.today()}, {name}, torch {torch.__version__}, compile={args.compile}, "
          f"precision {args.precision}, dropout {args.dropout}")
    print(f"shape {args.shape} ({n_layer} x {n_embd}, {n_head} heads, {non_embedding / 1e6:.2f}M non-embedding "
          f"params), batch {args.batch_size}, data {source}")
    print(f"train: {real / elapsed:,.0f} real tokens/s ({padded / elapsed:,.0f} incl. padding), "
          f"{flops_per_token * real / elapsed / 1e12:.3f} TFLOP/s model")


if __name__ == "__main__":
    main()
