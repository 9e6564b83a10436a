# Two entry points: `make run` (start the service) and `make test` (lint + import floors + tests).
# Each creates its own virtualenv in .venv and installs what it needs.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
# torch/torchvision pinned to the builds this machine installs from disk (see README).
TORCH_PINS = torch==2.14.1 torchvision==0.29.1

HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH_PINS) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH_PINS) -e '.[test,ray]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/decaf serve --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-test
	$(BIN)/ruff check featurizer classifiers retrieval service tests benchmarks
	$(BIN)/hadolint Dockerfile
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/extract_throughput.py
	$(BIN)/python benchmarks/probe_fit.py
	$(BIN)/python benchmarks/service_load.py
	$(BIN)/python benchmarks/retrieval.py

clean:
	rm -rf $(VENV) .pytest_cache
