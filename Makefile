# rnnrepro: `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TIER ?= smoke
PAPER ?= all
JOBS ?= 1
LAUNCHER ?= local
EXPERIMENTS ?=
# glibc: keep freed memory instead of returning it to the OS after every large tensor. nn.LSTM on CPU otherwise
# page-faults on each step (results/bench/cpu-malloc.md: 221 -> 93 ms per step). Set for run, reproduce-tables and
# bench only; tests run with the machine's own setting.
FAST_MALLOC := MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296

.PHONY: help setup run test test-full lint bench reproduce-tables clean

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed ## create .venv and install the project with its dev extras (idempotent)

run: setup ## the default job: python run.py (model=sbo dataset=pmnist)
	$(FAST_MALLOC) $(PY) run.py

test: setup ## the fast test suite (the one CI runs)
	$(PY) -m pytest -q

test-full: setup ## every test, the slow ones included
	$(PY) -m pytest -q -m ""

lint: setup ## ruff
	$(VENV)/bin/ruff check .

bench: setup ## time every cell beside nn.LSTM, the online algorithms against n, the recipes (layers/dropout, denormals, allocator) and the stable-model projections; writes results/bench/
	$(FAST_MALLOC) $(PY) scripts/bench.py
	$(FAST_MALLOC) $(PY) scripts/bench_online.py
	$(FAST_MALLOC) $(PY) scripts/bench_recipes.py
	$(FAST_MALLOC) $(PY) scripts/bench_stable.py

reproduce-tables: setup ## run (or reuse) the runs of the paper tables and render results/<paper>/<table>.md [TIER=smoke|reduced|full] [PAPER=...] [EXPERIMENTS=patterns] [JOBS=N] [LAUNCHER=local|slurm] [SLURM_ARGS=...] [ARGS=overrides]
	$(FAST_MALLOC) $(PY) scripts/reproduce_tables.py --tier $(TIER) --paper $(PAPER) --jobs $(JOBS) --launcher $(LAUNCHER) $(if $(SLURM_ARGS),--slurm-args "$(SLURM_ARGS)") $(ARGS) $(if $(EXPERIMENTS),--experiments $(EXPERIMENTS))

clean: ## remove run outputs (not results/)
	rm -rf outputs multirun runs
