# The front door: `make demo` and `make test` do all set-up themselves on a fresh
# Debian machine (packages, control-plane build cache, virtualenv) and then run.
SHELL := /bin/bash
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: setup demo demo-down test test-unit bench crds lock lint clean

setup:
	@bash hack/setup.sh

demo: setup
	@bash hack/demo.sh

demo-down:
	@$(VENV)/bin/flywheel dev down --name flywheel

test: setup
	@$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-unit: setup
	@$(VENV)/bin/python -m pytest -m unit $(PYTEST_ARGS)

# An alert storm end to end on a local control plane of its own (docs/benchmarks.md).
bench: setup
	@$(VENV)/bin/python bench/e2e_throughput.py $(BENCH_ARGS)

crds: setup
	@$(VENV)/bin/flywheel crds --output-dir crds

# Exact, hashed versions for setup, CI and the image; run after changing pyproject.toml's
# dependencies (tests/unit/test_dependency_lock.py fails until the lock agrees with it).
LOCK_FLAGS := --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
lock: setup
	@$(VENV)/bin/pip-compile $(LOCK_FLAGS) -o requirements/runtime.txt pyproject.toml
	@$(VENV)/bin/pip-compile $(LOCK_FLAGS) --extra test --extra dev -o requirements/test.txt pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info operator/*.egg-info
