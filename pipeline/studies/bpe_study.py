"""The BPE trade-off (paper 3.2.3): vocabulary size against sequence length, speed and quality
at equal training compute.

    python -m pipeline.studies.bpe_study queue      # dvc exp run --queue: bpe-7, bpe-64, ..., bpe-4096
    dvc queue start                         # run them
    python -m pipeline.studies.bpe_study table      # reports/bpe_tradeoff.md and reports/bpe_tradeoff.png

Each row is an experiment named `bpe-<vocabulary>` that differs from the others only in
`tokenizer.bpe_vocab_size` (7 is the plain language, bpe_vocab_size 0); all pin the language
(haar, zero-tree, f = -1) and the training budget in FLOPs, and run through the same stages. The
table comes from DVC's own records (`dvc exp show --json`). Sequence lengths at f = -3, which
need no training, are measured by benchmarks/bpe_lengths.py.
"""
from __future__ import annotations

import platform
import re
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from .ablations import experiments, fmt

VOCABULARIES = (0, 64, 256, 1024, 4096)  # 0: the plain 7-token language (8 ids with ZeroTree)
BUDGET = 3.0e13  # training FLOPs per row: 60% of the default run's; 6 to 17 minutes of training on one thread
PINNED = ["wavelet=haar", "tokenizer.method=zerotree", "tokenizer.final_exponent=-1"]
# The completion stage is not part of the study: one small setting keeps it from costing a row's time.
LIGHT = ["complete.prefix_planes=[2]", "complete.images=20", "complete.completions=1"]
PREFIX = "bpe-"
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def row_name(vocabulary: int, seed: int = 0) -> str:
    return PREFIX + str(vocabulary or 7) + (f"-s{seed}" if seed else "")


def overrides(vocabulary: int, budget: float, seed: int = 0) -> list[str]:
    return PINNED + LIGHT + [f"tokenizer.bpe_vocab_size={vocabulary}", f"train.flops={budget:g}", f"train.seed={seed}"]


@app.command()
def queue(budget: float = typer.Option(BUDGET, help="training FLOPs per row"),
          vocabularies: list[int] = typer.Option(list(VOCABULARIES), "--vocab", help="rows (0: no merges)"),
          seed: int = typer.Option(0, help="train.seed; rows of other seeds than 0 are named bpe-<vocab>-s<seed>")
          ) -> None:
    """Queue one experiment per vocabulary size (`dvc queue start` runs them)."""
    for vocabulary in vocabularies:
        command = ["dvc", "exp", "run", "--queue", "-n", row_name(vocabulary, seed)]
        for override in overrides(vocabulary, budget, seed):
            command += ["-S", override]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)


def row(exp: dict) -> dict:
    """The figures of one experiment that the table and the figure show."""
    files, m = exp["files"], exp["metrics"]
    tokenized, trained = files["reports/tokenize.json"], files["reports/train/metrics.json"]
    tokens_per_s = trained["train_tokens_per_s"]
    return {
        "vocab": tokenized["vocab_size"], "seed": exp["params"]["train"]["seed"], "length_mean": tokenized["train"]["length_mean"],
        "length_max": tokenized["train"]["length_max"], "bits_per_image": m["likelihood"].get("test_bits_per_image"),
        "bits_per_token": m["likelihood"].get("test_bits_per_token"), "train_tokens_per_s": tokens_per_s,
        "train_images_per_s": tokens_per_s / tokenized["train"]["length_mean"],
        "sample_images_per_s": m["compute"]["sample_images_per_s"], "train_flops": m["compute"]["train_flops"],
        "train_minutes": m["compute"]["train_minutes"], "steps": trained["steps"],
        **{f"{kind}_{key}": (m[kind][key]["fid"] if key != "accuracy" else m[kind]["conditional_accuracy"])
           for kind in ("generated", "tuned") for key in ("inception", "classifier", "accuracy")},
        "ceiling_classifier": m["tokenizer_floor"]["classifier"]["fid"],
        "real_classifier": m["real_floor"]["classifier"]["fid"],
        "ceiling_accuracy": m["tokenizer_floor"]["conditional_accuracy"],
        "real_accuracy": m["real_floor"]["conditional_accuracy"],
        "ceiling_inception": m["tokenizer_floor"]["inception"]["fid"], "real_inception": m["real_floor"]["inception"]["fid"],
    }


