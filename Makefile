PYTHON ?= python
# Torch on 2 CPU cores: more threads than cores only adds contention.
export OMP_NUM_THREADS ?= 1

.PHONY: run install test test-fast lint format bench doc-tables tables figures reproduce-small check-runs

# `make run` and `make test` install what they need on their first call and only run after
# that. The stamp is per interpreter (a new virtualenv installs again), and editing
# pyproject.toml makes it stale. `make install` installs again regardless.
EXTRAS := dev,eval,baselines,logging,slurm
STAMP := build/.installed-$(shell $(PYTHON) -c "import hashlib, sys; print(hashlib.sha1(sys.prefix.encode()).hexdigest()[:12])")

# torch first, pinned: an unpinned torch may pull gigabytes of CUDA wheels. A torch that is
# already installed (say the CUDA build you chose) is kept.
$(STAMP): pyproject.toml
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e ".[$(EXTRAS)]"
	@mkdir -p $(@D) && touch $@

install:
	@rm -f $(STAMP)
	@$(MAKE) --no-print-directory $(STAMP)

# The embedded default (a tiny GPT on a generated corpus, CPU) trained twice, AdamW and
# AlphaAdam at once, then a comparison table and a loss figure of the two run directories
# (RUN_ARGS: Hydra overrides for both runs).
run: $(STAMP)
	$(PYTHON) -m alphaadam.results.quickstart $(RUN_ARGS)

# The test command the README and CI use (slow-marked checks included; PYTEST_ARGS: extra args).
test: $(STAMP)
	$(PYTHON) -m pytest -n 2 --timeout 900 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PYTHON) -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PYTHON) -m ruff check src tests benchmarks scripts train.py
	$(PYTHON) -m ruff format --check src tests benchmarks scripts train.py

format: $(STAMP)
	$(PYTHON) -m ruff format src tests benchmarks scripts train.py
	$(PYTHON) -m ruff check --fix src tests benchmarks scripts train.py

bench: $(STAMP)
	$(PYTHON) benchmarks/optimizer_step.py

# The README/docs tables that quote results/benchmarks/*.json, rewritten from those files.
doc-tables:
	$(PYTHON) scripts/doc_tables.py

# Paper tables/figures from every run dir under $(RESULTS) (docs/results.md).
RESULTS ?= results
tables: $(STAMP)
	$(PYTHON) scripts/make_tables.py --root $(RESULTS) $(TABLE_ARGS)

figures: $(STAMP)
	$(PYTHON) scripts/make_figures.py --root $(RESULTS) $(FIGURE_ARGS)

# The reduced-scale reproduction (docs/reproduction.md): every run of the reduced Tables 1-3
# on this machine (resumable: completed runs are skipped, interrupted ones continue), then the
# tables and figures. TABLES="table3" for some tables, DRY_RUN=1 for the plan alone,
# STUDY_ARGS="--launcher slurm hydra.launcher.partition=cpu" for SLURM. Reads ../shared/data
# (ALPHAADAM_DATA=DIR for another place).
STUDY_STAMP := $(STAMP)-study
$(STUDY_STAMP): $(STAMP)
	$(PYTHON) -m pip install -e ".[$(EXTRAS),study]"
	@touch $@

reproduce-small: $(STUDY_STAMP)
	$(PYTHON) scripts/reproduce_small.py $(if $(TABLES),--tables $(TABLES)) $(if $(DRY_RUN),--dry-run) $(STUDY_ARGS)
	$(if $(DRY_RUN),,$(PYTHON) scripts/make_tables.py --root $(RESULTS) && $(PYTHON) scripts/make_figures.py --root $(RESULTS))

# Does HEAD still reproduce the committed runs? A sample (one run per study and commit) re-run
# for CHECK_STEPS steps from each run's own config.yaml, compared value by value; exits 1 past
# the tolerance (scripts/check_runs.py). Writes results/check_runs.md.
CHECK_STEPS ?= 50
check-runs: $(STAMP)
	$(PYTHON) scripts/check_runs.py --steps $(CHECK_STEPS) --report results/check_runs.md $(CHECK_ARGS)

# One SLURM sweep per paper result (docs/slurm.md): `make sweep-table1 DRY_RUN=1` prints the
# jobs without submitting; SWEEP_ARGS takes Hydra overrides (hydra.launcher.partition=gpu ...).
SWEEPS := sweep-table1 sweep-table2 sweep-table3 sweep-figure2 sweep-smoke
.PHONY: $(SWEEPS)
$(SWEEPS): $(STAMP)
	$(PYTHON) scripts/sweep.py $(patsubst sweep-%,%,$@) $(if $(DRY_RUN),--dry-run) $(SWEEP_ARGS)
