# imgsim-lab: two commands do everything — `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.imgsim-installed
APT_STAMP := $(VENV)/.imgsim-system
PYTEST_ARGS ?=

.PHONY: demo test lint app venv system experiments notebooks help

help:
	@echo "make demo   - run the default CIFAR-10 experiment (5,000 database / 1,000 queries)"
	@echo "make demo FULL=1 - the full CIFAR-10 protocol (50k database / 10k queries)"
	@echo "make experiments - run experiments/cifar10_models.yaml and cifar10_index.yaml"
	@echo "make test   - set up .venv and system packages, then run the whole test suite"
	@echo "make app    - serve the search app as a web page with Voila"
	@echo "make lint   - ruff, import layers (import-linter), dead code (vulture)"

venv: $(STAMP)

# (Re)install only when the project's declared dependencies change.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (imgsim-lab)" >/dev/null
	@touch $(STAMP)

# System packages the tests need: redis-server (the Redis protocol peer) and
# headless Chromium for the browser test. Installed with apt-get when missing.
system: $(APT_STAMP)

$(APT_STAMP): scripts/install_system_deps.sh | $(STAMP)
	bash scripts/install_system_deps.sh
	@touch $(APT_STAMP)

# ruff, the import layers (import-linter) and dead code (vulture, with vulture_allowlist.py)
LINT = $(PY) -m ruff check imgsim_lab tests scripts && $(VENV)/bin/lint-imports pyproject.toml \
	&& $(VENV)/bin/vulture imgsim_lab scripts tests vulture_allowlist.py --min-confidence 60

test: $(STAMP) $(APT_STAMP)
	$(LINT)
	$(PY) -m pytest $(PYTEST_ARGS)

# make demo          - default CIFAR-10 experiment (5,000 database / 1,000 queries)
# make demo FULL=1   - full protocol (50,000 database / 10,000 queries)
demo: $(STAMP)
	$(PY) scripts/demo.py $(if $(FULL),--full) $(DEMO_ARGS)

experiments: $(STAMP)
	$(PY) scripts/run_experiments.py experiments/cifar10_models.yaml experiments/cifar10_index.yaml

notebooks: $(STAMP)
	$(PY) scripts/make_notebooks.py

app: $(STAMP)
	$(VENV)/bin/imgsim app

lint: $(STAMP)
	$(LINT)