@app.command()
def table(out: Path = typer.Option(Path("reports/bpe_tradeoff.md")),
          figure: Path = typer.Option(Path("reports/bpe_tradeoff.png")),
          note: Annotated[str, typer.Option(help="how the rows ran (device, threads), printed under the title")] = ""
          ) -> None:
    """Write the table and the figure from `dvc exp show --json`."""
    found = experiments()
    names = [name for v in VOCABULARIES for name in sorted(found, key=lambda n: (len(n), n))
             if re.fullmatch(re.escape(row_name(v)) + r"(-s\d+)?", name)]
    rows = [row(found[name]) for name in names]
    if not rows:
        sys.exit("no bpe-* experiments with metrics; run `python -m pipeline.studies.bpe_study queue` and `dvc queue start`")
    missing = [row_name(v) for v in VOCABULARIES if row_name(v) not in found]
    header = ("| vocabulary | seed | mean length | max length | test bits/image | bits/token | training tokens/s | "
              "training images/s | sampling images/s | FID | FID, tuned | classifier-FID | classifier-FID, tuned | "
              "cond. acc. | cond. acc., tuned | training FLOPs | steps | training min |")
    first = rows[0]
    lines = [f"# BPE vocabulary size against length, speed and quality at equal training compute ({date.today()}, "
             f"{platform.machine()} CPU, generated by `python -m pipeline.studies.bpe_study table` from `dvc exp show`)", "",
             *([note, ""] if note else []),
             "Language: haar, zero-tree, f = -1 (vocabulary 7: no merges; its 8 ids include ZeroTree). Lengths are "
             "of the training split; bits/image is the test NLL of the tokenizer's own segmentation (an upper bound "
             "on the image's code length once merges make segmentations non-unique). Training images/s = tokens/s / "
             "mean length, with the grammar masks computed in the loop. Every row shares the tokenizer ceiling "
             f"(classifier-FID {fmt(first['ceiling_classifier'])}, FID {fmt(first['ceiling_inception'])}) and real "
             f"data (classifier-FID {fmt(first['real_classifier'])}, FID {fmt(first['real_inception'])}): merges do "
             "not change the images a language can write. 'tuned': each row's best decoding setting, chosen on the "
             "validation half of the test split. Rows of another `train.seed` repeat a row to show the seed-to-seed "
             "spread.", "", header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        lines.append("| " + " | ".join([
            str(r["vocab"] - 1 if r["vocab"] == 8 else r["vocab"]), str(r["seed"]), fmt(r["length_mean"]), str(r["length_max"]),
            fmt(r["bits_per_image"]), fmt(r["bits_per_token"], 3), fmt(r["train_tokens_per_s"], 0),
            fmt(r["train_images_per_s"]), fmt(r["sample_images_per_s"]),
            fmt(r["generated_inception"]), fmt(r["tuned_inception"]), fmt(r["generated_classifier"]),
            fmt(r["tuned_classifier"]), fmt(r["generated_accuracy"], 3), fmt(r["tuned_accuracy"], 3),
            f"{r['train_flops']:.3g}", str(r["steps"]), fmt(r["train_minutes"])]) + " |")
    if missing:
        lines += ["", "Not run yet: " + ", ".join(missing)]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _figure(rows, figure)


def _figure(rows: list[dict], path: Path) -> None:
    """Length, speed, FIDs and conditional accuracy against vocabulary size (log axis), quality
    beside its floors (tokenizer ceiling, real data)."""
    from .. import figures

    plt = figures.plt
    repeats = [r for r in rows if r["seed"] != 0]  # other seeds: hollow markers beside the seed-0 lines
    rows = [r for r in rows if r["seed"] == 0] or rows
    vocab = _vocabulary(rows)
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    axes = axes.reshape(-1)
    _length_panel(axes[0], vocab, rows)
    _speed_panel(axes[1], vocab, rows)
    handles = _fid_panel(axes[2], vocab, rows, repeats)
    _accuracy_panel(axes[3], vocab, rows, repeats)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(vocab, [str(int(v)) for v in vocab])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("vocabulary size (7: no merges)")
        if ax is not axes[2]:
            ax.legend(fontsize=7, loc="lower left" if ax is axes[3] else "best")
    axes[2].legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)
    fig.suptitle("BPE over the wavelet language (MNIST, haar zero-tree f = -1): vocabulary against length, "
                 "speed and quality at equal training compute", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    figures.save(fig, path)


def _vocabulary(rows: list[dict]) -> np.ndarray:
    """The x axis: vocabulary sizes, the plain language's 8 ids shown as its 7 tokens."""
    return np.array([r["vocab"] - 1 if r["vocab"] == 8 else r["vocab"] for r in rows], float)


def _length_panel(ax, vocab: np.ndarray, rows: list[dict]) -> None:
    ax.plot(vocab, [r["length_mean"] for r in rows], "o-", label="mean")
    ax.plot(vocab, [r["length_max"] for r in rows], "s--", label="max")
    ax.set_ylabel("tokens per image")
    ax.set_title("Sequence length", fontsize=10)


def _speed_panel(ax, vocab: np.ndarray, rows: list[dict]) -> None:
    ax.plot(vocab, [r["train_images_per_s"] for r in rows], "o-", label="training images/s")
    ax.plot(vocab, [r["sample_images_per_s"] for r in rows], "s-", label="sampling images/s")
    ax.set_ylabel("images per second (one CPU thread)")
    ax.set_title("Speed", fontsize=10)


def _fid_panel(ax, vocab: np.ndarray, rows: list[dict], repeats: list[dict]) -> list:
    """Both FIDs at the shared and the tuned decoding, beside their floors; returns the legend's
    handles (colours: metric; styles: what is plotted), which the caller places below the panel."""
    for key, colour in (("classifier", "tab:blue"), ("inception", "tab:orange")):
        ax.plot(vocab, [r[f"generated_{key}"] or np.nan for r in rows], "o-", color=colour)
        ax.plot(vocab, [r[f"tuned_{key}"] or np.nan for r in rows], "x:", color=colour)
        ax.scatter(_vocabulary(repeats), [r[f"generated_{key}"] or np.nan for r in repeats], facecolors="none",
                   edgecolors=colour, zorder=3)
        for floor, style in (("ceiling", "-."), ("real", "--")):
            if rows[0][f"{floor}_{key}"] is not None:
                ax.axhline(rows[0][f"{floor}_{key}"], color=colour, linestyle=style, linewidth=0.8)
    from matplotlib.lines import Line2D as Line
    from matplotlib.ticker import NullFormatter

    handles = [Line([], [], color="tab:blue", label="classifier-FID"), Line([], [], color="tab:orange", label="FID"),
               Line([], [], color="black", marker="o", label="shared decoding"),
               Line([], [], color="black", marker="x", linestyle=":", label="tuned decoding"),
               Line([], [], color="black", linestyle="-.", linewidth=0.8, label="tokenizer ceiling"),
               Line([], [], color="black", linestyle="--", linewidth=0.8, label="real data"),
               Line([], [], color="black", marker="o", markerfacecolor="none", linestyle="none",
                    label="shared decoding, another seed")]
    ax.set_yscale("log")
    ax.set_yticks([10, 20, 50, 100, 200, 500, 1000], ["10", "20", "50", "100", "200", "500", "1000"])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("lower is better")
    ax.set_title(f"FIDs at {rows[0]['train_flops']:.2g} training FLOPs", fontsize=10)
    return handles


def _accuracy_panel(ax, vocab: np.ndarray, rows: list[dict], repeats: list[dict]) -> None:
    ax.plot(vocab, [r["generated_accuracy"] for r in rows], "o-", color="tab:green", label="shared decoding")
    ax.plot(vocab, [r["tuned_accuracy"] for r in rows], "x:", color="tab:green", label="tuned")
    if repeats:
        ax.scatter(_vocabulary(repeats), [r["generated_accuracy"] for r in repeats], facecolors="none",
                   edgecolors="tab:green", zorder=3, label="shared decoding, another seed")
    ax.axhline(rows[0]["ceiling_accuracy"], color="tab:green", linestyle="-.", linewidth=0.8, label="tokenizer ceiling")
    ax.axhline(rows[0]["real_accuracy"], color="grey", linestyle="--", linewidth=0.8, label="real data")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("conditional accuracy (higher is better)")
    ax.set_title("Class fidelity (domain classifier)", fontsize=10)


if __name__ == "__main__":
    app()
