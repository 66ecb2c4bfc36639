# yolo-ddp developer entry points. Everything runs from a local .venv that `make install` builds.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export YOLO_OFFLINE := 1
export WANDB_SILENT := true
export PYTHONUNBUFFERED := 1

.PHONY: install train test test-fast lint format clean docker-build

# Re-install when pyproject.toml changes (stale venv) or the venv is missing.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
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
