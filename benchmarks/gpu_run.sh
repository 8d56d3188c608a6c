#!/usr/bin/env bash
# The GPU run in one command, on a machine with one CUDA GPU and this repository:
#
#   WHEELS=wheelhouse WAVELET_DATA_MIRROR=/path/to/datasets bash benchmarks/gpu_run.sh [--out gpu_run]
#   GPU_RUN_TINY=1 bash benchmarks/gpu_run.sh --device cpu --out /tmp/gpu_run    # the steps, tiny, on a CPU
#
# With WHEELS set, first installs the packages the machine lacks from that folder, offline
# (benchmarks/gpu_wheels.sh builds it on a machine with a package index). Then
# benchmarks/gpu_run.py: the training and sampling benchmarks at DistilGPT2 shape and a short
# paper-scale run; figures in <out>/gpu_run.json, samples in <out>/work/data/samples.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if [ -n "${WHEELS:-}" ]; then  # the stages find this repository on PYTHONPATH: only its dependencies install
  "$PYTHON" -m pip install --quiet --no-index --no-deps "$WHEELS"/*.whl
fi
# Every module the run's stages import, checked before any step: a missing package is named in
# seconds rather than after the data stages (pydantic was, on the first H200 run).
"$PYTHON" - <<'PY'
import importlib.util, sys
needed = ["dvc", "dvclive", "hydra", "matplotlib", "numba", "numpy", "pandas", "pyarrow", "pydantic", "pywt", "rich",
          "tokenizers", "torch", "transformers", "typer", "yaml"]
missing = [name for name in needed if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"gpu_run: this Python lacks {', '.join(missing)}: add their wheels (benchmarks/gpu_wheels.sh)")
PY
args=("$@")
if [ "${GPU_RUN_TINY:-0}" = 1 ]; then args+=(--tiny); fi
exec "$PYTHON" benchmarks/gpu_run.py "${args[@]}"
