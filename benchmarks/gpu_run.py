"""A GPU run in one command (benchmarks/gpu_run.sh wraps this): the training and sampling
benchmarks at DistilGPT2 shape, then a short paper-scale run (the gpu profile: f = -3,
DistilGPT2 shape; training for --train-minutes, then --per-class samples of each class), into one
JSON of figures and the samples. Sized for one 15-minute device lease: on an H200 (2026-12-04)
the data stages took 37 s, the training benchmark 79 s (compiling included), 2 minutes of
training 119 s and sampling ran at 10.8 images/s, so the gpu profile's 10,000 samples alone would
take 15 minutes. Evaluation can run afterwards on any machine (`python -m pipeline evaluate`
in the work folder, after train_classifier and tune).

    python benchmarks/gpu_run.py --out gpu_run                       # one CUDA GPU, about 8 minutes
    python benchmarks/gpu_run.py --out /tmp/g --tiny --device cpu    # the same steps, tiny, on the CPU

It runs the pipeline's own stage commands (`python -m pipeline <stage>`) in <out>/work with
params composed from conf/ exactly as `dvc exp run -S profile=gpu` would, so the figures are the
stages' own. Needs the datasets (WAVELET_DATA_MIRROR) and the packages of pyproject.toml.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = ["dwt.limit=300", "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "train.batch_size=8", "sample.per_class=2",
        "sample.batch_size=8", "eval.num_samples=20"]


def compose(path: Path, overrides: list[str]) -> dict:
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(path, str(REPO / "conf"), None, "config", str(path.parent), overrides)
    return yaml.safe_load(path.read_text())


def run(command: list[str], cwd: Path, device: str, log: Path) -> float:
    """A command with the repository on the path; its seconds. Output goes to the log and stdout."""
    # The repository first, then whatever the caller had (carried packages installed with --target).
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "WAVELET_DEVICE": device}
    start = time.perf_counter()
    print("$ " + " ".join(command), flush=True)
    with open(log, "a") as handle:
        process = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        handle.write(process.stdout)
    print(process.stdout[-2000:], flush=True)
    if process.returncode:
        sys.exit(f"failed ({process.returncode}): {' '.join(command)}; see {log}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_run"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--train-minutes", type=float, default=2.0, help="the short run's training budget")
    parser.add_argument("--per-class", type=int, default=200, help="the short run's samples of each class")
    parser.add_argument("--tiny", action="store_true", help="a tiny configuration, for a CPU check of the steps")
    args = parser.parse_args()

    work = args.out.resolve() / "work"
    work.mkdir(parents=True, exist_ok=True)
    log = args.out.resolve() / "gpu_run.log"
    python = sys.executable
    clock = time.perf_counter()
    overrides = ["profile=gpu"] + (TINY if args.tiny else [f"sample.per_class={args.per_class}",
                                                            f"eval.num_samples={10 * args.per_class}"])  # MNIST: 10 classes
    params = compose(work / "params.yaml", overrides)
    # Written after every step, "complete" last: a run cut short by its time limit keeps its figures.
    figures = {"date": str(date.today()), "tiny": args.tiny, "complete": False, "seconds": {}}

    def save() -> None:
        figures["seconds"]["total"] = time.perf_counter() - clock
        (args.out / "gpu_run.json").write_text(json.dumps(figures, indent=2) + "\n")

    def record(step: str, command: list[str]) -> None:
        figures["seconds"][step] = run(command, work, args.device, log)
        save()

    for stage in ("download", "dwt", "tokenize"):
        record(stage, [python, "-m", "pipeline", stage])

    shape = "small" if args.tiny else "distilgpt2"
    record("train_benchmark",
           [python, str(REPO / "benchmarks/train_speed.py"), "--shape", shape, "--device", args.device,
            "--batch-size", str(params["train"]["batch_size"]), "--steps", "5" if args.tiny else "30",
            "--tokens", "data/tokens", "--json", "train_speed.json"] + ([] if args.tiny else ["--compile"]))
    speed = json.loads((work / "train_speed.json").read_text())
    figures.update(device=speed["device"], torch=speed["torch"], train_benchmark=speed)
    save()

    # The short run: as many steps as the measured speed fits in the budget.
    meta = json.loads((work / "data/tokens/meta.json").read_text())
    tokens_per_step = params["train"]["batch_size"] * meta["splits"]["train"]["length_mean"]
    steps = max(2, int(args.train_minutes * 60 * speed["real_tokens_per_s"] / tokens_per_step))
    overrides += [f"train.steps={steps}", f"train.warmup_steps={max(1, min(500, steps // 10))}",
                  f"train.eval_every={max(1, steps // 4)}", f"train.checkpoint_every={steps}"]
    compose(work / "params.yaml", overrides)
    record("train", [python, "-m", "pipeline", "train"])
    trained = json.loads((work / "reports/train/metrics.json").read_text())
    short_run = {"steps": steps, "train_minutes": trained["train_seconds"] / 60,
                 "train_tokens_per_s": trained["train_tokens_per_s"], "train_flops": trained["train_flops"],
                 "test_bits_per_token": trained["test"]["bits_per_token"],
                 "test_bits_per_image": trained["test"]["bits_per_image"]}
    figures["short_run"] = short_run
    record("sample", [python, "-m", "pipeline", "sample"])
    sampled = json.loads((work / "reports/sample.json").read_text())
    short_run.update(samples=sampled["samples"], sample_images_per_s=sampled["images_per_s"],
                     traffic_ratio=sampled["traffic_ratio"], cache_ratio=sampled["cache_ratio"],
                     mean_sample_length=sampled["length_mean"])
    figures["samples"] = str(work / "data/samples/samples.parquet")
    save()
    record("sample_benchmark",
           [python, str(REPO / "benchmarks/sample_speed.py"), "--model", "data/model", "--device", args.device,
            "--samples", "40" if args.tiny else "500", "--slots", str(params["sample"]["batch_size"]),
            "--top-p", str(params["sample"]["top_p"]), "--cfg-scale", str(params["sample"]["cfg_scale"]),
            "--json", "sample_speed.json"])
    figures["sample_benchmark"] = json.loads((work / "sample_speed.json").read_text())
    figures["complete"] = True
    save()
    print(json.dumps(short_run, indent=2))
    print(f"wrote {args.out / 'gpu_run.json'} in {figures['seconds']['total'] / 60:.1f} min")


if __name__ == "__main__":
    main()
