"""The tokenizer's ceiling for a list of token languages: what real images score after a round
trip through each language, on evaluate's protocol (the same class-matched training images as
the real floor, against the same references from the reported half of the test split), next to
the sequence lengths each language costs.

    python benchmarks/tokenizer_ceilings.py --dataset mnist --out reports/tokenizer_ceilings.md
    python benchmarks/tokenizer_ceilings.py --dataset fashion_mnist --languages "bior4.4 zeroblock -4" ...

Needs data/raw/<dataset> and data/classifier (dvc repro train_classifier). A language is
"<wavelet> <method> <f>" or "pixels <levels>".
"""
from __future__ import annotations

import argparse
import platform
from datetime import date
from pathlib import Path

import numpy as np

from pipeline import psnr
from pipeline.idx import load_split
from pipeline.languages.pixels import PixelLanguage
from pipeline.languages.wavelet import WaveletLanguage
from pipeline.metrics import Scorer, class_matched, references
from pipeline.stages import dwt

DEFAULT_LANGUAGES = ["haar zeroblock 0", "haar zeroblock -1", "haar zeroblock -2", "haar zeroblock -3",
                     "haar zerotree -1", "bior4.4 zeroblock -1", "bior4.4 zeroblock -2",
                     "pixels 2", "pixels 4", "pixels 8"]


def language_of(spec: str):
    words = spec.split()
    if words[0] == "pixels":
        return PixelLanguage("haar", int(words[1]))
    return WaveletLanguage(words[0], words[1], int(words[2]))


def real_and_references(raw: Path, images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """evaluate's protocol with eval.seed 0: the class-balanced references from the reported half
    of the test split, then as many class-matched real training images; and all training images."""
    train_images, train_labels = load_split(raw, "train")
    test_images, test_labels = load_split(raw, "test")
    classes = np.arange(10)
    rng = np.random.default_rng(0)  # as evaluate: references first, then the real images
    reference = references(test_images, test_labels, "reported", classes, images // 10, rng, "--images")
    rows = class_matched(train_labels, classes, images // 10, rng, "--images")
    return reference, train_images[rows], train_labels[rows], train_images


def ceiling(language, real: np.ndarray, labels: np.ndarray, scorer: Scorer) -> dict:
    """What the real images score after a round trip through the language, and its PSNR."""
    decoded = language.decode(language.encode_images(real))
    scores, _ = scorer.score(decoded, labels)
    return {"classifier_fid": scores["classifier"]["fid"], "fid": scores["inception"]["fid"],
            "conditional_accuracy": scores["conditional_accuracy"], **psnr.summary(psnr.per_image(decoded, real))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--languages", nargs="+", default=DEFAULT_LANGUAGES)
    parser.add_argument("--images", type=int, default=500, help="as eval.num_samples and eval.reference_images")
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--classifier", default="data/classifier")
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args()

    reference, real, labels, train_images = real_and_references(Path(args.raw) / args.dataset, args.images)
    scorer = Scorer(reference, args.classifier, 100, args.images // 2, cuda=False)
    lines = [f"Tokenizer ceilings, {args.dataset}: {len(real)} class-matched training images through each language "
             f"vs {len(reference)} test references (reported half); lengths over the whole training split. "
             f"{date.today()}, {platform.machine()} CPU. Inception: {scorer.inception_name}.", "",
             "| language | mean length | max length | PSNR (dB) | classifier-FID | FID | conditional accuracy |",
             "|---|---|---|---|---|---|---|"]
    floor, _ = scorer.score(real, labels)
    lines.append(f"| real images (the floor) | | | | {floor['classifier']['fid']:.1f} | "
                 f"{floor['inception']['fid'] or float('nan'):.1f} | {floor['conditional_accuracy']:.3f} |")
    print("\n".join(lines), flush=True)
    coefficients = {}
    for spec in args.languages:
        language = language_of(spec)
        if language.wavelet not in coefficients:
            coefficients[language.wavelet] = dwt.transform(train_images, language.wavelet)[0]
        lengths = language.encode(coefficients[language.wavelet]).lengths
        figures = ceiling(language, real, labels, scorer)
        db = "lossless" if figures["psnr_db"] is None else f"{figures['psnr_db']:.1f}"
        line = (f"| {language.name} | {lengths.mean():.1f} | {lengths.max()} | {db} | "
                f"{figures['classifier_fid']:.1f} | {figures['fid'] or float('nan'):.1f} | "
                f"{figures['conditional_accuracy']:.3f} |")
        lines.append(line)
        print(line, flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
