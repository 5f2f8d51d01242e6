# One-command set-up: every target creates .venv (CPU torch first, then the package) when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all test-gpu lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not gpu" -q

test-all: $(STAMP)
	$(PY) -m pytest -q

# On a machine with CUDA (torch's PyPI wheels for Linux are CUDA builds): CPU vs CUDA agreement.
test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu -q

lint: $(STAMP)
	$(VENV)/bin/ruff check tda unlearn experiments tests benchmarks
	$(VENV)/bin/ruff format --check tda unlearn experiments tests benchmarks

# Peers for side-by-side benchmarks only. kronfluence pins a torchvision that does not import
# beside this torch, and its MLP path never needs it: install it without dependencies.
$(VENV)/.bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m pip install --quiet --no-deps kronfluence==1.0.1
	$(PY) -m pip install --quiet accelerate einops einconv opt-einsum
	touch $(VENV)/.bench

bench: $(VENV)/.bench
	$(PY) -m benchmarks.bench_throughput
	$(PY) -m benchmarks.bench_trak_kernel
	$(PY) -m benchmarks.bench_lds
	$(PY) -m benchmarks.bench_methods
	$(PY) -m benchmarks.bench_fisher
	$(PY) -m benchmarks.bench_combined
	$(PY) -m benchmarks.bench_fresh_lds
	$(PY) -m benchmarks.bench_source
	$(PY) -m benchmarks.bench_ntk
	$(PY) -m benchmarks.bench_ntk_lds
	$(PY) -m benchmarks.bench_valuation
	$(PY) -m benchmarks.bench_poison

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
