# adgen-stack: `make` lists the targets. Each target's comment after `##` is its help line.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; on a CUDA machine set TORCH_SPEC=torch (or install torch first).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# torch's OpenMP threads spin while waiting by default; on a busy 2-core machine that made a decode
# step 4 to 10 times slower (measured by `make bench`). Passive waiting costs nothing measurable.
export OMP_WAIT_POLICY ?= PASSIVE
# make eval: the real ADGEN dev split, the lines held out per model, and optional adapters to compare.
ADGEN_DEV ?= ../shared/data/AdvertiseGen/dev.json
EVAL_DATASET ?= adgen_dev
EVAL_SAMPLES ?= 100
EVAL_ADAPTERS ?=

.PHONY: help install test lint format data eval bench dev demo clean

help: ## Show this list of targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with its dev tools

test: $(STAMP) ## Run the test suite (needs redis-server; the browser test needs chromium)
	$(BIN)/python -m pytest -q

lint: $(STAMP) ## Run ruff (lint and format check) and mypy
	$(BIN)/ruff check shared services tests benchmarks
	$(BIN)/ruff format --check shared services tests benchmarks
	$(BIN)/mypy

format: $(STAMP) ## Format the code with ruff
	$(BIN)/ruff check --fix shared services tests benchmarks
	$(BIN)/ruff format shared services tests benchmarks

data: $(STAMP) ## Download the full ADGEN dataset into data/AdvertiseGen/
	$(BIN)/python -m shared.data.download

eval: $(STAMP) ## Print the ADGEN table: the held-out experiment, or Original vs EVAL_ADAPTERS on EVAL_DATASET
ifeq ($(strip $(EVAL_ADAPTERS)),)
	$(BIN)/adgen benchmark --protocol heldout --dev_file $(ADGEN_DEV) --samples $(EVAL_SAMPLES)
else
	$(BIN)/adgen benchmark --dataset $(EVAL_DATASET) --adapters $(EVAL_ADAPTERS) --samples $(EVAL_SAMPLES)
endif

bench: $(STAMP) ## Measure speed targets side by side; writes docs/benchmarks.md
	$(BIN)/python -m benchmarks.run

dev: $(STAMP) ## Run Redis, both workers and the API as local processes (Ctrl-C stops all)
	$(BIN)/adgen dev

demo: $(STAMP) ## Train, evaluate and stream an ad on the bundled sample with a local stack
	$(BIN)/python -m shared.demo

clean: ## Remove the virtual environment and caches (keeps volumes/)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
