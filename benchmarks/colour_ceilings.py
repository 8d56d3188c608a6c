"""CIFAR-10-JPEG before any model: sequence lengths and tokenizer ceilings of the colour wavelet
language across final exponents (luma / chroma) and BPE sizes, beside the pixel language over RGB.

    python benchmarks/colour_ceilings.py --raw data/raw/cifar10_jpeg --dwt data/dwt \\
        --classifier data/classifier --out reports/cifar10_jpeg/ceilings.md \\
        --figure reports/cifar10_jpeg/progressive.png

Needs the download, dwt (`dwt.chroma` as the languages below: half) and train_classifier stages'
outputs for `dataset=cifar10_jpeg`. Ceilings follow evaluate's protocol
(benchmarks/tokenizer_ceilings.py: class-matched training images through each language, against
the reported half of the test split, the run's domain classifier). Lengths are the test split's
mean. A BPE language writes the same images as its base language (same ceiling); its merges are
learned on the whole training split, as the tokenize stage does. These are CIFAR-10-JPEG figures
(JPEG quality 75 pixels), not comparable with published CIFAR-10 figures.
"""
from __future__ import annotations

import argparse
import platform
from datetime import date
from pathlib import Path

import numpy as np
from tokenizer_ceilings import ceiling, real_and_references

from pipeline import figures
from pipeline.devices import cpu_name
from pipeline.formats import read_dwt, read_dwt_chroma, read_dwt_image
from pipeline.languages.bpe import BPELanguage
from pipeline.languages.pixels import PixelLanguage
from pipeline.languages.wavelet import WaveletLanguage
from pipeline.metrics import Scorer

FINAL_EXPONENTS = ((-2, -2), (-3, -2), (-3, -3), (-4, -3), (-4, -4), (-5, -4), (-5, -5))  # (luma, chroma)
BPE = (((-4, -3), 256), ((-4, -3), 1024), ((-5, -4), 256), ((-5, -4), 1024))
PIXEL_LEVELS = (4, 8, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=Path("data/raw/cifar10_jpeg"))
    parser.add_argument("--dwt", type=Path, default=Path("data/dwt"))
    parser.add_argument("--classifier", type=Path, default=Path("data/classifier"))
    parser.add_argument("--images", type=int, default=500, help="as eval.num_samples and eval.reference_images")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--figure", type=Path, help="progressive decoding of a few test images (PNG)")
    args = parser.parse_args()

    image = read_dwt_image(args.dwt)
    coeffs = {}
    for split in ("train", "test"):
        luma, _ = read_dwt(args.dwt, split)
        coeffs[split] = (np.asarray(luma), np.asarray(read_dwt_chroma(args.dwt, split, len(luma))))
    reference, real, labels, _ = real_and_references(args.raw, args.images)
    scorer = Scorer(reference, args.classifier, 100, args.images // 2, cuda=False)
    floor, _ = scorer.score(real, labels)
    lines = [f"Tokenizer ceilings, CIFAR-10-JPEG (haar, chroma {image['chroma']}): {len(real)} class-matched "
             f"training images through each language vs {len(reference)} test references (reported half); "
             f"lengths: test split mean. {date.today()}, {cpu_name()} ({platform.machine()}), one torch thread. "
             f"Inception: {scorer.inception_name}.", "",
             "| language | tokens per image | PSNR (dB) | classifier-FID | FID | conditional accuracy |",
             "|---|---|---|---|---|---|",
             f"| real images (the floor) | | | {floor['classifier']['fid']:.1f} | "
             f"{floor['inception']['fid'] or float('nan'):.1f} | {floor['conditional_accuracy']:.3f} |"]
    print("\n".join(lines), flush=True)

    def row(name: str, tokens: float, figures: dict) -> None:
        db = "lossless" if figures["psnr_db"] is None else f"{figures['psnr_db']:.1f}"
        lines.append(f"| {name} | {tokens:.0f} | {db} | {figures['classifier_fid']:.1f} | "
                     f"{figures['fid'] or float('nan'):.1f} | {figures['conditional_accuracy']:.3f} |")
        print(lines[-1], flush=True)

    size = image["height"]
    for levels in PIXEL_LEVELS:
        language = PixelLanguage("haar", levels, size, size, image["chroma"])
        row(language.name, language.length, ceiling(language, real, labels, scorer))
    bases = {}
    for method in ("zerotree", "zeroblock"):
        for luma_f, chroma_f in FINAL_EXPONENTS if method == "zerotree" else ((-4, -3),):
            language = WaveletLanguage("haar", method, luma_f, size=coeffs["test"][0].shape[-1], image_height=size,
                                       image_width=size, chroma=image["chroma"], chroma_final_exponent=chroma_f)
            figures = ceiling(language, real, labels, scorer)
            bases[(method, luma_f, chroma_f)] = figures
            row(language.name, language.encode(coeffs["test"]).lengths.mean(), figures)
    for (luma_f, chroma_f), vocab in BPE:
        base = WaveletLanguage("haar", "zerotree", luma_f, size=coeffs["test"][0].shape[-1], image_height=size,
                               image_width=size, chroma=image["chroma"], chroma_final_exponent=chroma_f)
        language = BPELanguage.learn(base, coeffs["train"], vocab)
        row(f"{base.name}, BPE {vocab}", language.encode(coeffs["test"]).lengths.mean(),
            bases[("zerotree", luma_f, chroma_f)])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    if args.figure:
        progressive(coeffs["test"], image, args.figure)


def progressive(coeffs, image: dict, path: Path, shown: int = 4) -> None:
    """The first test images decoded after each bit-plane in the CIFAR default language
    (zero-tree, f = -4 / -3), beside the images as dwt keeps them."""
    size = image["height"]
    language = WaveletLanguage("haar", "zerotree", -4, size=coeffs[0].shape[-1], image_height=size, image_width=size,
                               chroma=image["chroma"], chroma_final_exponent=-3)
    examples = (coeffs[0][:shown], coeffs[1][:shown])
    encoded = language.encode(examples)
    path.parent.mkdir(parents=True, exist_ok=True)
    figures.progressive_figure(language, encoded, range(shown), path,
                               [f"e0={e}\n{n} tok" for e, n in zip(encoded.initial_exponents, encoded.lengths)],
                               f"Progressive decoding, CIFAR-10-JPEG test images ({language.name})",
                               originals=np.clip(language.pixels(examples), 0, 1))


if __name__ == "__main__":
    main()
