"""Paper 002 decoding speed: N-step top-k confidence decoding (greedy, linear schedule, RDM re-masking),
diffjax (one jitted ``lax.scan``) vs the same loop in PyTorch around transformers' ``*ForMaskedLM`` with
the same weights, both timed in one run on this machine; peak memory (max RSS) too.

    python benchmarks/generation.py                                   # the issue's grid (slow on CPU)
    python benchmarks/generation.py --models=minilm --lengths=64 --steps=10 --batch=2

Models (random weights, saved once with transformers' ``save_pretrained`` and read by both sides):
``minilm`` = BERT 6 layers, d 384 (all-MiniLM-L6-v2's shape, vocab 30522) and ``roberta-base`` =
12 layers, d 768, vocab 50265. Each (framework, model, length) runs in its own subprocess so its
peak RSS is its own. Prompt: 16 random tokens; the target (``length`` tokens) starts all [MASK].
tokens/s = batch * length / seconds of one decode (median of ``--repeats`` after one warm-up, so
compile time is excluded and reported apart). Writes ``benchmarks/results/generation.json``.
Runtime code never imports torch; this script does (requirements-test.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

PROMPT = 16
SHAPES = {
    "minilm": dict(family="bert", vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536, mask_id=103),
    "roberta-base": dict(family="roberta", vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                         num_attention_heads=12, intermediate_size=3072, mask_id=50264),
}


def save_model(name: str, max_len: int, out_dir: str) -> str:
    import torch
    import transformers as tr

    s = dict(SHAPES[name])
    family, mask_id = s.pop("family"), s.pop("mask_id")
    torch.manual_seed(0)
    if family == "bert":
        model = tr.BertForMaskedLM(tr.BertConfig(max_position_embeddings=max_len, **s))
    else:
        model = tr.RobertaForMaskedLM(tr.RobertaConfig(max_position_embeddings=max_len + 2, pad_token_id=1, **s))
    d = os.path.join(out_dir, f"{name}-{max_len}")
    model.save_pretrained(d)
    return d


def inputs(name: str, batch: int, length: int):
    rng = np.random.default_rng(0)
    L = PROMPT + length
    x = rng.integers(1000, 2000, size=(batch, L)).astype(np.int32)
    gen = np.zeros((batch, L), bool)
    gen[:, PROMPT:] = True
    x[gen] = SHAPES[name]["mask_id"]
    return x, gen


def worker_jax(args, model_dir):
    import jax
    import jax.numpy as jnp

    from diffjax.checkpoints.hf import load_hf_checkpoint
    from diffjax.diffusion.discrete_sampling import topk_unmask_sample

    model, params = load_hf_checkpoint(model_dir)
    x, gen = inputs(args.model, args.batch, args.length)
    mask_id = SHAPES[args.model]["mask_id"]

    @jax.jit
    def decode(params, x, gen):
        fn = lambda x, t: model.apply({"params": params}, x)["logits"]
        return topk_unmask_sample(fn, x, jax.random.PRNGKey(0), mask_id=mask_id, num_steps=args.steps, corruptible=gen)

    t0 = time.perf_counter()
    out = np.asarray(decode(params, jnp.asarray(x), jnp.asarray(gen)))
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = np.asarray(jax.block_until_ready(decode(params, jnp.asarray(x), jnp.asarray(gen))))
        times.append(time.perf_counter() - t0)
    return out, first, times


def worker_torch(args, model_dir):
    import torch
    import transformers as tr

    torch.set_grad_enabled(False)
    model = tr.AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    x0, gen0 = inputs(args.model, args.batch, args.length)
    mask_id, N = SHAPES[args.model]["mask_id"], args.steps

    def decode():
        x = torch.from_numpy(x0).long()
        gen = torch.from_numpy(gen0)
        n_gen = gen.sum(-1)
        for i in range(1, N + 1):
            logits = model(input_ids=x).logits.float()
            logits[..., mask_id] = -float("inf")
            score, tok = torch.log_softmax(logits, -1).max(-1)
            k = (n_gen * i) // N
            key = torch.where(gen, -score, torch.full_like(score, float("inf")))
            ranks = torch.argsort(torch.argsort(key, dim=-1, stable=True), dim=-1, stable=True)
            keep = (ranks < k[:, None]) & gen
            decoded = x != mask_id
            x = torch.where(gen, torch.where(keep, torch.where(decoded, x, tok), torch.full_like(x, mask_id)), x)
        return x.numpy()

    t0 = time.perf_counter()
    out = decode()
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = decode()
        times.append(time.perf_counter() - t0)
    return out, first, times


def run_worker(args):
    fn = worker_jax if args.worker == "jax" else worker_torch
    out, first, times = fn(args, args.model_dir)
    np.save(args.tokens_out, out)
    sec = statistics.median(times)
    print(json.dumps(dict(framework=args.worker, model=args.model, length=args.length, batch=args.batch,
                          steps=args.steps, seconds=sec, first_call_seconds=first,
                          tokens_per_s=args.batch * args.length / sec,
                          peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="minilm,roberta-base")
    p.add_argument("--lengths", default="64,256,1024")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "generation.json"))
    p.add_argument("--worker", choices=["jax", "torch"])
    p.add_argument("--model"), p.add_argument("--length", type=int), p.add_argument("--model_dir"), p.add_argument("--tokens_out")
    args = p.parse_args()
    if args.worker:
        return run_worker(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            lengths = [int(s) for s in args.lengths.split(",")]
            model_dir = save_model(name, PROMPT + max(lengths), tmp)
            for length in lengths:
                res = {}
                for fw in ("jax", "torch"):
                    tok = os.path.join(tmp, f"{fw}.npy")
                    cmd = [sys.executable, __file__, f"--worker={fw}", f"--model={name}", f"--length={length}",
                           f"--model_dir={model_dir}", f"--tokens_out={tok}", f"--steps={args.steps}",
                           f"--batch={args.batch}", f"--repeats={args.repeats}"]
                    env = dict(os.environ, JAX_PLATFORMS="cpu")
                    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if r.returncode:
                        raise RuntimeError(f"{fw} worker failed:\n{r.stderr[-3000:]}")
                    res[fw] = json.loads(r.stdout.strip().splitlines()[-1])
                    res[fw + "_tokens"] = np.load(tok)
                agree = float(np.mean(res["jax_tokens"] == res["torch_tokens"]))
                row = dict(model=name, length=length, batch=args.batch, steps=args.steps, jax=res["jax"],
                           torch=res["torch"], speedup=res["jax"]["tokens_per_s"] / res["torch"]["tokens_per_s"],
                           token_agreement=agree)
                rows.append(row)
                print(f"{name:13s} L={length:5d} jax {res['jax']['tokens_per_s']:9.1f} tok/s "
                      f"(rss {res['jax']['peak_rss_mb']:.0f} MB, compile+run {res['jax']['first_call_seconds']:.1f} s) | "
                      f"torch {res['torch']['tokens_per_s']:9.1f} tok/s (rss {res['torch']['peak_rss_mb']:.0f} MB) | "
                      f"jax/torch {row['speedup']:.2f}x | same tokens {agree:.3f}", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(command=" ".join(sys.argv), rows=rows), f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
