#!/usr/bin/env bash
# Builds the wheelhouse a GPU machine without a package index needs for benchmarks/gpu_run.sh:
# every package this project installs that the GPU image lacks, as wheels. Source-only packages
# (dvc's nanotime, for one) are built into wheels here. Run it on an x86_64 Linux machine with a
# package index; TARGET_PYTHON names the GPU image's Python when it differs from this machine's
# (3.12 on the H200s lent here, 2026-12), so compiled packages come as wheels for that version:
#
#   TARGET_PYTHON=3.12 bash benchmarks/gpu_wheels.sh wheelhouse
#
# It resolves what to carry in a scratch venv holding the image's packages (image_packages below:
# those this project needs that the image holds), and leaves out what the GPU run never imports:
# torch-fidelity and torchvision (evaluation runs on any other machine; torchvision must match the
# image's torch) and diffusers (the diffusion baseline). The scratch venv has the newest versions
# of the image's packages, whose requirements can be newer than the image's (typer's newest needs
# pydantic; the image's typer does not, so a wheelhouse resolved only that way lacked pydantic on
# the H200, 2026-12-04): so every package this project requires directly and the image lacks
# comes with all its requirements but torch's and the image's. It prints the folder's size: the
# device tool carries at most 64 MiB, the datasets included (MNIST's four files: 11 MiB).
# Measured 2026-12-04 (x86_64 here, TARGET_PYTHON=3.12): 96 wheels, 29 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-wheelhouse}
# torch first: pinned below to the version nearest the image's that installs here.
image_packages=(torch transformers numpy pandas pyarrow numba scipy typer rich pyyaml tokenizers pillow matplotlib)
scratch=$(mktemp -d)
python3 -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install --quiet "${TORCH_PIN:-torch==2.14.1}" "${image_packages[@]:1}"
"$scratch/venv/bin/pip" install --quiet --dry-run --report "$scratch/report.json" .
"$scratch/venv/bin/pip" install --quiet --dry-run --ignore-installed --report "$scratch/closure.json" .
"$scratch/venv/bin/python" - "$scratch/report.json" "$scratch/closure.json" "${image_packages[@]}" > "$scratch/missing.txt" <<'PY'
import json, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as name_of

missing, closure, image = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), set(map(name_of, sys.argv[3:]))
never_imported = {"torchvision", "torch-fidelity", "diffusers", "wavelet-ar"}  # by the GPU run
carry = {name_of(i["metadata"]["name"]): i["metadata"]["version"] for i in missing["install"]}
graph, versions, project = {}, {}, None
for item in closure["install"]:
    meta = item["metadata"]
    needs = [Requirement(r) for r in meta.get("requires_dist", [])]
    graph[name_of(meta["name"])] = {name_of(r.name) for r in needs if not r.marker or r.marker.evaluate({"extra": ""})}
    versions[name_of(meta["name"])] = meta["version"]
    if name_of(meta["name"]) == "wavelet-ar":
        project = graph[name_of(meta["name"])]


def reach(names):
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in seen and name in graph:
            seen.add(name)
            todo += graph[name]
    return seen


# The scratch venv holds the image's packages at their newest versions, whose requirements can be
# newer than the image's (typer came to need pydantic): whatever this project requires directly
# and the image is not known to hold comes with its own requirements, less torch's.
for name in reach(project - image - never_imported) - reach(["torch"]) - image:
    carry.setdefault(name, versions[name])
for name, version in sorted(carry.items()):
    if name not in never_imported:
        print(f"{name}=={version}")
PY
mkdir -p "$out"
target=${TARGET_PYTHON:-$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
# The resolution above ran on this machine's Python: each package comes as the target's binary
# wheel where one exists, else (a source-only, pure-Python package) is built into a wheel here.
while read -r requirement; do
  "$scratch/venv/bin/pip" download --quiet --no-deps --only-binary=:all: --python-version "$target" \
      --implementation cp "${platforms[@]}" -d "$out" "$requirement" 2>/dev/null \
    || "$scratch/venv/bin/pip" wheel --quiet --no-deps -w "$out" "$requirement"
done < "$scratch/missing.txt"
if ls "$out" | grep -vE -- "-(none-any|cp${target/./}-[^-]+-[^-]+|abi3-[^-]+)\.whl$"; then
  echo "the wheels above are not for Python $target on x86_64 Linux" >&2
  exit 1
fi
rm -rf "$scratch"
echo "$(ls "$out" | wc -l) wheels in $out, $(du -sh "$out" | cut -f1)"
