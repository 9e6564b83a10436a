# Two entry points: `make run` (start the service) and `make test` (lint + import floors + tests).
# Each creates its own virtualenv in .venv and installs what it needs.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
# torch/torchvision pinned to the builds this machine installs from disk (see README).
TORCH_PINS = torch==2.14.1 torchvision==0.29.1

HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint bench clean browser

# The page's browser tests drive the system Chromium (Playwright cannot download its own
# offline). Installed with apt when missing; if that is impossible the tests skip and say why.
CHROMIUM ?= $(shell command -v chromium || command -v chromium-browser || echo /usr/bin/chromium)

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

browser:
	@test -x "$(CHROMIUM)" || { echo "installing chromium for the browser tests (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; } \
	  || echo "WARNING: chromium could not be installed: the browser tests will be skipped"; }

test: $(VENV)/.installed-test browser
	$(BIN)/ruff check featurizer classifiers service tests benchmarks
	$(BIN)/hadolint Dockerfile
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/extract_throughput.py
	$(BIN)/python benchmarks/probe_fit.py
	$(BIN)/python benchmarks/service_load.py
	$(BIN)/python benchmarks/tsne.py

clean:
	rm -rf $(VENV) .pytest_cache
