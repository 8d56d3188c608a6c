"""Sampling throughput: ms per step and MNIST images/s for a model shape, batch and device.

    python benchmarks/sample_speed.py --shape distilgpt2 --device cuda --batch 2048
    python benchmarks/sample_speed.py --shape small --device cpu --batch 64

Runs the real sampling loop (KV-cached decoder, grammar masks, batched grammar step) of an
untrained model for --length steps (MNIST/Haar/f=-3 sequences average 1,201 tokens) and reports
images/s = batch / time for those steps. Each step reads the whole KV cache, so memory bandwidth
bounds it: the script prints that bound for the shape next to the measurement.
"""
from __future__ import annotations

import argparse
import time
from datetime import date

import numpy as np
import torch

from pipeline import sample
from pipeline.devices import resolve_device
from pipeline.language import WaveletLanguage
from pipeline.model import WaveletGPT, WaveletGPTConfig

SHAPES = {"distilgpt2": (6, 768, 12), "small": (4, 128, 4)}
H200_BANDWIDTH = 4.3e12  # bytes/s, as measured for the anchor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="small")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=1201)
    args = parser.parse_args()

    device = resolve_device(args.device)
    n_layer, n_embd, n_head = SHAPES[args.shape]
    counts = {str(c): {"1": 1, "2": 4} for c in range(10)}
    config = WaveletGPTConfig.for_language(WaveletLanguage("haar", final_exponent=-3), n_layer=n_layer,
                                           n_embd=n_embd, n_head=n_head, n_positions=1,
                                           initial_exponent_counts=counts)
    model = WaveletGPT(config).to(device).eval()
    labels = np.arange(args.batch) % 10
    e0 = sample.draw_initial_exponents(model, labels, np.random.default_rng(0))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    generator = torch.Generator(device=device).manual_seed(0)
    sample.generate(model, labels, e0, sample.Decoding(), generator, autocast, max_steps=8)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    encoded = sample.generate(model, labels, e0, sample.Decoding(), generator, autocast, max_steps=args.length)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    steps = int(encoded.lengths.max())

    cache_bytes_per_token = 2 * n_layer * n_embd * 2  # keys and values, bf16
    bytes_per_image = cache_bytes_per_token * steps * (steps + 1) / 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"date {date.today()}, {name}, torch {torch.__version__}")
    print(f"shape {args.shape} ({n_layer} x {n_embd}, {n_head} heads), batch {args.batch}, {steps} steps")
    print(f"sample: {1000 * elapsed / steps:.2f} ms/step, {args.batch / elapsed:,.1f} images/s "
          f"({args.batch * steps / elapsed:,.0f} tokens/s)")
    print(f"KV-cache bound: {cache_bytes_per_token / 1e3:.1f} KB per cached token, "
          f"{bytes_per_image / 1e9:.2f} GB read per {steps}-token image, "
          f"<= {H200_BANDWIDTH / bytes_per_image:,.0f} images/s at 4.3 TB/s (one H200)")


if __name__ == "__main__":
    main()
