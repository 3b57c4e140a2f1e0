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

# System programs: Debian's Chromium prints report.pdf and runs the dashboard's browser tests
# (never a downloaded browser); poppler-utils (pdftotext, pdftoppm) lets the tests read the PDF.
SYSTEM_PACKAGES := chromium poppler-utils fonts-dejavu-core

.PHONY: setup system test lint demo bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

system:
	@if command -v chromium >/dev/null && command -v pdftotext >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing $(SYSTEM_PACKAGES) with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	elif sudo -n true 2>/dev/null; then \
		echo "installing $(SYSTEM_PACKAGES) with sudo apt-get"; \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	else \
		echo "make: Chromium and poppler-utils are needed (report PDF, browser tests); install them:" >&2; \
		echo "  sudo apt-get install $(SYSTEM_PACKAGES)" >&2; exit 1; \
	fi

setup: $(STAMP) system

# mypy checks the installed layout: .typecheck/wbcv links the top-level folders in as
# wbcv.inference, wbcv.validation, ... (pyproject's package-dir, which mypy cannot follow).
TYPECHECK := .typecheck/wbcv

lint: setup
	$(PY) -m ruff check .
	rm -rf .typecheck && mkdir -p $(TYPECHECK)
	for layer in inference validation dashboards fixtures; do ln -s ../../$$layer $(TYPECHECK)/$$layer; done
	for part in __init__.py cli.py base; do ln -s ../../wbcv/$$part $(TYPECHECK)/$$part; done
	$(PY) -m mypy $(TYPECHECK)

test: setup lint
	$(PY) -m pytest

demo: setup
	$(PY) -m wbcv.fixtures.demo $(if $(CELLS),--cells $(CELLS)) --out $(DEMO_OUT)

bench: setup
	$(PY) benchmarks/bench_infer.py $(if $(CELLS),--cells $(CELLS))

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache .hypothesis .mypy_cache .typecheck
