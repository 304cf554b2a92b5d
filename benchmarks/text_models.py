"""Text backbones: diffjax (jit) vs transformers PyTorch (eager), forward and forward+backward, on this machine.

Models (random weights, made with transformers and loaded into diffjax through ``load_hf_checkpoint``, so
both run the same function):
- ``roberta``: RoBERTa-base sized masked LM (12 layers, d 768, 12 heads, ffn 3072, vocab 50265), diffjax.models.bert.
- ``roberta-large``: RoBERTa-large sized (24 layers, d 1024, 16 heads, ffn 4096, vocab 50265).
- ``llama``: SmolLM2-135M sized decoder (30 layers, d 576, 9 heads / 3 KV heads, ffn 1536, vocab 49152,
  tied), diffjax.models.llama, causal mask.
Loss for the backward pass: mean token cross-entropy over the logits against random labels.

PyTorch runs in a child process that never imports JAX (XLA's CPU thread pool would otherwise compete with
torch's threads). On CPU torch gets as many threads as XLA:CPU uses (the cores this process may run on,
``os.sched_getaffinity``; ``--torch-threads`` overrides): the headline ratio is at equal threads; torch's
forward at 1 thread is reported as an extra number. When JAX's default backend is a GPU, torch runs on
CUDA if it can (else its side is skipped with a note). ``--dtype bfloat16``: diffjax params + compute in
bf16 (``load_hf_checkpoint(dtype=...)``), torch ``model.to(bfloat16)``.
Reports median wall time per call, the ratio torch / diffjax (> 1: diffjax faster), and achieved FLOP/s
(analytic matmul FLOPs: 2 x tokens x matmul params + attention scores/values + LM head; backward = 2 x
forward) as a fraction of this machine's measured matmul FLOP/s (a big ``jnp.dot`` / ``torch.matmul`` at
``--dtype``, ``benchmarks/_machine.py``). Prints the machine first; writes JSON (default
``benchmarks/results/text_models.json``, ``--json`` to change) with the machine block, both peaks, the rows.

    python benchmarks/text_models.py [--batch 8 --length 128 --repeats 3 --models roberta,llama --dtype float32]
    python benchmarks/text_models.py --tiny     # seconds-long smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # on a GPU: leave memory to the torch child
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import subprocess  # noqa: E402

import numpy as np  # noqa: E402

import _machine  # noqa: E402


def timeit(fn, repeats):
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up (compilation) call."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first


def model_flops(kind, c, B, L):
    """Analytic forward matmul FLOPs for a batch [B, L] (projections, attention scores + values, LM head)."""
    T = B * L
    D, F, N, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    if kind.startswith("roberta"):
        per_layer = 4 * D * D + 2 * D * F
        head = D * D + D * V
    else:
        kv = c["num_key_value_heads"] * (D // c["num_attention_heads"])
        per_layer = 2 * D * D + 2 * D * kv + 3 * D * F
        head = D * V
    attn = 2 * B * L * L * D
    return N * (2 * T * per_layer + 2 * attn) + 2 * T * head


MODELS = ("roberta", "roberta-large", "llama")


def hf_kwargs(kind, tiny):
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; one of {MODELS}")
    if kind.startswith("roberta"):
        kw = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)
        if kind == "roberta-large":
            kw.update(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
        if tiny:
            kw.update(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    else:
        kw = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, rope_theta=100000.0,
                  rms_norm_eps=1e-5, max_position_embeddings=8192)
        if tiny:
            kw.update(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    return kw


def random_hf_model(kind, kw, seed=0):
    """The transformers model of ``kind`` with random weights (eager attention), in eval mode."""
    import torch
    import transformers

    torch.manual_seed(seed)
    if kind.startswith("roberta"):
        return transformers.RobertaForMaskedLM(transformers.RobertaConfig(**kw, attn_implementation="eager")).eval()
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw, attn_implementation="eager")).eval()


def load_diffjax(kind, model_dir, **kwargs):
    """(Flax module, params) from a saved HF checkpoint of ``kind`` (RoBERTa with its MLM head)."""
    from diffjax.checkpoints.hf import load_hf_checkpoint

    return load_hf_checkpoint(model_dir, **(dict(mlm_head=True) if kind.startswith("roberta") else {}), **kwargs)


def random_diffjax_model(kind, kw, model_dir=None):
    """(Flax module, params) of a random ``random_hf_model`` saved to ``model_dir`` (a temporary dir if None)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        d = model_dir or tmp
        random_hf_model(kind, kw).save_pretrained(d)
        return load_diffjax(kind, d)


