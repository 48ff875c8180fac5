# Two commands for a newcomer:  `make demo`  and  `make test`.
# Each creates ./.venv on first use and installs what it needs into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LINTED := $(wildcard src tests benchmarks)

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# runtime dependencies only
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

# runtime + test dependencies (pinned CPU torch, pytest, hypothesis, ruff)
$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(VENV)/.runtime $@

demo: $(VENV)/.runtime
	$(BIN)/normlab demo

lint: $(VENV)/.test
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

test: lint
	# one BLAS thread per test worker: two workers on two cores, no oversubscription
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -q

bench: $(VENV)/.test
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
