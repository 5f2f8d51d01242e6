# One-command set-up: every target creates .venv (CPU torch first, then the package) when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) experiments/demo.py

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not gpu" -q

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check tda unlearn experiments tests benchmarks
	$(VENV)/bin/ruff format --check tda unlearn experiments tests benchmarks

$(VENV)/.bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	touch $(VENV)/.bench

bench: $(VENV)/.bench
	$(PY) -m benchmarks.bench_throughput
	$(PY) -m benchmarks.bench_lds

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
