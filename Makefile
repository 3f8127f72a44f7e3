# rnnrepro: `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TIER ?= smoke
PAPER ?= all

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
	$(PY) run.py

test: setup ## the fast test suite (the one CI runs)
	$(PY) -m pytest -q

test-full: setup ## every test, the slow ones included
	$(PY) -m pytest -q -m ""

lint: setup ## ruff
	$(VENV)/bin/ruff check .

bench: setup ## time every cell beside nn.LSTM, then the online algorithms (TBPTT/UORO/KF-RTRL/OK/RTRL) against n; writes results/bench/
	$(PY) scripts/bench.py
	$(PY) scripts/bench_online.py

reproduce-tables: setup ## run (or reuse) the runs of the paper tables and render results/<paper>/<table>.md [TIER=smoke|full] [PAPER=...]
	$(PY) scripts/reproduce_tables.py --tier $(TIER) --paper $(PAPER)

clean: ## remove run outputs (not results/)
	rm -rf outputs multirun runs
