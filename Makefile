# The front door: `make demo` and `make test` do all set-up themselves on a fresh
# Debian machine (packages, control-plane build cache, virtualenv) and then run.
SHELL := /bin/bash
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: setup demo demo-down test test-unit bench crds lint clean

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

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info operator/*.egg-info