def token_ce_loss(logits_fn):
    """loss_fn(p, x, y): the mean token cross-entropy of ``logits_fn(p, x)`` [B, L, V] against y [B, L], the
    loss every diffjax text loss is built from."""
    import jax.numpy as jnp

    from diffjax.diffusion.masked import token_log_probs

    def loss_fn(p, x, y):
        return -jnp.mean(token_log_probs(logits_fn(p, x), y))

    return loss_fn


def step_functions(model):
    """(logits_fn(p, x) -> [B, L, V], ``token_ce_loss(logits_fn)``) for a diffjax text model."""

    def logits_fn(p, x):
        out = model.apply({"params": p}, x)
        return out["logits"] if isinstance(out, dict) else out

    return logits_fn, token_ce_loss(logits_fn)


def batch(kw, B, L):
    rs = np.random.RandomState(0)
    return rs.randint(3, kw["vocab_size"], (B, L)), rs.randint(0, kw["vocab_size"], (B, L))


def torch_worker(kind, tiny, B, L, repeats, model_dir, out_json, threads, dtype, want_gpu):
    """Child process: build + save the HF model (fp32), time PyTorch eager at ``dtype`` with ``threads`` threads
    (on CUDA when ``want_gpu`` and CUDA is available), write timings and reference logits.
    ``want_gpu`` without CUDA: only build + save the model (``torch_skipped`` says why)."""
    import torch

    kw = hf_kwargs(kind, tiny)
    tm = random_hf_model(kind, kw)
    tm.save_pretrained(model_dir)
    res = {"torch_version": torch.__version__}
    if want_gpu and not torch.cuda.is_available():
        res["torch_skipped"] = "JAX runs on a GPU but torch has no CUDA here: torch side skipped"
        with open(out_json, "w") as f:
            json.dump(res, f)
        return
    device = "cuda" if want_gpu else "cpu"
    if device == "cuda":  # float32 matmuls in TF32 as XLA:GPU does by default (recorded in the JSON)
        res["torch_float32_matmul_precision"] = _machine.torch_cuda_fp32_like_jax()
    torch.set_num_threads(threads)
    tdt = getattr(torch, dtype)
    tm = tm.to(device=device, dtype=tdt)
    ids, labels = batch(kw, B, L)
    tx, ty = torch.tensor(ids, device=device), torch.tensor(labels, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def fwd():
        with torch.no_grad():
            out = tm(tx).logits
        sync()
        return out

    def fwdbwd():
        tm.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(tm(tx).logits.reshape(-1, kw["vocab_size"]), ty.reshape(-1))
        loss.backward()
        sync()
        return loss

    np.save(os.path.join(model_dir, "ref_logits.npy"), fwd().float().cpu().numpy())
    res.update(torch_device=device, torch_cuda_device=torch.cuda.get_device_name(0) if device == "cuda" else None,
               torch_threads=threads)
    n = 512 if tiny else _machine.default_matmul_n("cpu" if device == "cpu" else "gpu")
    if device == "cpu" and threads != 1:
        # extra number only (the headline is at equal threads): torch's forward at 1 thread (on a shared machine
        # torch's OpenMP barriers can make several threads much slower than 1)
        torch.set_num_threads(1)
        fwd()
        res["torch_fwd_s_1thread"], _ = timeit(fwd, max(1, min(repeats, 2)))
        torch.set_num_threads(threads)
    res["torch_matmul_flops"] = _machine.torch_matmul_peak(n, dtype=dtype, device=device)
    res["torch_fwd_s"], _ = timeit(fwd, repeats)
    res["torch_fwdbwd_s"], _ = timeit(fwdbwd, repeats)
    with open(out_json, "w") as f:
        json.dump(res, f)


def bench(kind, args, workdir, on_gpu, threads):
    """Torch in a child process, then diffjax here on the same saved weights."""
    import jax
    import jax.numpy as jnp

    d, out = os.path.join(workdir, kind), os.path.join(workdir, f"{kind}_torch.json")
    subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-worker", kind, "--model-dir", d,
                    "--worker-json", out, "--batch", str(args.batch), "--length", str(args.length),
                    "--repeats", str(args.repeats), "--torch-threads", str(threads), "--dtype", args.dtype]
                   + (["--tiny"] if args.tiny else []) + (["--worker-gpu"] if on_gpu else []), check=True)
    with open(out) as f:
        res = json.load(f)
    has_torch = "torch_fwd_s" in res
    kw = hf_kwargs(kind, args.tiny)
    model, params = load_diffjax(kind, d, dtype=jnp.dtype(args.dtype))
    B, L = args.batch, args.length
    ids, labels = batch(kw, B, L)
    logits_fn, loss_fn = step_functions(model)
    fwd = jax.jit(logits_fn)
    grad = jax.jit(jax.value_and_grad(loss_fn))
    x, y = jnp.asarray(ids), jnp.asarray(labels)
    t0 = time.perf_counter()
    res.update(model=kind, batch=B, length=L, dtype=args.dtype)
    logits = np.asarray(fwd(params, x).astype(jnp.float32))
    if has_torch:  # correctness guard: both compute the same function
        ref = np.load(os.path.join(d, "ref_logits.npy"))
        res["max_abs_logit_diff"] = float(np.abs(logits - ref).max())
    res["jax_fwd_s"], _ = timeit(lambda: fwd(params, x).block_until_ready(), args.repeats)
    res["jax_fwd_compile_s"] = time.perf_counter() - t0 - res["jax_fwd_s"] * (args.repeats + 1)
    res["jax_fwdbwd_s"], res["jax_fwdbwd_compile_s"] = timeit(
        lambda: jax.block_until_ready(grad(params, x, y)), args.repeats)
    f = model_flops(kind, kw, B, L)
    res["gflop_fwd"] = f / 1e9
    for what in ("fwd", "fwdbwd"):
        fws = ("jax", "torch") if has_torch else ("jax",)
        if has_torch:
            res[f"{what}_speedup_vs_torch"] = res[f"torch_{what}_s"] / res[f"jax_{what}_s"]
        for fw in fws:
            res[f"{fw}_{what}_gflops"] = (3 if what == "fwdbwd" else 1) * f / res[f"{fw}_{what}_s"] / 1e9
    try:
        res["xla_flops_fwd_gflop"] = fwd.lower(params, x).compile().cost_analysis()["flops"] / 1e9
    except Exception:  # noqa: BLE001 (cost analysis is backend-dependent)
        pass
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="roberta,llama", help=f"comma-separated, of {','.join(MODELS)}")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="diffjax params + compute dtype; torch model.to(dtype)")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch threads (default: the cores XLA:CPU uses, os.sched_getaffinity)")
    ap.add_argument("--tiny", action="store_true", help="tiny configs (smoke run)")
    ap.add_argument("--json", "--out", dest="json", default=_machine.default_json_path("text_models"),
                    help="write the results here (default benchmarks/results/text_models.json)")
    ap.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-gpu", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.torch_worker:
        return torch_worker(args.torch_worker, args.tiny, args.batch, args.length, args.repeats, args.model_dir,
                            args.worker_json, args.torch_threads or _machine.usable_cores(), args.dtype, args.worker_gpu)
    import jax

    models = args.models.split(",")
    for kind in models:
        hf_kwargs(kind, args.tiny)  # unknown names fail before anything runs
    info = _machine.machine_info()
    on_gpu = info["jax_backend"] == "gpu"
    threads = args.torch_threads or info["xla_cpu_threads"]
    info["torch_num_threads"] = threads
    _machine.print_machine(info)
    print(f"torch: child process, {threads} thread(s) (= XLA:CPU's {info['xla_cpu_threads']}"
          + (", set by --torch-threads" if args.torch_threads else "") + ")"
          + ("; on CUDA if available (JAX is on the GPU)" if on_gpu else "") + f"; dtype {args.dtype}", flush=True)
    n = 512 if args.tiny else _machine.default_matmul_n(info["jax_backend"])
    peak = _machine.jnp_matmul_peak(n, args.dtype)
    results, errors = [], []

    def payload():
        return {"benchmark": "text_models", "dtype": args.dtype, "matmul_n": n, "peak_jnp_dot_flops": peak,
                "peak_torch_matmul_flops": max([r["torch_matmul_flops"] for r in results if "torch_matmul_flops" in r],
                                               default=None),
                "torch_threads": threads, "results": results, "errors": errors}

    with tempfile.TemporaryDirectory() as workdir:
        for kind in models:
            try:
                results.append(bench(kind, args, workdir, on_gpu, threads))
            except Exception as e:  # noqa: BLE001 (one model failing, e.g. out of memory, must not lose the others)
                errors.append({"model": kind, "error": f"{type(e).__name__}: {e}"[:2000]})
                print(f"[{kind}] FAILED: {errors[-1]['error']}", flush=True)
            peak = max(peak, _machine.jnp_matmul_peak(n, args.dtype))  # re-measured after each model: the best seen
            if args.json:  # written after each model too, so a run stopped by a timeout keeps what it measured
                _machine.write_json(args.json, {**payload(), "partial": True}, info)
    torch_peaks = [r["torch_matmul_flops"] for r in results if "torch_matmul_flops" in r]
    peak_torch = max(torch_peaks) if torch_peaks else None
    print(f"devices: {jax.devices()}  cpus: {os.cpu_count()} (usable {info['usable_cores']})")
    print(f"matmul {n}^2 {args.dtype} (best seen): jnp.dot {peak / 1e9:.1f} GFLOP/s, torch.matmul "
          + (f"{peak_torch / 1e9:.1f} GFLOP/s" if peak_torch else "-") + f"; load average now {os.getloadavg()[0]:.1f}")
    for r in results:
        for key in [k for k in r if k.endswith("_gflops")]:
            r[key.replace("_gflops", "_frac_peak")] = r[key] * 1e9 / peak
        torch_desc = (f"torch {r.get('torch_device', 'cpu')} threads {r['torch_threads']} (fwd at 1 thread: "
                      f"{r['torch_fwd_s_1thread'] * 1e3:.1f} ms)" if "torch_fwd_s_1thread" in r else
                      f"torch {r.get('torch_device', '-')} threads {r.get('torch_threads', '-')}")
        if "torch_float32_matmul_precision" in r:
            torch_desc += f", float32 matmul precision {r['torch_float32_matmul_precision']!r} (XLA:GPU's TF32)"
        print(f"\n[{r['model']}] batch {r['batch']}x{r['length']} {r['dtype']}, {r['gflop_fwd']:.1f} GFLOP fwd "
              f"(XLA count {r.get('xla_flops_fwd_gflop', float('nan')):.1f}); "
              f"|logits diff| {r.get('max_abs_logit_diff', float('nan')):.1e}; {torch_desc}")
        if "torch_skipped" in r:
            print(f"  note: {r['torch_skipped']}")
        for what in ("fwd", "fwdbwd"):
            line = f"  {what:7s} diffjax {r[f'jax_{what}_s'] * 1e3:8.1f} ms ({r[f'jax_{what}_frac_peak']:.0%} of jnp.dot peak)"
            if f"torch_{what}_s" in r:
                line += (f"  torch {r[f'torch_{what}_s'] * 1e3:8.1f} ms ({r[f'torch_{what}_frac_peak']:.0%})"
                         f"  torch/diffjax = {r[f'{what}_speedup_vs_torch']:.2f}x (equal threads: {r['torch_threads']})")
            print(line + f"  [jit compile {r[f'jax_{what}_compile_s']:.1f} s]")
    if args.json:
        _machine.write_json(args.json, payload(), info)
    if errors and argv is None:
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
