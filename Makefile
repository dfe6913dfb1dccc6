# posenfs: the two commands of the README, and a few helpers.
#   make demo   set up (once) and run the quickstart campaign on the embedded default
#   make test   set up (once) and run the test suite (what CI runs)
# Both create .venv on first use; re-running them re-installs only when pyproject.toml changed.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
ROOT    ?= ./posenfs-runs
# Tests that start Ray run in a network namespace that has only loopback, so every Ray
# address is 127.0.0.1 and no test traffic can leave the machine.
LOOPBACK := unshare -rn sh -c

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/posenfs search experiments/quickstart.yaml --root $(ROOT)

test: $(STAMP)
	$(LOOPBACK) 'ip link set lo up && RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q -p no:cacheprovider tests'

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not ray and not slow" tests/unit

lint: $(STAMP)
	$(BIN)/ruff check nfs_orchestrator tests benchmarks
	$(BIN)/ruff format --check nfs_orchestrator tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/supernet_step.py
	$(BIN)/python benchmarks/data_pipeline.py
	$(LOOPBACK) 'ip link set lo up && $(BIN)/python benchmarks/campaign_overhead.py'

clean:
	rm -rf $(VENV) $(ROOT) .pytest_cache
