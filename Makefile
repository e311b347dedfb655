# Targets create .venv if missing and install into it. Plain `pip install torch` brings the standard build.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test test-all bench bench-speed lint docs venv clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## the main job on the embedded default data set (scikit-learn's digits): IMP next to a learned supermask
demo: $(STAMP)
	$(BIN)/python -m ticketsearch find --method imp --dataset digits --density 0.1 --controls reinit --root runs/demo --no-progress
	$(BIN)/python -m ticketsearch find --method supermask --dataset digits --density 0.5 --then-train --root runs/demo --no-progress

## the default test suite (CPU, < 10 minutes); exit 5 (no tests collected) is a failure. One thread per
## process: the tests run many tiny ops, where a second OpenMP thread only adds contention.
test: $(STAMP)
	OMP_NUM_THREADS=1 TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	OMP_NUM_THREADS=1 TRITON_INTERPRET=1 $(BIN)/python -m pytest -q

## the quick suite (every method against IMP on digits, MNIST-1D and MNIST; about an hour on 2 cores) into
## benchmarks/results/quick/ (resumable: rerun after an interruption); the speed scripts are bench-speed
bench: $(STAMP)
	$(BIN)/python -m ticketsearch bench --suite quick --root benchmarks/runs --out benchmarks/results/quick --data-root $${TICKETSEARCH_DATA:-../shared/datasets} --workers 2

bench-speed: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

## ruff (lint + format check) on everything, mypy on core/sparse/training (config: pyproject.toml), and the
## documentation site in strict mode (a dead link, a broken page or a generated page that fails is an error)
lint: $(STAMP)
	$(BIN)/ruff check ticketsearch tests benchmarks examples docs
	$(BIN)/ruff format --check ticketsearch tests benchmarks examples docs
	$(BIN)/mypy
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

## the documentation site (MkDocs, Material theme) into build/site; the command pages come from the parsers
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf runs/demo .pytest_cache
