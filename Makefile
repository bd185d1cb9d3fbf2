# `make demo` and `make test` set up .venv from nothing, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
MIN_VENV ?= .venv-min
MIN_STAMP := $(MIN_VENV)/.installed-stamp
CONSTRAINTS := requirements/constraints.txt
BACKENDS ?= jax tensorflow torch numpy
PYTEST := $(PY) -m pytest -p no:cacheprovider -q

.PHONY: setup demo test test-backends test-nnx test-minimal lint docs docs-serve bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[all]"
	touch $(STAMP)

setup: $(STAMP)

# The demo's saved model is portable: its fresh-process reload runs in
# $(MIN_VENV), where only keras and jax are installed.
demo: setup $(MIN_STAMP)
	KERAS_BACKEND=jax $(VENV)/bin/jaxlayer demo --reload-python $(MIN_VENV)/bin/python

# The docs site is built strictly first (a broken link, a missing API page
# or an unparsable docstring fails), then one pytest process per Keras
# backend (Keras reads KERAS_BACKEND once; tests/test_docs.py runs the
# pages' examples on jax), then Keras's NNX mode, then an environment with
# only keras + jax.
test: setup lint docs test-backends test-nnx test-minimal

# Portable files saved in .venv are also loaded in $(MIN_VENV) (keras + jax only).
test-backends: setup $(MIN_STAMP)
	@set -e; for backend in $(BACKENDS); do \
	  echo "=== pytest, KERAS_BACKEND=$$backend ==="; \
	  KERAS_BACKEND=$$backend JAXLAYER_MIN_PYTHON=$(CURDIR)/$(MIN_VENV)/bin/python $(PYTEST) tests; \
	done
	KERAS_BACKEND=jax $(PYTEST) --doctest-modules src/jaxlayer

test-nnx: setup
	@echo "=== pytest, KERAS_BACKEND=jax KERAS_NNX_ENABLED=true ==="
	KERAS_BACKEND=jax KERAS_NNX_ENABLED=true $(PYTEST) tests -m nnx_mode

$(MIN_STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q --upgrade pip
	$(MIN_VENV)/bin/python -m pip install -q -c $(CONSTRAINTS) -e . pytest
	touch $(MIN_STAMP)

test-minimal: $(MIN_STAMP)
	@echo "=== pytest in $(MIN_VENV): only keras + jax installed ==="
	KERAS_BACKEND=jax $(MIN_VENV)/bin/python -m pytest -p no:cacheprovider -q tests/minimal_env

# ruff, then basedpyright in standard mode over src/ ([tool.basedpyright] in pyproject.toml).
lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples docs
	$(VENV)/bin/basedpyright --pythonpath $(PY)

# The documentation site (mkdocs.yml, docs/) into site/; strict: any warning fails.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --strict

# `make bench BENCH_ARGS="--quick --check"`: --check exits non-zero on a missed target.
BENCH_ARGS ?=
bench: setup
	KERAS_BACKEND=jax $(VENV)/bin/jaxlayer bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(MIN_VENV) .pytest_cache site
