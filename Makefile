# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv and install the project (pinned by constraints.txt) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BROWSER := $(VENV)/.browser

.PHONY: demo test test-fast chaos bench lint typecheck check clean install

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/bootstrap.sh
	PYTHON=$(PYTHON) bash scripts/bootstrap.sh $(VENV)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sora-worker demo

# The suite runs in parallel (pytest-xdist): each worker process has its own embedded
# PostgreSQL and free ports, and most of a test's time is waiting, so 4 processes fit
# this 2-core machine. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 4
test: $(STAMP) $(BROWSER)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=10

# The inner loop: everything but the slow tests (wheel builds, the demo, chaos).
test-fast: $(STAMP) $(BROWSER)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow"

$(BROWSER): scripts/browser.sh | $(STAMP)
	bash scripts/browser.sh
	touch $(BROWSER)

# An operator's worst night in a few minutes (bench/chaos.py): SIGKILLed replicas,
# PostgreSQL restarts, cut connections, provider and storage faults. Exits 1 on any
# violation. Another night: make chaos CHAOS_ARGS="--seed 7".
CHAOS_ARGS ?=
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

# The worker's speed beside PgQueuer, same database, same run (bench/run.py): a table
# with ratios to the yardstick, and bench/results.json. A few minutes; not part of test.
bench: $(STAMP)
	$(BIN)/python -m bench.run

lint: $(STAMP)
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict service

check: lint typecheck test

clean:
	rm -rf $(VENV) .sora-worker .pytest_cache .mypy_cache .ruff_cache
