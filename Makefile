# The two set-up commands: `make train` (the default training run) and `make test`.
# Each creates the virtualenv .venv on first use and installs what it needs into it.
PYTHON ?= python3
# The CPU build of torch, from this machine's disk. Set TORCH= to keep a torch you already have.
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
# two pytest-xdist workers, each test module in one of them (its module-wide fixtures made once), each computing
# on its share of the cores (tests/conftest.py): on 2 cores 302 s where one process took 457 (docs/design.md#tests)
XDIST := -n 2 --dist loadscope --max-worker-restart=0

.PHONY: train test test-quick test-oldest notebook system

# pip compiles every installed module one file after another; instead install with --no-compile and compile them
# on every core afterwards (a fresh .venv: 58 s instead of 82, docs/design.md). What does not compile on this Python
# (torch ships a test helper in 3.12 syntax) stays uncompiled, as under pip.
COMPILE = -c "import compileall, sys, sysconfig; compileall.compile_dir(sysconfig.get_path('purelib'), quiet=2, workers=0)"

$(VENV)/installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(BIN)/python -m pip install -q --no-compile "$(TORCH)")
	$(BIN)/python -m pip install -q --no-compile -e ".[dev]"
	$(BIN)/python $(COMPILE)
	touch $@

train: $(VENV)/installed
	$(BIN)/nin train --preset fast

test: $(VENV)/installed system
	$(BIN)/ruff check src tests benchmarks hubconf.py
	$(BIN)/ruff format --check src tests benchmarks hubconf.py
	$(BIN)/python -m pytest $(XDIST)

# What some tests drive, from Debian, installed where missing (CI runs as root on Debian): chromium and chromedriver
# for the browser test of nin serve (tests/serve/test_serve.py), qemu-user for int8 on an emulated AVX2-only CPU
# (tests/inference/test_export.py). Elsewhere, without root, those tests skip unless NIN_REQUIRE_SYSTEM is set.
system:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	command -v qemu-x86_64 >/dev/null || missing="$$missing qemu-user"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "make: missing$$missing and not root: the tests that need them will be skipped"; fi; \
	fi

# the quick tier for day-to-day work: no test that starts a process of its own or takes over ~1.5 s on AVX2 paths
test-quick: $(VENV)/installed
	$(BIN)/python -m pytest $(XDIST) -m "not slow"

# the floors: nin with every dependency at its declared minimum (requirements-oldest.txt), in a virtualenv of its
# own, through the quick tier; torch is $(TORCH), the one CPU build this machine has (docs/design.md#floors)
OLDEST := .venv-oldest
test-oldest:
	rm -rf $(OLDEST) && $(PYTHON) -m venv $(OLDEST)  # afresh: what pip resolves beside the floors is today's
	$(OLDEST)/bin/python -m pip install -q --no-compile -c requirements-oldest.txt $(if $(TORCH),"$(TORCH)") -e ".[dev,notebook]"
	$(OLDEST)/bin/python $(COMPILE)
	$(OLDEST)/bin/python -m pip check
	$(OLDEST)/bin/python -m pytest $(XDIST) -m "not slow" -p no:cacheprovider

# the seed chapter as a notebook (notebooks/nin.ipynb), opened in JupyterLab: installs the notebook extra first
notebook: $(VENV)/installed
	$(BIN)/python -m pip install -q -e ".[notebook]"
	$(BIN)/jupyter lab notebooks/nin.ipynb
