PYTHON ?= python
# Torch on 2 CPU cores: more threads than cores only adds contention.
export OMP_NUM_THREADS ?= 1

.PHONY: install test test-fast lint format bench doc-tables tables figures

install:
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e ".[dev,eval,baselines,logging,slurm]"

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

# The README/docs tables that quote results/benchmarks/*.json, rewritten from those files.
doc-tables:
	$(PYTHON) scripts/doc_tables.py

# Paper tables/figures from every run dir under $(RESULTS) (docs/results.md).
RESULTS ?= results
tables:
	$(PYTHON) scripts/make_tables.py --root $(RESULTS) $(TABLE_ARGS)

figures:
	$(PYTHON) scripts/make_figures.py --root $(RESULTS) $(FIGURE_ARGS)

# One SLURM sweep per paper result (docs/slurm.md): `make sweep-table1 DRY_RUN=1` prints the
# jobs without submitting; SWEEP_ARGS takes Hydra overrides (hydra.launcher.partition=gpu ...).
SWEEPS := sweep-table1 sweep-table2 sweep-table3 sweep-figure2 sweep-smoke
.PHONY: $(SWEEPS)
$(SWEEPS):
	$(PYTHON) scripts/sweep.py $(patsubst sweep-%,%,$@) $(if $(DRY_RUN),--dry-run) $(SWEEP_ARGS)
