"""Text backbones: diffjax (jit) vs transformers PyTorch (eager), forward and forward+backward, on this machine.

Models (random weights, made with transformers and loaded into diffjax through ``load_hf_checkpoint``, so
both run the same function):
- ``roberta``: RoBERTa-base sized masked LM (12 layers, d 768, 12 heads, ffn 3072, vocab 50265), diffjax.models.bert.
- ``llama``: SmolLM2-135M sized decoder (30 layers, d 576, 9 heads / 3 KV heads, ffn 1536, vocab 49152,
  tied), diffjax.models.llama, causal mask.
Loss for the backward pass: mean token cross-entropy over the logits against random labels.

PyTorch runs in a child process that never imports JAX (XLA's CPU thread pool would otherwise compete with
torch's threads). Reports median wall time per call, the ratio torch / diffjax (> 1: diffjax faster), and achieved FLOP/s
(analytic matmul FLOPs: 2 x tokens x matmul params + attention scores/values + LM head; backward = 2 x
forward) as a fraction of this machine's measured matmul FLOP/s (a big float32 ``jnp.dot``).

    python benchmarks/text_models.py [--batch 8 --length 128 --repeats 3 --models roberta,llama]
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

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import subprocess  # noqa: E402

import numpy as np  # noqa: E402


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


def best_matmul_flops(matmul, n, repeats=10):
    """Best-of-``repeats`` FLOP/s of ``matmul()`` ([n, n] @ [n, n]): what the hardware can do (on a shared
    machine the median mostly measures the other processes)."""
    matmul()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def jax_matmul_flops(n):
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return best_matmul_flops(lambda: f(a).block_until_ready(), n)


def model_flops(kind, c, B, L):
    """Analytic forward matmul FLOPs for a batch [B, L] (projections, attention scores + values, LM head)."""
    T = B * L
    D, F, N, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    if kind == "roberta":
        per_layer = 4 * D * D + 2 * D * F
        head = D * D + D * V
    else:
        kv = c["num_key_value_heads"] * (D // c["num_attention_heads"])
        per_layer = 2 * D * D + 2 * D * kv + 3 * D * F
        head = D * V
    attn = 2 * B * L * L * D
    return N * (2 * T * per_layer + 2 * attn) + 2 * T * head


def hf_kwargs(kind, tiny):
    if kind == "roberta":
        kw = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)
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


def batch(kw, B, L):
    rs = np.random.RandomState(0)
    return rs.randint(3, kw["vocab_size"], (B, L)), rs.randint(0, kw["vocab_size"], (B, L))


def torch_worker(kind, tiny, B, L, repeats, model_dir, out_json):
    """Child process: build + save the HF model, time PyTorch eager, write timings and reference logits."""
    import torch
    import transformers

    torch.manual_seed(0)
    kw = hf_kwargs(kind, tiny)
    if kind == "roberta":
        tm = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**kw, attn_implementation="eager")).eval()
    else:
        tm = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw, attn_implementation="eager")).eval()
    tm.save_pretrained(model_dir)
    ids, labels = batch(kw, B, L)
    tx, ty = torch.tensor(ids), torch.tensor(labels)

    def fwd():
        with torch.no_grad():
            return tm(tx).logits

    def fwdbwd():
        tm.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(tm(tx).logits.reshape(-1, kw["vocab_size"]), ty.reshape(-1))
        loss.backward()
        return loss

    np.save(os.path.join(model_dir, "ref_logits.npy"), fwd().numpy())
    # Thread count: the faster of 1 and torch's default on this model's forward (on a shared machine torch's
    # OpenMP barriers can make 2 threads 100x slower than 1; we report torch at its best).
    speed = {}
    for th in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(th)
        fwd()
        speed[th], _ = timeit(fwd, 2)
    torch.set_num_threads(min(speed, key=speed.get))
    n = 512 if tiny else 2048
    a = torch.randn(n, n)
    res = {"torch_threads": torch.get_num_threads(), "torch_matmul_flops": best_matmul_flops(lambda: a @ a, n),
           "torch_fwd_s_by_threads": speed}
    res["torch_fwd_s"], _ = timeit(fwd, repeats)
    res["torch_fwdbwd_s"], _ = timeit(fwdbwd, repeats)
    with open(out_json, "w") as f:
        json.dump(res, f)


def bench(kind, args, workdir):
    """Torch in a child process, then diffjax here on the same saved weights."""
    import jax
    import jax.numpy as jnp

    from diffjax.checkpoints.hf import load_hf_checkpoint
    from diffjax.diffusion.masked import token_log_probs

    d, out = os.path.join(workdir, kind), os.path.join(workdir, f"{kind}_torch.json")
    subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-worker", kind, "--model-dir", d,
                    "--worker-json", out, "--batch", str(args.batch), "--length", str(args.length),
                    "--repeats", str(args.repeats)] + (["--tiny"] if args.tiny else []), check=True)
    with open(out) as f:
        res = json.load(f)
    kw = hf_kwargs(kind, args.tiny)
    model, params = load_hf_checkpoint(d, **(dict(mlm_head=True) if kind == "roberta" else {}))
    B, L = args.batch, args.length
    ids, labels = batch(kw, B, L)
    if kind == "roberta":
        logits_fn = lambda p, x: model.apply({"params": p}, x)["logits"]  # noqa: E731
    else:
        logits_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731

    def loss_fn(p, x, y):  # the token cross-entropy every diffjax text loss is built from
        return -jnp.mean(token_log_probs(logits_fn(p, x), y))

    fwd = jax.jit(logits_fn)
    grad = jax.jit(jax.value_and_grad(loss_fn))
    x, y = jnp.asarray(ids), jnp.asarray(labels)
    t0 = time.perf_counter()
    ref = np.load(os.path.join(d, "ref_logits.npy"))  # correctness guard: both compute the same function
    res.update(model=kind, batch=B, length=L, max_abs_logit_diff=float(np.abs(np.asarray(fwd(params, x)) - ref).max()))
    res["jax_fwd_s"], _ = timeit(lambda: fwd(params, x).block_until_ready(), args.repeats)
    res["jax_fwd_compile_s"] = time.perf_counter() - t0 - res["jax_fwd_s"] * (args.repeats + 1)
    res["jax_fwdbwd_s"], res["jax_fwdbwd_compile_s"] = timeit(
        lambda: jax.block_until_ready(grad(params, x, y)), args.repeats)
    f = model_flops(kind, kw, B, L)
    res["gflop_fwd"] = f / 1e9
    for what in ("fwd", "fwdbwd"):
        res[f"{what}_speedup_vs_torch"] = res[f"torch_{what}_s"] / res[f"jax_{what}_s"]
        for fw in ("jax", "torch"):
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
    ap.add_argument("--models", default="roberta,llama")
    ap.add_argument("--tiny", action="store_true", help="tiny configs (smoke run)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.torch_worker:
        return torch_worker(args.torch_worker, args.tiny, args.batch, args.length, args.repeats, args.model_dir,
                            args.worker_json)
    import jax

    n = 512 if args.tiny else 2048
    peak = jax_matmul_flops(n)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for kind in args.models.split(","):
            results.append(bench(kind, args, workdir))
            peak = max(peak, jax_matmul_flops(n))  # re-measured after each model: the best seen
    peak_torch = max(r["torch_matmul_flops"] for r in results)
    print(f"devices: {jax.devices()}  cpus: {os.cpu_count()}")
    print(f"matmul {n}^2 fp32 (best seen): jnp.dot {peak / 1e9:.1f} GFLOP/s, torch.matmul "
          f"{peak_torch / 1e9:.1f} GFLOP/s; load average now {os.getloadavg()[0]:.1f}")
    for r in results:
        for key in [k for k in r if k.endswith("_gflops")]:
            r[key.replace("_gflops", "_frac_peak")] = r[key] * 1e9 / peak
        print(f"\n[{r['model']}] batch {r['batch']}x{r['length']}, {r['gflop_fwd']:.1f} GFLOP fwd "
              f"(XLA count {r.get('xla_flops_fwd_gflop', float('nan')):.1f}); |logits diff| {r['max_abs_logit_diff']:.1e}; "
              f"torch threads {r['torch_threads']} (fwd s by threads {r['torch_fwd_s_by_threads']})")
        for what in ("fwd", "fwdbwd"):
            print(f"  {what:7s} diffjax {r[f'jax_{what}_s'] * 1e3:8.1f} ms ({r[f'jax_{what}_frac_peak']:.0%} of jnp.dot peak)"
                  f"  torch {r[f'torch_{what}_s'] * 1e3:8.1f} ms ({r[f'torch_{what}_frac_peak']:.0%})"
                  f"  torch/diffjax = {r[f'{what}_speedup_vs_torch']:.2f}x"
                  f"  [jit compile {r[f'jax_{what}_compile_s']:.1f} s]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peak_jnp_dot_flops": peak, "peak_torch_matmul_flops": peak_torch, "results": results}, f,
                      indent=2)
    return results


if __name__ == "__main__":
    main()
