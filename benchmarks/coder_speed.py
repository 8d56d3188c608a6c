"""Tokenizer speed on one core: encode and decode images/s, batched grammar steps/s.

    python benchmarks/coder_speed.py [--dataset mnist] [--wavelet haar] [--final-exponent -3]
                                     [--method zeroblock] [--images 60000] [--batch 1024]

Reads the MNIST training split from data/raw (run `dvc repro download` first, or set
WAVELET_DATA_MIRROR and let this script fetch it into a temporary folder).
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

from pipeline import idx  # noqa: E402
from pipeline.languages import coder, grammar  # noqa: E402
from pipeline.stages import download, dwt  # noqa: E402


def best_of(repeats: int, func) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--wavelet", default="haar")
    parser.add_argument("--final-exponent", type=int, default=-3)
    parser.add_argument("--method", default="zeroblock")
    parser.add_argument("--images", type=int, default=60000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    raw = Path(download.OUTPUTS["raw"].format(dataset=args.dataset))
    if not (raw / "train_images.npy").is_file():
        raw = download.run(args.dataset, raw=Path(tempfile.mkdtemp()) / args.dataset)
    images, _ = idx.load_split(raw, "train")
    coeffs, _ = dwt.transform(images[:args.images], args.wavelet)
    language = grammar.Language(32, args.method, args.final_exponent, "per_image")
    n = len(coeffs)

    coder.encode(coeffs[:16], language)  # compile (or load numba's cache)
    encoded = coder.encode(coeffs, language)
    encode_s = best_of(args.repeats, lambda: coder.encode(coeffs, language))
    decode_s = best_of(args.repeats, lambda: coder.decode_batch(
        encoded.tokens, encoded.offsets, encoded.initial_exponents, language))

    # Batched grammar: drive `batch` states with the encoder's own tokens, one step at a time,
    # as the sampler does (canonical masks, positions and completion flags every step).
    batch = min(args.batch, n)
    lengths = encoded.lengths[:batch]
    steps = int(lengths.max())
    padded = np.zeros((steps, batch), dtype=np.int64)
    for j in range(batch):
        padded[:lengths[j], j] = encoded.sequence(j)

    def run_grammar():
        scan = grammar.BatchScan(language, encoded.initial_exponents[:batch])
        for t in range(steps):
            scan.step(padded[t])
        assert scan.done.all()

    run_grammar()
    grammar_s = best_of(args.repeats, run_grammar)

    print(f"date {date.today()}, {platform.processor() or platform.machine()}, 1 core, numba")
    print(f"{args.dataset}/{args.wavelet}/f={args.final_exponent}/{args.method}: {n} images, "
          f"mean length {encoded.lengths.mean():.1f}, max {encoded.lengths.max()}")
    print(f"encode : {n / encode_s:12,.0f} images/s")
    print(f"decode : {n / decode_s:12,.0f} images/s")
    print(f"grammar: {batch * steps / grammar_s:12,.0f} steps/s (batch {batch}, {steps} steps, "
          f"{lengths.sum() / grammar_s:,.0f} real tokens/s)")


if __name__ == "__main__":
    main()
