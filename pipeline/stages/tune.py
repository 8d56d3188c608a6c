"""Stage `tune`: this model's best decoding setting from a small grid, and its samples.

Decoding settings tuned for one model family can cripple another (a raster pixel model sampled at
top-p 0.6 with guidance 2 collapses into blobs), so every run also reports its figures at its own
best setting. The grid (params `tune`): guidance x top-p for autoregressive models, guidance x
sampler steps for diffusion; the other decoding settings are the shared ones (params `sample`).
Each grid point samples `tune.per_class` images of every sampled class and is scored by the
domain classifier's FID against real images of the `validation` half of the test split, never
the half evaluate reports against. The setting with the lowest classifier-FID wins; the stage
then samples the full set (`sample.per_class`, `sample.seed`) at it into data/tuned/.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from .. import figures
from ..devices import resolve_device
from ..formats import write_samples
from ..generation import Decoding, class_list, decoding_of, sample_rows
from ..idx import load_split
from ..io import atomic_dir, stage_paths, write_json
from ..metrics import Scorer, references
from ..models.samplers import load_sampler
from ..params import Params
from ..progress import log

PARAMS = ("profile", "threads", "dataset", "image", "sample", "tune")
INPUTS = {"model": "data/model", "classifier": "data/classifier", "raw": "data/raw/{dataset}"}
OUTPUTS = {"tuned": "data/tuned", "metrics": "reports/tune.json", "figures": "reports/tune"}
FEATURE_BATCH = 200


def decoding_grid(sampler, base: Decoding, settings) -> list[Decoding]:
    """The grid around the shared settings `base` (guidance only where the model is conditional)."""
    guidance = settings.cfg_scales if sampler.conditional else [1.0]
    if sampler.autoregressive:
        return [replace(base, cfg_scale=g, top_p=t) for g, t in itertools.product(guidance, settings.top_ps)]
    return [replace(base, cfg_scale=g, diffusion_steps=s) for g, s in itertools.product(guidance, settings.diffusion_steps)]


def run(p: Params, device_name: str = "auto", **paths: str | Path) -> dict:
    paths = stage_paths(INPUTS, OUTPUTS, paths, dataset=p.dataset)
    settings = p.tune
    device = resolve_device(device_name, p.profile)
    sampler = load_sampler(paths.model, device)
    classes = np.array(class_list(p.sample.classes, sampler.n_classes))
    test_images, test_labels = load_split(paths.raw, "test")
    reference = references(test_images, test_labels, "validation", classes, settings.reference_per_class,
                           np.random.default_rng(settings.seed), f"tune.reference_per_class={settings.reference_per_class}")
    scorer = Scorer(reference, paths.classifier, FEATURE_BATCH, kid_subset_size=len(reference) // 2,
                    cuda=device.type == "cuda", inception=False)
    labels = np.repeat(classes, settings.per_class)
    grid = decoding_grid(sampler, decoding_of(p.sample), settings)
    results = []
    for n, decoding in enumerate(grid, 1):
        encoded = sample_rows(sampler, labels, decoding, settings.seed, p.sample.batch_size)
        scores, _ = scorer.score(sampler.language.decode(encoded), labels)
        results.append({"decoding": asdict(decoding), "classifier_fid": scores["classifier"]["fid"],
                        "conditional_accuracy": scores["conditional_accuracy"]})
        log(f"tune {n}/{len(grid)}: {_describe(decoding, sampler)}: classifier-FID {scores['classifier']['fid']:.2f}, "
            f"conditional accuracy {scores['conditional_accuracy']:.3f}")
    best = min(results, key=lambda r: (r["classifier_fid"], -r["conditional_accuracy"]))
    best_decoding = Decoding(**best["decoding"])
    log(f"tune: best {_describe(best_decoding, sampler)}; sampling {p.sample.per_class} per class with it")
    full_labels = np.repeat(classes, p.sample.per_class)
    encoded = sample_rows(sampler, full_labels, best_decoding, p.sample.seed, p.sample.batch_size, progress="tune")
    with atomic_dir(paths.tuned) as tmp:
        write_samples(tmp / "samples.parquet", full_labels, encoded, sampler.language.decode(encoded),
                      sampler.language.vocab_size)
    summary = {"grid": results, "best": best, "selected_by": "lowest classifier-FID against the validation half of "
               f"the test split ({len(reference)} images, {settings.per_class} samples per class and setting)"}
    write_json(paths.metrics, summary)
    _figure(results, sampler, paths.figures / "grid.png")
    return summary


def _describe(decoding: Decoding, sampler) -> str:
    second = f"top-p {decoding.top_p}" if sampler.autoregressive else f"{decoding.diffusion_steps} steps"
    return f"guidance {decoding.cfg_scale}, {second}"


def _figure(results: list[dict], sampler, path: Path) -> None:
    second = "top_p" if sampler.autoregressive else "diffusion_steps"
    rows = sorted({r["decoding"]["cfg_scale"] for r in results})
    cols = sorted({r["decoding"][second] for r in results})
    values = np.full((len(rows), len(cols)), np.nan)
    for r in results:
        values[rows.index(r["decoding"]["cfg_scale"]), cols.index(r["decoding"][second])] = r["classifier_fid"]
    figures.heatmap(values, [str(v) for v in rows], [str(v) for v in cols], "guidance", second.replace("_", " "),
                    "Validation classifier-FID per decoding setting (lower is better)", path)


def main(p: Params, device: str) -> None:
    run(p, device)
