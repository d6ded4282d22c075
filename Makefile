# imgsim-lab: two commands do everything — `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.imgsim-installed
APT_STAMP := $(VENV)/.imgsim-system
PYTEST_ARGS ?=

.PHONY: demo test lint app venv system clean-data help

help:
	@echo "make demo   - run the default end-to-end job"
	@echo "make test   - set up .venv and system packages, then run the whole test suite"
	@echo "make app    - serve the search app as a web page with Voila"
	@echo "make lint   - ruff"

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

test: $(STAMP) $(APT_STAMP)
	$(PY) -m ruff check imgsim_lab tests scripts
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) scripts/demo.py

app: $(STAMP)
	$(VENV)/bin/imgsim app

lint: $(STAMP)
	$(PY) -m ruff check imgsim_lab tests scripts
