#!/usr/bin/env bash
# Builds the wheelhouse a GPU machine without a package index needs for benchmarks/gpu_run.sh:
# every package this project installs that the GPU image lacks (its image has torch,
# transformers, numpy, pandas, pyarrow, numba, scipy and typer), as wheels. Source-only
# packages (dvc's nanotime, for one) are built into wheels here. Run it on a machine with a
# package index and the same Python minor version and platform as the GPU machine:
#
#   bash benchmarks/gpu_wheels.sh wheelhouse
#
# It resolves what to carry in a scratch venv that holds the image's packages only, so nothing
# the image has is carried, and leaves out what the GPU run never imports: torch-fidelity and
# torchvision (evaluation runs on any other machine; torchvision must match the image's torch)
# and diffusers (the diffusion baseline). It prints the folder's size: the device tool carries at
# most 64 MiB, the datasets included (MNIST's four files: 11 MiB). Measured 2026-11-29 (x86_64,
# Python 3.11): 91 wheels, 48 MiB, enough for benchmarks/gpu_run.sh in a venv holding only the
# image's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-wheelhouse}
image_packages=(torch transformers numpy pandas pyarrow numba scipy typer)
scratch=$(mktemp -d)
python3 -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install --quiet "${TORCH_PIN:-torch==2.14.1}" "${image_packages[@]:1}"
"$scratch/venv/bin/pip" install --quiet --dry-run --report "$scratch/report.json" .
"$scratch/venv/bin/python" - "$scratch/report.json" > "$scratch/missing.txt" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
for item in report["install"]:
    meta = item["metadata"]
    if meta["name"] != "wavelet-ar":
        print(f"{meta['name']}=={meta['version']}")
PY
mkdir -p "$out"
grep -viE '^(torchvision|torch-fidelity|torch_fidelity|diffusers)==' "$scratch/missing.txt" > "$scratch/carry.txt"
"$scratch/venv/bin/pip" wheel --quiet --no-deps -r "$scratch/carry.txt" -w "$out"
rm -rf "$scratch"
echo "$(ls "$out" | wc -l) wheels in $out, $(du -sh "$out" | cut -f1)"
