PYTHON ?= python
# Torch on 2 CPU cores: more threads than cores only adds contention.
export OMP_NUM_THREADS ?= 1

.PHONY: install test test-fast lint format bench

install:
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e ".[dev]"

# The test command the README and CI use (slow-marked checks included).
test:
	$(PYTHON) -m pytest -n 2 --timeout 900

test-fast:
	$(PYTHON) -m pytest -n 2 -m "not slow"

lint:
	$(PYTHON) -m ruff check src tests benchmarks scripts train.py
	$(PYTHON) -m ruff format --check src tests benchmarks scripts train.py

format:
	$(PYTHON) -m ruff format src tests benchmarks scripts train.py
	$(PYTHON) -m ruff check --fix src tests benchmarks scripts train.py

bench:
	$(PYTHON) benchmarks/optimizer_step.py
