# The README's two commands: `make demo` and `make test`. Each creates or refreshes .venv from the pins.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= workdirs/demo
PYTEST_ARGS ?=
# Test files run on this many processes (pytest-xdist, whole files per worker so module fixtures build once).
PYTEST_WORKERS ?= 2

.PHONY: demo test venv clean bench eval-example

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

# The lm-evaluation-harness example tasks on a trained text run (WORKDIR), in a separate .venv-eval with the
# `eval` extra's pins (requirements-eval.txt): `make eval-example WORKDIR=workdirs/rdm`.
EVAL_VENV := .venv-eval
EVAL_STAMP := $(EVAL_VENV)/.installed
EVAL_TASKS ?= $(EVAL_VENV)/tasks

$(EVAL_STAMP): requirements.txt requirements-test.txt requirements-data.txt requirements-eval.txt pyproject.toml
	test -x $(EVAL_VENV)/bin/python || $(PYTHON) -m venv $(EVAL_VENV)
	$(EVAL_VENV)/bin/python -m pip install -q --upgrade pip
	$(EVAL_VENV)/bin/python -m pip install -q -r requirements.txt -r requirements-test.txt -r requirements-eval.txt
	$(EVAL_VENV)/bin/python -m pip install -q --no-deps -r requirements-data.txt
	$(EVAL_VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(EVAL_STAMP)

eval-example: $(EVAL_STAMP)
	$(EVAL_VENV)/bin/python -m diffjax.evaluation.lm_eval make-tasks --out $(EVAL_TASKS)
	HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 $(EVAL_VENV)/bin/python -m diffjax.evaluation.lm_eval run --model diffjax \
		--model_args workdir=$(WORKDIR) --tasks diffjax_headline_mc,diffjax_headline_unshuffle,diffjax_headline_ppl \
		--include_path $(EVAL_TASKS)

clean:
	rm -rf $(VENV) workdirs .pytest_cache
