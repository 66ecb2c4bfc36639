# yolo-ddp developer entry points. Everything runs from a local .venv that `make install` builds.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The DALI build's CUDA major: 13 matches the pinned torch 2.14.1 (a CUDA 13 build); CUDA=12 for a CUDA 12 torch.
CUDA   ?= 13
OTHER_DALI := nvidia-dali-cuda$(if $(filter 12,$(CUDA)),130,120)
STAMP  := $(VENV)/.installed-cuda$(CUDA)

export YOLO_OFFLINE := 1
export WANDB_SILENT := true
export PYTHONUNBUFFERED := 1

.PHONY: install train test test-fast lint format clean docker-build

# Re-install when pyproject.toml changes (stale venv), the venv is missing or CUDA changes. Both DALI builds
# install the same nvidia.dali package, so the other major's build goes first.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip uninstall -q -y $(OTHER_DALI) 2>/dev/null || true
	$(PY) -m pip install -q -e '.[dev,wandb,cuda$(CUDA)]'
	@touch $(STAMP)

install: $(STAMP)

# On a GPU machine the doctor checks driver, CUDA builds, NCCL and links first (a few seconds); a failed
# check stops here with its fix. Without nvidia-smi, train starts directly.
train: $(STAMP)
	@if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m launcher.doctor || exit 1; fi
	$(PY) -m launcher +experiment=pcb_defects $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .

# The CUDA image (docker/Dockerfile, usage in docker/README.md); needs a Docker engine, not the venv.
IMAGE ?= yolo-ddp:latest
docker-build:
	docker build -f docker/Dockerfile -t $(IMAGE) .

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
