"""Scores a GPU run's samples on any machine with the evaluate stage's own code.

benchmarks/gpu_run.py leaves its figures, params.yaml, the train and sample stages' reports and
the samples; copy them into one folder (reports/gpu/ holds the committed run's). This script
rebuilds the run's data, tokens and domain classifier here from that params.yaml (deterministic
stages, run on the CPU), puts the samples in place and runs `evaluate`: FID, KID, precision and
recall, classifier-FID and conditional accuracy, against the same floors (real training images,
the tokenizer's round trip) as every other run. The short run has no tune stage, so its samples
stand for both the shared and the tuned decoding settings, and its tune.json says so.

    python benchmarks/gpu_evaluate.py --run reports/gpu --work /tmp/gpu_eval [--no-inception]

Writes <run>/metrics.json and <run>/evaluate/*.png. `--no-inception` scores with the domain
classifier only (Inception figures null): on a CPU without AVX-512 the FID Inception took over 45
minutes for 4,000 images on one core (2026-12-04).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def stage(name: str, work: Path) -> None:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "WAVELET_DEVICE": "cpu"}
    print(f"$ python -m pipeline {name}", flush=True)
    subprocess.run([sys.executable, "-m", "pipeline", name], cwd=work, env=env, check=True)


def overlay(base: dict, values: dict) -> dict:
    return {**base, **{key: overlay(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict)
                       else value for key, value in values.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "reports/gpu")
    parser.add_argument("--work", type=Path, default=Path("gpu_eval"))
    parser.add_argument("--no-inception", action="store_true", help="the domain classifier's figures only")
    args = parser.parse_args()
    run, work = args.run.resolve(), args.work.resolve()
    sampled = json.loads((run / "sample.json").read_text())

    # The run's params over today's (keys added since the run take today's defaults).
    params = overlay(yaml.safe_load((REPO / "params.yaml").read_text()), yaml.safe_load((run / "params.yaml").read_text()))
    params["eval"]["num_samples"] = sampled["samples"]  # score every sample the run made
    params["eval"]["inception"] = not args.no_inception
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("download", "dwt", "tokenize", "train_classifier"):
        stage(name, work)

    for folder in ("data/samples", "data/tuned"):
        (work / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(run / "samples.parquet", work / folder / "samples.parquet")
    (work / "reports/train").mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "train_metrics.json", work / "reports/train/metrics.json")
    shutil.copy(run / "sample.json", work / "reports/sample.json")
    tune = {"best": {"decoding": sampled["decoding"]},
            "note": "not tuned: the GPU short run ran no tune stage; its samples stand for the tuned set"}
    (work / "reports/tune.json").write_text(json.dumps(tune, indent=2) + "\n")
    stage("evaluate", work)

    shutil.copy(work / "reports/metrics.json", run / "metrics.json")
    shutil.copy(work / "reports/classifier.json", run / "classifier.json")
    shutil.rmtree(run / "evaluate", ignore_errors=True)
    shutil.copytree(work / "reports/evaluate", run / "evaluate")
    print(f"wrote {run / 'metrics.json'} and {run / 'evaluate'}")


if __name__ == "__main__":
    main()
