# Two set-up commands: `make demo` and `make test`. Both create/refresh ./.venv from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The stamp changes whenever pyproject.toml changes, so a pin bump reinstalls.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install test test-unit test-service demo serve bench bench-gpu clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS) tests

# Plain classes, no Ray cluster: about a minute.
test-unit: install
	$(PY) -m pytest $(PYTEST_ARGS) tests/unit

test-service: install
	$(PY) -m pytest $(PYTEST_ARGS) tests/service

demo: install
	$(VENV)/bin/lipserve demo

serve: install
	$(VENV)/bin/lipserve serve --config configs/local.yaml

# Every CPU bench; table on stdout, JSON in bench/results/<date>-<machine>.json (~6-8 min, 2 cores).
bench: install
	$(PY) bench/run_all.py

# The GPU set (one H200: < 10 min); fails fast without a GPU.
bench-gpu: install
	bash bench/gpu.sh

clean:
	rm -rf $(VENV) var .pytest_cache
