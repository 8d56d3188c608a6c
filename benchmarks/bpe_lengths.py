"""What BPE merges do to sequence length, and what their grammar masks cost, without training.

    python benchmarks/bpe_lengths.py --raw data/raw/mnist --out reports/bpe_lengths.md

For each final exponent f and vocabulary size: merges learned on the whole MNIST training split
(as the tokenize stage does), then on the test split the mean and max length, the base tokens per
merged token, the ids valid per step and the time to compute the training masks (the trie walk
over the scan state) per token and per image, on one thread.
"""
from __future__ import annotations

import argparse
import platform
import time
from datetime import date

import numpy as np

from pipeline.idx import load_split
from pipeline.languages.bpe import BPELanguage
from pipeline.languages.wavelet import WaveletLanguage
from pipeline.stages import dwt

MASKED_IMAGES = 200  # test images whose masks are timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", default="data/raw/mnist", help="the MNIST folder the download stage wrote")
    parser.add_argument("--method", default="zerotree")
    parser.add_argument("--final-exponents", type=int, nargs="+", default=[-1, -3])
    parser.add_argument("--vocab", type=int, nargs="+", default=[0, 64, 256, 1024, 4096])
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args()

    coeffs = {split: dwt.transform(load_split(args.raw, split)[0], "haar")[0] for split in ("train", "test")}
    header = ("| f | vocabulary | mean length | max length | base tokens per token | valid ids per step | "
              "learn s | mask us/token | mask ms/image |")
    lines = [f"# BPE lengths and mask cost on MNIST (haar, {args.method}; {date.today()}, {platform.machine()} CPU, "
             "one thread; `python benchmarks/bpe_lengths.py`)", "", header, "|" + "---|" * (header.count("|") - 1)]
    print("\n".join(lines), flush=True)
    for f in args.final_exponents:
        base = WaveletLanguage("haar", args.method, f)
        base_length = base.encode(coeffs["test"]).lengths.mean()
        for vocabulary in args.vocab:
            clock = time.perf_counter()
            language = BPELanguage.learn(base, coeffs["train"], vocabulary) if vocabulary else base
            learn = time.perf_counter() - clock if vocabulary else 0.0
            encoded = language.encode(coeffs["test"])
            timed = encoded.select(np.arange(MASKED_IMAGES))
            language.valid_ids(timed.select([0]))  # compile
            clock = time.perf_counter()
            valid = language.valid_ids(timed)
            seconds = time.perf_counter() - clock
            line = (f"| {f} | {vocabulary or 7} | {encoded.lengths.mean():.1f} | {encoded.lengths.max()} | "
                    f"{base_length / encoded.lengths.mean():.2f} | {valid.sum(axis=1).mean():.1f} | {learn:.1f} | "
                    f"{1e6 * seconds / len(timed.tokens):.1f} | {1e3 * seconds / len(timed):.2f} |")
            lines.append(line)
            print(line, flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
