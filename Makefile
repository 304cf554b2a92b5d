# The README's two commands: `make demo` and `make test`. Each creates or refreshes .venv from the pins.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= workdirs/demo
PYTEST_ARGS ?=
# Test files run on this many processes (pytest-xdist, whole files per worker so module fixtures build once).
PYTEST_WORKERS ?= 2

.PHONY: demo test venv clean bench bench-report eval-example

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

# The benchmarks with the arguments BENCHMARKS.md / README quote (the same list as MAKE_BENCH in
# benchmarks/report.py; a test checks they agree), each writing benchmarks/results/<name>.json, then
# BENCHMARKS.md from that JSON (and from benchmarks/results/gpu/, or GPU_DIR, where a GPU run left its JSON:
# `bash benchmarks/gpu.sh OUTDIR` on a GPU machine). text_models runs before matmul_floor, which reads its JSON.
# Not run here: cache_demo.py (needs a trained workdir), ab_step.py / profile_step.py (tools, no JSON),
# text_ood_probe.py (a diagnostic), init_from_shards.py (prints only: per-shard vs whole init_from load);
# BENCHMARKS.md renders their JSON where it exists.
GPU_DIR ?=
REPORT_ARGS = $(if $(GPU_DIR),--gpu_dir $(GPU_DIR),)

bench: $(STAMP)
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/text_models.py --repeats 3
	$(PY) benchmarks/matmul_floor.py --model llama --json benchmarks/results/matmul_floor_llama.json
	$(PY) benchmarks/matmul_floor.py --model roberta --json benchmarks/results/matmul_floor_roberta.json
	$(PY) benchmarks/dlsr_throughput.py --batch 16 --iters 3 --variants lite0,b4
	$(PY) benchmarks/generation.py --models=minilm --lengths=256 --batch=2 --steps=48 --repeats=1 --decoders=topk,thr,thr:none,thr:prefix,thr:dual
	$(PY) benchmarks/compile_scan.py --family bert --layers 24
	$(PY) benchmarks/ar_vs_diffusion.py --lengths 16 32 64 --batches 1 4
	$(PY) benchmarks/text_ood_scoring.py
	$(PY) benchmarks/text_data.py
	$(PY) benchmarks/report.py $(REPORT_ARGS)

# BENCHMARKS.md again from the JSON already in benchmarks/results/ (no benchmark runs).
bench-report: $(STAMP)
	$(PY) benchmarks/report.py $(REPORT_ARGS)

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
