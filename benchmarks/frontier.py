"""The rate-quality frontier of token languages, before any model: tokens per image against the
tokenizer's ceiling (what real images score after a round trip through the language), for the
pixel language at 2, 4 and 8 levels, the haar zero-tree language at f = -1, -2, -3 with BPE over
each of those at 64, 256 and 1024 ids, and at per-level final exponents (coarse to fine: finer
planes for the coarse levels) with BPE 256 over each.

    python benchmarks/frontier.py --raw data/raw/mnist --classifier data/classifier \\
        --out reports/frontier.md --figure reports/frontier.png

Ceilings follow evaluate's protocol (benchmarks/tokenizer_ceilings.py: class-matched training
images against the reported half of the test split, the run's domain classifier). Merges change
how an image is written, not which images can be written, so a BPE language's ceiling is its base
language's; its merges are learned on the whole training split, as the tokenize stage does.
Lengths are the test split's mean. A language is on the frontier of a metric when no other
language has both fewer tokens per image and a lower ceiling.
"""
from __future__ import annotations

import argparse
import platform
from datetime import date
from pathlib import Path

from tokenizer_ceilings import ceiling, real_and_references

from pipeline import figures
from pipeline.idx import load_split
from pipeline.languages.bpe import BPELanguage
from pipeline.languages.pixels import PixelLanguage
from pipeline.languages.wavelet import WaveletLanguage
from pipeline.metrics import Scorer
from pipeline.stages import dwt

PIXEL_LEVELS = (2, 4, 8)
FINAL_EXPONENTS = (-1, -2, -3)
BPE_SIZES = (64, 256, 1024)
PER_LEVEL_EXPONENTS = ((-3, -3, -2, -1), (-3, -2, -2, -1), (-2, -2, -1, -1), (-3, -3, -3, -2))
PER_LEVEL_BPE_SIZES = (256,)
METRICS = (("classifier_fid", "classifier-FID"), ("fid", "FID"))


def measure(raw: Path, classifier: Path, images: int) -> tuple[list[dict], dict, str]:
    """One row per language (name, family, tokens per image, ceiling figures), the real floor and
    the Inception network used."""
    reference, real, labels, _ = real_and_references(raw, images)
    scorer = Scorer(reference, classifier, 100, images // 2, cuda=False)
    floor, _ = scorer.score(real, labels)
    coeffs = {split: dwt.transform(load_split(raw, split)[0], "haar")[0] for split in ("train", "test")}
    rows = []
    for levels in PIXEL_LEVELS:
        language = PixelLanguage("haar", levels)
        rows.append({"name": language.name, "family": "pixels", "tokens": float(language.length),
                     **ceiling(language, real, labels, scorer)})
        print(rows[-1], flush=True)
    for f in FINAL_EXPONENTS:
        rows += zero_tree_rows(f, "zero-tree", BPE_SIZES, coeffs, real, labels, scorer)
    for f in PER_LEVEL_EXPONENTS:
        rows += zero_tree_rows(f, "zero-tree per level", PER_LEVEL_BPE_SIZES, coeffs, real, labels, scorer)
    real_floor = {"classifier_fid": floor["classifier"]["fid"], "fid": floor["inception"]["fid"]}
    return rows, real_floor, scorer.inception_name


def zero_tree_rows(f, family: str, bpe_sizes, coeffs: dict, real, labels, scorer) -> list[dict]:
    """The haar zero-tree language of final exponent f (one, or one per level) and BPE over it at
    each size: their rows (a BPE language's ceiling is its base's)."""
    base = WaveletLanguage("haar", "zerotree", f)
    figures_of_base = ceiling(base, real, labels, scorer)
    rows = [{"name": base.name, "family": family, "tokens": float(base.encode(coeffs["test"]).lengths.mean()),
             **figures_of_base}]
    print(rows[-1], flush=True)
    for size in bpe_sizes:
        language = BPELanguage.learn(base, coeffs["train"], size)
        rows.append({"name": f"{base.name}, BPE {size}", "family": f"{family} + BPE {size}",
                     "tokens": float(language.encode(coeffs["test"]).lengths.mean()), **figures_of_base})
        print(rows[-1], flush=True)
    return rows


def on_frontier(rows: list[dict], metric: str) -> list[bool]:
    """Whether each row is on the frontier: no other row has both fewer tokens and a lower ceiling."""
    return [not any(other["tokens"] < row["tokens"] and other[metric] < row[metric] for other in rows)
            for row in rows]


def table(rows: list[dict], real_floor: dict, inception: str) -> str:
    frontier = {metric: on_frontier(rows, metric) for metric, _ in METRICS}
    lines = [f"# Rate-quality frontier of token languages (MNIST; {date.today()}, {platform.machine()} CPU, one thread; "
             "`python benchmarks/frontier.py`)", "",
             "Ceiling: what 500 class-matched real training images score after a round trip through the language, "
             f"against 500 test references (evaluate's protocol; Inception: {inception}). Tokens: mean length over "
             "the test split. **bold**: on the frontier of that metric (no other language has both fewer tokens "
             "and a lower ceiling).", "",
             f"Real images: classifier-FID {real_floor['classifier_fid']:.1f}, FID {real_floor['fid']:.1f}.", "",
             "| language | tokens/image | ceiling classifier-FID | ceiling FID | PSNR (dB) | conditional accuracy |",
             "|---|---|---|---|---|---|"]
    for j, row in enumerate(rows):
        cells = [f"**{row[metric]:.1f}**" if frontier[metric][j] else f"{row[metric]:.1f}" for metric, _ in METRICS]
        db = "lossless" if row["psnr_db"] is None else f"{row['psnr_db']:.1f}"
        lines.append(f"| {row['name']} | {row['tokens']:.1f} | {cells[0]} | {cells[1]} | {db} | "
                     f"{row['conditional_accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], real_floor: dict, path: Path) -> None:
    """Tokens per image (log) against each ceiling, one marker per language family, the frontier
    as a step line, real data dashed."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    families = list(dict.fromkeys(row["family"] for row in rows))
    markers = dict(zip(families, "soD^v<>ph*"))
    for ax, (metric, label) in zip(axes, METRICS):
        for family in families:
            mine = [row for row in rows if row["family"] == family]
            ax.scatter([r["tokens"] for r in mine], [r[metric] for r in mine], marker=markers[family], label=family)
        best = sorted((row for row, keep in zip(rows, on_frontier(rows, metric)) if keep), key=lambda r: r["tokens"])
        ax.step([r["tokens"] for r in best], [r[metric] for r in best], where="post", color="k", lw=1,
                label="frontier")
        ax.axhline(real_floor[metric], color="grey", ls="--", lw=1, label="real images")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens per image (test split mean)")
        ax.set_ylabel(f"tokenizer ceiling, {label} (lower is better)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle("Rate-quality frontier of token languages on MNIST, before any model")
    figures.save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", default="data/raw/mnist", help="the MNIST folder the download stage wrote")
    parser.add_argument("--classifier", default="data/classifier")
    parser.add_argument("--images", type=int, default=500, help="as eval.num_samples and eval.reference_images")
    parser.add_argument("--out", default="reports/frontier.md")
    parser.add_argument("--figure", default="reports/frontier.png")
    args = parser.parse_args()
    rows, real_floor, inception = measure(Path(args.raw), Path(args.classifier), args.images)
    Path(args.out).write_text(table(rows, real_floor, inception))
    figure(rows, real_floor, Path(args.figure))
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
