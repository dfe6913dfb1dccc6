# posenfs: the two commands of the README, and a few helpers.
#   make demo   set up (once) and run the quickstart: campaign → promote → retrain → controls
#   make test   set up (once) and run the test suite (what CI runs)
# Both create .venv on first use; re-running them re-installs only when pyproject.toml changed.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
ROOT    ?= ./posenfs-runs

# Ray binds to the machine's routable address. Where user namespaces are allowed, Ray (the tests,
# the demo, the campaign benchmark) runs in a network namespace that has only loopback, so every
# Ray address is 127.0.0.1 and nothing leaves the machine; elsewhere it runs as it is.
NETNS := $(shell unshare -rn true 2>/dev/null && echo yes)
ifeq ($(NETNS),yes)
  LOOPBACK = unshare -rn sh -c 'ip link set lo up && $(1)'
else
  LOOPBACK = sh -c '$(1)'
endif

.PHONY: demo test test-slow test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(call LOOPBACK,$(BIN)/posenfs search experiments/quickstart.yaml --root $(ROOT) \
	  && $(BIN)/posenfs promote experiments/quickstart.yaml --root $(ROOT) \
	  && $(BIN)/posenfs retrain experiments/retrain_quickstart.yaml --root $(ROOT) \
	     --genotype models:/posenfs-synthetic-genotypes@champion \
	  && $(BIN)/posenfs controls experiments/quickstart.yaml --root $(ROOT) \
	     --retrain experiments/retrain_quickstart.yaml --random 1 --seeds 2)
	@echo "see it all: $(BIN)/posenfs ui --root $(ROOT)  (MLflow UI on http://127.0.0.1:5000)"

# The suite CI runs: every test but those marked slow (minutes of search each, or a path CI
# covers through a shorter test; pytest reports them as deselected). `make test-slow` runs those.
# Two pytest-xdist workers: one runs the Ray integration tests in turn (they mostly wait on Ray),
# the other the rest, a file at a time (tests/conftest.py, pytest_itemcollected).
test: $(STAMP)
	$(call LOOPBACK,RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" -n 2 --dist loadgroup --durations=25 tests)

test-slow: $(STAMP)
	$(call LOOPBACK,RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q -p no:cacheprovider -m slow tests)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not ray and not slow" tests/unit

lint: $(STAMP)
	$(BIN)/ruff check nfs_orchestrator tests benchmarks
	$(BIN)/ruff format --check nfs_orchestrator tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/supernet_step.py
	$(BIN)/python benchmarks/parts_batched.py --threads 1
	$(BIN)/python benchmarks/data_pipeline.py
	$(call LOOPBACK,$(BIN)/python benchmarks/campaign_overhead.py)
	$(call LOOPBACK,$(BIN)/python benchmarks/campaign_overhead.py --workers 1 --trials 3)

clean:
	rm -rf $(VENV) $(ROOT) .pytest_cache
