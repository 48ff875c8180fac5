# Two commands for a newcomer:  `make demo`  and  `make test`.
# Each creates ./.venv on first use and installs what it needs into it.
#
# Installs go through uv (bootstrapped into the venv with pip; ~5 s for everything against ~40 s for pip), with
# pip as the fallback where uv cannot be had.  One exception: the test extra's pinned CPU PyTorch is installed
# by pip first, from the pin in pyproject.toml, because pip finds the local CPU build where uv would resolve a
# multi-GB CUDA build; uv then sees it installed and keeps it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
LINTED := $(wildcard src tests benchmarks)
# the extras `make test` installs (comma-separated, as pip writes them)
TEST_EXTRAS ?= test,docs
# e.g. torch==2.13.0: the first pinned torch of pyproject.toml, empty if there is none
TORCH_PIN := $(shell sed -n 's/^[[:space:]]*"\(torch==[^"; ]*\)".*/\1/p' pyproject.toml | head -n 1)

# install $(1) into the venv: with uv if it is there and succeeds, else with pip
install = if [ -x $(UV) ] && $(UV) pip install -q --python $(BIN)/python $(1); then :; \
          else $(BIN)/python -m pip install -q $(1); fi

.PHONY: demo test lint bench clean docs docs-serve

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# uv itself; if it cannot be installed (an offline machine without its wheel), pip does the installs
$(VENV)/.uv: | $(BIN)/python
	$(BIN)/python -m pip install -q uv || echo "uv not available: installing with pip"
	touch $@

# runtime dependencies only
$(VENV)/.runtime: pyproject.toml | $(VENV)/.uv
	$(call install,-e .)
	touch $@

# runtime + test dependencies (pinned CPU torch, pytest, hypothesis, ruff, ...)
$(VENV)/.test: pyproject.toml | $(VENV)/.uv
ifneq ($(TORCH_PIN),)
	$(BIN)/python -m pip install -q --no-deps "$(TORCH_PIN)"
endif
	$(call install,-e ".[$(TEST_EXTRAS)]")
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

# the documentation site, into ./site; --strict: a broken link, a missing page or a failing tutorial cell fails
docs: $(VENV)/.test
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

docs-serve: $(VENV)/.test
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs serve

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
