"""Sampling throughput as the sample stage does it: images/s, and what the batch computes against
what the samples keep.

    python benchmarks/sample_speed.py --model data/model --samples 1000          # a trained model
    python benchmarks/sample_speed.py --shape distilgpt2 --final-exponent -3 --device cuda --samples 10000

With --model it samples that model (real lengths); without, an untrained model of --shape over
the wavelet language of --final-exponent, its e0 drawn from the per-class counts in --tokens's
meta.json (an untrained model writes longer sequences than a trained one). The loop is the stage's own:
continuous batching with --slots rows, grammar masks, KV cache, guidance. Printed:
- images/s and tokens/s (wall clock, after a warm-up);
- the traffic ratio: decoder rows computed over tokens kept (a guided pair counts once);
  1 means no finished row ever rode along;
- the cache ratio: cached positions attended (dense attention over the longest row, masked)
  over the positions each kept token's prefix holds (what a ragged kernel would read);
- the KV-cache bound of the device's memory bandwidth for the mean sample length.
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import date

import numpy as np
import torch

from pipeline import formats, generation
from pipeline.devices import resolve_device
from pipeline.languages.wavelet import WaveletLanguage
from pipeline.models.transformer.network import WaveletGPT, WaveletGPTConfig
from pipeline.models.transformer.sampler import draw_initial_exponents

SHAPES = {"distilgpt2": (6, 768, 12), "small": (4, 128, 4)}
H200_BANDWIDTH = 4.3e12  # bytes/s: the achievable HBM bandwidth the estimates in issue #11 use (4.8 peak)


def model_for(args, device: torch.device) -> WaveletGPT:
    if args.model:
        model = WaveletGPT.load(args.model).to(device).eval()
    else:
        torch.manual_seed(0)
        n_layer, n_embd, n_head = SHAPES[args.shape]
        counts = formats.read_meta(args.tokens)["initial_exponent_counts"]  # the data's own e0 per class
        config = WaveletGPTConfig.for_language(WaveletLanguage("haar", final_exponent=args.final_exponent),
                                               n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=1,
                                               initial_exponent_counts=counts, longest_sequence=args.capacity)
        model = WaveletGPT(config).to(device).eval()
    return model.to(torch.bfloat16) if device.type == "cuda" else model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a trained model (data/model); else an untrained one of --shape")
    parser.add_argument("--shape", choices=SHAPES, default="small")
    parser.add_argument("--tokens", default="data/tokens", help="token shards whose meta.json gives the untrained "
                                                                "model its e0 distribution")
    parser.add_argument("--final-exponent", type=int, default=-3)
    parser.add_argument("--capacity", type=int, default=1792, help="KV cache of the untrained model (positions)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=256, help="rows decoding together (sample.batch_size)")
    parser.add_argument("--top-p", type=float, default=0.6)
    parser.add_argument("--cfg-scale", type=float, default=2.0)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    device = resolve_device(args.device)
    model = model_for(args, device)
    config = model.config
    labels = np.arange(args.samples) % config.n_classes
    e0 = draw_initial_exponents(model, labels, np.random.default_rng(0))
    decoding = generation.Decoding(top_p=args.top_p, cfg_scale=args.cfg_scale)
    generation.generate(model, labels[:8], e0[:8], decoding, seed=1, slots=8)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    stats = generation.SamplingStats()
    start = time.perf_counter()
    encoded = generation.generate(model, labels, e0, decoding, seed=0, slots=args.slots, stats=stats,
                              progress="benchmark")
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start

    mean_length = float(encoded.lengths.mean())
    bytes_per_token = 2 * config.n_layer * config.n_embd * next(model.parameters()).element_size()  # keys + values
    ideal_bytes = bytes_per_token * float((encoded.lengths * (encoded.lengths + 1) / 2).mean())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    figures = {
        "date": str(date.today()), "device": name, "torch": torch.__version__,
        "model": args.model or f"untrained {args.shape}", "shape": [config.n_layer, config.n_embd, config.n_head],
        "language": model.language.name, "samples": args.samples, "slots": args.slots,
        "decoding": {"top_p": args.top_p, "cfg_scale": args.cfg_scale},
        "seconds": elapsed, "images_per_s": args.samples / elapsed, "tokens_per_s": stats.tokens_kept / elapsed,
        "mean_length": mean_length, "max_length": int(encoded.lengths.max()), "steps": stats.steps,
        "traffic_ratio": stats.traffic_ratio, "cache_ratio": stats.cache_ratio,
        "kv_bytes_per_token": bytes_per_token,
        "kv_bound_images_per_s_h200": H200_BANDWIDTH / ideal_bytes / (2 if args.cfg_scale != 1 else 1),
    }
    print(f"date {figures['date']}, {name}, torch {torch.__version__}; {figures['model']} "
          f"({config.n_layer} x {config.n_embd}), {model.language.name}")
    print(f"{args.samples} samples with {args.slots} slots: {figures['images_per_s']:,.1f} images/s, "
          f"{figures['tokens_per_s']:,.0f} tokens/s; mean length {mean_length:.0f}, max {figures['max_length']}")
    print(f"traffic ratio {stats.traffic_ratio:.3f} (rows computed / tokens kept), cache ratio "
          f"{stats.cache_ratio:.2f} (dense masked attention / each token's own prefix)")
    print(f"KV cache: {bytes_per_token / 1e3:.1f} KB per cached token, {ideal_bytes / 1e9:.2f} GB read over a "
          f"{mean_length:.0f}-token sample: <= {figures['kv_bound_images_per_s_h200']:,.0f} images/s on one H200 at "
          f"4.3 TB/s (guidance reads twice)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
