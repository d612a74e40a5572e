# flowpp: the two commands of the README. Each sets up its own virtual environment on a fresh machine.
#   make demo   install (once), train a small Flow++ on the embedded digits, write bits/dim and samples
#   make test   install (once) and run every notebook's tests plus the pytest suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where no NVIDIA GPU answers, install this CPU build of torch (the version the CPU suite runs on) from the
# CPU wheel index, never the multi-GB CUDA build; with a GPU, any torch the requirements allow.
TORCH_CPU ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_GPU ?= torch>=2.4
STAMP := $(VENV)/.flowpp-installed

.PHONY: test demo install

test: $(STAMP)
	$(BIN)/python tools/run_tests.py

# 240 s of training on 2 CPU cores; the whole target (install included) stays under 10 minutes
DEMO_SECONDS ?= 240
demo: $(STAMP)
	$(BIN)/flowpp demo --out-dir runs/demo --figure figures/demo_samples.png --max-seconds $(DEMO_SECONDS)

install: $(STAMP)

$(STAMP): setup.py settings.ini
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if nvidia-smi -L >/dev/null 2>&1; then \
	  $(BIN)/python -m pip install -q "$(TORCH_GPU)"; \
	else \
	  $(BIN)/python -m pip install -q --index-url $(TORCH_CPU_INDEX) "$(TORCH_CPU)"; \
	fi
	$(BIN)/python -m pip install -q -e ".[dev]"
	@# the browser test drives Debian's chromium with Playwright (never a browser download); install it where we can
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "chromium is not installed and cannot be installed here: the browser test will be skipped"; fi; \
	fi
	touch $@
