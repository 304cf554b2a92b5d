"""How fast a text model's training step could be under XLA:CPU's own matmul kernels: the step's dots alone.

Builds a "matmul skeleton" of ``benchmarks/text_models.py``'s RoBERTa-base / SmolLM2-135M-shaped model:
the same token lookup, the same projections (q, k, v, o; SmolLM2's grouped k, v), the same feed-forward
dots (RoBERTa up + down, SmolLM2 gate * up then down), residual adds and the tied LM head with the token
cross-entropy, but no LayerNorm / RMSNorm, RoPE, activation, softmax or mask. Two variants: without the
attention core (the per-head scores and values products replaced by passing q through) and with it (the
two batched products, no softmax). Times jitted forward and forward+backward of each, and the real
diffjax model in the same process, and reports each as a fraction of the measured ``jnp.dot`` peak.

What it answers: the skeleton's fwd+bwd time is a floor for any formulation of the model on this machine's
XLA:CPU (norms, softmax and activations only add to it). If torch eager's full step (from
``benchmarks/text_models.py``'s JSON, ``--torch-json``) divided by this floor is below a target ratio, no
change to the model's non-matmul parts can reach that ratio; the dots themselves would have to be faster.

    python benchmarks/matmul_floor.py [--model llama|roberta|roberta-large] [--batch 8 --length 128] [--repeats 3]
        [--torch-json benchmarks/results/text_models.json] [--json benchmarks/results/matmul_floor.json]
    python benchmarks/matmul_floor.py --tiny     # seconds-long smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine  # noqa: E402
import text_models as tm  # noqa: E402


def skeleton_params(kind: str, kw: dict, seed: int = 0) -> dict:
    """Random weights with the model's matmul shapes ([in, out] kernels, a [V, D] tied embedding)."""
    import jax.numpy as jnp
    import numpy as np

    rs = np.random.RandomState(seed)
    D, F, V, N = kw["hidden_size"], kw["intermediate_size"], kw["vocab_size"], kw["num_hidden_layers"]
    H = kw["num_attention_heads"]
    kvd = kw.get("num_key_value_heads", H) * (D // H)

    def w(*shape):
        return jnp.asarray(rs.randn(*shape).astype(np.float32) * 0.02)

    if kind.startswith("roberta"):
        layer = lambda: dict(q=w(D, D), k=w(D, D), v=w(D, D), o=w(D, D), up=w(D, F), down=w(F, D))  # noqa: E731
    else:
        layer = lambda: dict(q=w(D, D), k=w(D, kvd), v=w(D, kvd), o=w(D, D), gate=w(D, F), up=w(D, F),  # noqa: E731
                             down=w(F, D))
    return {"embed": w(V, D), "layers": [layer() for _ in range(N)]}


def skeleton_logits(params, ids, kind: str, kw: dict, attention_core: bool):
    """ids [B, L] -> logits [B, L, V] through the model's dots only (see the module docstring)."""
    import jax.numpy as jnp

    B, L = ids.shape
    D, H = kw["hidden_size"], kw["num_attention_heads"]
    hd = D // H
    KV = kw.get("num_key_value_heads", H)
    x = params["embed"][ids].reshape(B * L, D)
    for p in params["layers"]:
        q = (x @ p["q"]).reshape(B, L, KV, H // KV, hd)
        if attention_core:
            k, v = (x @ p["k"]).reshape(B, L, KV, hd), (x @ p["v"]).reshape(B, L, KV, hd)
            scores = jnp.einsum("blkgd,bskd->bkgls", q, k)
            a = jnp.einsum("bkgls,bskd->blkgd", scores, v).reshape(B * L, D)
        else:  # k, v still computed (their dots are the model's) and folded in so they are not dead code
            k, v = x @ p["k"], x @ p["v"]
            a = q.reshape(B * L, D) + jnp.tile(k + v, (1, D // k.shape[1]))
        x = x + a @ p["o"]
        f = (x @ p["gate"]) * (x @ p["up"]) if "gate" in p else x @ p["up"]
        x = x + f @ p["down"]
    return (x @ params["embed"].T).reshape(B, L, -1)


def _time(fn, repeats):
    import jax

    jax.block_until_ready(fn())
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama", choices=tm.MODELS)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-model", action="store_true", help="skip timing the real diffjax model (needs torch)")
    ap.add_argument("--torch-json", default=_machine.default_json_path("text_models"),
                    help="text_models.py JSON with torch's step time for the same model (ceiling ratio)")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json", default=_machine.default_json_path("matmul_floor"))
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    info = _machine.machine_info()
    _machine.print_machine(info)
    kw = tm.hf_kwargs(args.model, args.tiny)
    B, L = args.batch, args.length
    ids, labels = tm.batch(kw, B, L)
    x, y = jnp.asarray(ids), jnp.asarray(labels)
    n = 512 if args.tiny else _machine.default_matmul_n(info["jax_backend"])
    peak = _machine.jnp_matmul_peak(n)
    gflop = tm.model_flops(args.model, kw, B, L) / 1e9
    row = {"model": args.model, "batch": B, "length": L, "gflop_fwd": gflop, "peak_jnp_dot_flops": peak}

    def timed(name, logits_fn, params):
        fwd, grad = jax.jit(logits_fn), jax.jit(jax.value_and_grad(tm.token_ce_loss(logits_fn)))
        row[f"{name}_fwd_s"] = _time(lambda: fwd(params, x), args.repeats)
        row[f"{name}_fwdbwd_s"] = _time(lambda: grad(params, x, y), args.repeats)
        for what, mult in (("fwd", 1), ("fwdbwd", 3)):
            row[f"{name}_{what}_frac_peak"] = mult * gflop * 1e9 / row[f"{name}_{what}_s"] / peak
        print(f"  {name:24s} fwd {row[f'{name}_fwd_s'] * 1e3:8.1f} ms ({row[f'{name}_fwd_frac_peak']:.0%} of jnp.dot "
              f"peak)  fwd+bwd {row[f'{name}_fwdbwd_s'] * 1e3:8.1f} ms ({row[f'{name}_fwdbwd_frac_peak']:.0%})",
              flush=True)

    print(f"\n[{args.model}] {B}x{L} fp32, {gflop:.1f} GFLOP fwd; jnp.dot {n}^2 peak {peak / 1e9:.1f} GFLOP/s")
    params = skeleton_params(args.model, kw)
    timed("dots_without_attention", lambda p, t: skeleton_logits(p, t, args.model, kw, False), params)
    timed("dots_with_attention", lambda p, t: skeleton_logits(p, t, args.model, kw, True), params)
    if not args.no_model:
        model, mparams = tm.random_diffjax_model(args.model, kw)
        model_logits, _ = tm.step_functions(model)
        timed("diffjax_model", model_logits, mparams)
    torch_row = None
    if args.torch_json and os.path.exists(args.torch_json):
        with open(args.torch_json) as f:
            saved = json.load(f)
        torch_row = next((r for r in saved.get("results", []) if r.get("model") == args.model and r.get("batch") == B
                          and r.get("length") == L and abs(r.get("gflop_fwd", 0) - gflop) < 1e-6 * gflop
                          and "torch_fwdbwd_s" in r), None)  # the same sized model
    peak = max(peak, _machine.jnp_matmul_peak(n))  # re-measured: the best seen (one measurement can be low)
    for key in [k for k in row if k.endswith("_frac_peak")]:
        row[key] = row[key] * row["peak_jnp_dot_flops"] / peak
    row["peak_jnp_dot_flops"] = peak
    print(f"  jnp.dot peak, best of before and after: {peak / 1e9:.1f} GFLOP/s (fractions above are of the first "
          "measurement; the JSON's are of this one)")
    if torch_row:
        for what in ("fwd", "fwdbwd"):
            row[f"torch_{what}_s_from_json"] = torch_row[f"torch_{what}_s"]
            row[f"ceiling_{what}_ratio"] = torch_row[f"torch_{what}_s"] / row[f"dots_with_attention_{what}_s"]
        print(f"  torch eager (from {args.torch_json}, another run): fwd {torch_row['torch_fwd_s'] * 1e3:.1f} ms, "
              f"fwd+bwd {torch_row['torch_fwdbwd_s'] * 1e3:.1f} ms -> the most torch/diffjax can be with these dots: "
              f"fwd {row['ceiling_fwd_ratio']:.2f}x, fwd+bwd {row['ceiling_fwdbwd_ratio']:.2f}x")
    if args.json:
        _machine.write_json(args.json, {"benchmark": "matmul_floor", "results": [row]}, info)
    return row


if __name__ == "__main__":
    main()
