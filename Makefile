# The two commands of the README. Each sets up everything on a fresh machine first.
#   make test   - lint and the full test suite
#   make demo   - a whole validation run on a simulated phantom study (CELLS=DIR: real cells)
# The virtual environment lives in .venv; torch is pinned to the local CPU build first so that
# installing the project never pulls a multi-GB CUDA build.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.wbcv-installed
TORCH := torch==2.13.0
CELLS ?=
DEMO_OUT ?= demo-out

.PHONY: setup test lint demo bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(PY) -m ruff check .

test: setup lint
	$(PY) -m pytest

demo: setup
	$(PY) -m fixtures.demo $(if $(CELLS),--cells $(CELLS)) --out $(DEMO_OUT)

bench: setup
	$(PY) benchmarks/bench_infer.py $(if $(CELLS),--cells $(CELLS))

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache .hypothesis
