# Two entry points: `make run` (start the service) and `make test` (lint + import floors + tests).
# Each creates its own virtualenv in .venv and installs what it needs.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
# torch/torchvision pinned to the builds this machine installs from disk (see README).
TORCH_PINS = torch==2.14.1 torchvision==0.29.1

HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint bench clean browser postgres-server

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

# The state tests run on SQLite and on a real PostgreSQL server: Debian's `postgresql` package is
# installed when its server binaries are missing (the tests find initdb under
# /usr/lib/postgresql/*/bin and run it as the `postgres` user when run as root).
POSTGRES_BIN = $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb) $(shell command -v initdb))

postgres-server:
	@if [ -z "$(POSTGRES_BIN)" ]; then \
		echo "installing Debian's postgresql package (the tests start their own server)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	fi

browser:
	@test -x "$(CHROMIUM)" || { echo "installing chromium for the browser tests (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; } \
	  || echo "WARNING: chromium could not be installed: the browser tests will be skipped"; }

test: $(VENV)/.installed-test postgres-server browser
	$(BIN)/ruff check featurizer classifiers retrieval service tests benchmarks
	$(BIN)/ruff format --check featurizer classifiers retrieval service tests benchmarks
	$(BIN)/hadolint Dockerfile
	$(BIN)/lint-imports
	DECAF_TEST_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/extract_throughput.py
	$(BIN)/python benchmarks/probe_fit.py
	$(BIN)/python benchmarks/service_load.py
	$(BIN)/python benchmarks/tsne.py
	$(BIN)/python benchmarks/retrieval.py

clean:
	rm -rf $(VENV) .pytest_cache

# The GPU machine (device tool; Python 3.12 with its own torch/torchvision, no network) lacks the
# web stack: download those wheels here, for cp312, into .whl/ (git-ignored), then run
# benchmarks/gpu_run.sh there with `.whl` carried. Versions: the ones this project is tested with.
GPU_WHEELS = fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.4 \
	pydantic-core==2.50.5 pydantic-settings==2.16.3 python-multipart==0.0.34 sqlalchemy==2.1.9 \
	greenlet==3.5.6 annotated-types==0.8.0 typing-inspection==0.4.5 python-dotenv==1.2.4 \
	typing-extensions==4.16.0 orjson==3.13.0
GPU_PLATFORMS = $(foreach p,manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
	manylinux2014_x86_64 manylinux1_x86_64,--platform $(p))

.PHONY: gpu-wheels
gpu-wheels:
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp $(GPU_PLATFORMS) -d .whl $(GPU_WHEELS)
