# The two set-up commands: `make train` (the default training run) and `make test`.
# Each creates the virtualenv .venv on first use and installs what it needs into it.
PYTHON ?= python3
# The CPU build of torch, from this machine's disk. Set TORCH= to keep a torch you already have.
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: train test test-quick notebook

$(VENV)/installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(BIN)/python -m pip install -q "$(TORCH)")
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

train: $(VENV)/installed
	$(BIN)/nin train --preset fast

test: $(VENV)/installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest

# the quick tier for day-to-day work: no test that starts a process of its own
test-quick: $(VENV)/installed
	$(BIN)/python -m pytest -m "not slow"

# the seed chapter as a notebook (notebooks/nin.ipynb), opened in JupyterLab: installs the notebook extra first
notebook: $(VENV)/installed
	$(BIN)/python -m pip install -q -e ".[notebook]"
	$(BIN)/jupyter lab notebooks/nin.ipynb
