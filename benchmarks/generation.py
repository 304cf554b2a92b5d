"""Paper 002 decoding speed: N-step top-k confidence decoding (greedy, linear schedule, RDM re-masking),
diffjax (one jitted ``lax.scan``) vs the same loop in PyTorch around transformers' ``*ForMaskedLM`` with
the same weights, both timed in one run on this machine; peak memory (max RSS) too.

    python benchmarks/generation.py                                   # the issue's grid (slow on CPU)
    python benchmarks/generation.py --models=minilm --lengths=64 --steps=10 --batch=2
    python benchmarks/generation.py --models=minilm --lengths=256 --decoders=topk,thr,thr:none,thr:prefix,thr:dual

``--decoders`` (default ``topk``): ``topk`` (above); ``thr`` = confidence-threshold parallel decoding
(``--threshold``, at most N steps, at least ceil(masked / steps left) tokens a step); ``thr:CACHE`` = the
same in ``--num_blocks`` blocks of N / num_blocks steps at most each (N calls at most), with K/V cache
CACHE = none | prefix | dual refreshed at every block boundary (issue 27; ``diffusion/cached_decoding.py``).
The torch side runs the same algorithm; with a cache it is Fast-dLLM's form (Wu et al. 2025): at each block
boundary the whole row goes through transformers' encoder layers once and their keys / values are kept;
each step then runs those layers by hand (their own q / k / v / output modules) on the window alone, its
fresh keys / values written into the cached ones. Rows report tokens/s and model calls per token (the
steps; the K/V refreshes are not counted: one full pass a block without the MLM head).

Models (random weights, saved once with transformers' ``save_pretrained`` and read by both sides):
``minilm`` = BERT 6 layers, d 384 (all-MiniLM-L6-v2's shape, vocab 30522) and ``roberta-base`` =
12 layers, d 768, vocab 50265. Each (framework, model, length) runs in its own subprocess so its
peak RSS is its own. Prompt: 16 random tokens; the target (``length`` tokens) starts all [MASK].
tokens/s = batch * length / seconds of one decode (median of ``--repeats`` after one warm-up, so
compile time is excluded and reported apart). Prints the machine and both matmul peaks first
(``benchmarks/_machine.py``); writes ``benchmarks/results/generation.json`` (``--out`` / ``--json``) with
the machine block. Torch gets as many threads as XLA:CPU uses (``os.sched_getaffinity``; ``--torch_threads``
overrides), so the jax/torch ratio is at equal threads. JAX uses its default backend (``JAX_PLATFORMS``
decides); when that is a GPU, torch runs on CUDA if available, else the torch side is skipped with a note.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # on a GPU: leave memory to the torch worker

import _machine  # noqa: E402

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
    from diffjax.diffusion.cached_decoding import CachedLogits, block_sample
    from diffjax.diffusion.discrete_sampling import threshold_unmask_sample, topk_unmask_sample
    from diffjax.models.bert import BertEncoder

    model, params = load_hf_checkpoint(model_dir)
    x, gen = inputs(args.model, args.batch, args.length)
    mask_id = SHAPES[args.model]["mask_id"]

    @jax.jit
    def decode(params, x, gen):
        fn = lambda x, t: model.apply({"params": params}, x)["logits"]
        rng = jax.random.PRNGKey(0)
        if args.decoder == "topk":
            return topk_unmask_sample(fn, x, rng, mask_id=mask_id, num_steps=args.steps, corruptible=gen), \
                jnp.full((x.shape[0],), args.steps)
        if args.decoder == "thr":
            return threshold_unmask_sample(fn, x, rng, mask_id=mask_id, num_steps=args.steps, corruptible=gen,
                                           threshold=args.threshold, return_num_calls=True)
        apply = lambda *a, **k: model.apply({"params": params}, *a, **k)
        att, tti = jnp.ones(x.shape, bool), jnp.zeros_like(x)
        cached = CachedLogits(fn, lambda x: apply(x, att, tti, method=BertEncoder.kv_cache),
                              lambda x, s, w, c: apply(x, att, tti, c, s, w, method=BertEncoder.window_logits))
        return block_sample(cached, x, rng, mask_id=mask_id, num_steps=block_steps(args), corruptible=gen,
                            num_blocks=args.num_blocks, inner="threshold", threshold=args.threshold,
                            cache=args.decoder.split(":")[1], max_generated=args.length, return_num_calls=True)

    t0 = time.perf_counter()
    out, calls = jax.device_get(decode(params, jnp.asarray(x), jnp.asarray(gen)))
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out, calls = jax.device_get(decode(params, jnp.asarray(x), jnp.asarray(gen)))
        times.append(time.perf_counter() - t0)
    return np.asarray(out), first, times, float(np.mean(calls))


def block_steps(args) -> int:
    """The threshold steps at most per block of ``thr:CACHE``: N / num_blocks (N calls at most in all)."""
    return max(1, args.steps // args.num_blocks)


def worker_torch(args, model_dir):
    import torch
    import transformers as tr

    torch.set_grad_enabled(False)
    torch.set_num_threads(args.torch_threads)
    dev = args.torch_device
    if dev == "cuda":  # float32 matmuls in TF32 as XLA:GPU does by default
        _machine.torch_cuda_fp32_like_jax()
    model = tr.AutoModelForMaskedLM.from_pretrained(model_dir).eval().to(dev)
    x0, gen0 = inputs(args.model, args.batch, args.length)
    mask_id, N = SHAPES[args.model]["mask_id"], args.steps

    if args.decoder != "topk":
        return torch_threshold(args, model, x0, gen0, dev)

    def decode():
        x = torch.from_numpy(x0).long().to(dev)
        gen = torch.from_numpy(gen0).to(dev)
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
        return x.cpu().numpy()  # .cpu() waits for CUDA

    return timed(lambda: (decode(), N), args.repeats)


def timed(decode, repeats: int):
    """(tokens, first call seconds, seconds of each repeat, calls per row) of ``decode() -> (tokens, calls)``."""
    t0 = time.perf_counter()
    out, calls = decode()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out, calls = decode()
        times.append(time.perf_counter() - t0)
    return out, first, times, float(calls)


def torch_layer(layer, h, kv=None, start: int = 0):
    """One transformers BERT / RoBERTa layer run by hand on rows h [B, W, D] (its own modules, eval mode):
    -> (h', (k, v) [B, H, W, hd] of these rows). With ``kv`` (the row's cached keys / values [B, H, L, hd]) the
    rows are slots [start, start + W): their fresh k / v overwrite the cached ones there (Fast-dLLM's cache)."""
    import torch

    sa = layer.attention.self
    B, W, D = h.shape
    H = sa.num_attention_heads
    split = lambda t: t.view(B, W, H, D // H).transpose(1, 2)
    q, k, v = split(sa.query(h)), split(sa.key(h)), split(sa.value(h))
    keys, values = k, v
    if kv is not None:
        keys, values = kv[0].clone(), kv[1].clone()
        keys[:, :, start:start + W], values[:, :, start:start + W] = k, v
    ctx = torch.softmax(q @ keys.transpose(-1, -2) / (D // H) ** 0.5, -1) @ values
    a = layer.attention.output.LayerNorm(layer.attention.output.dense(ctx.transpose(1, 2).reshape(B, W, D)) + h)
    return layer.output.LayerNorm(layer.output.dense(layer.intermediate(a)) + a), (k, v)


def torch_threshold(args, model, x0, gen0, dev):
    """``thr`` / ``thr:CACHE`` in PyTorch (module docstring): the same steps as ``threshold_unmask_sample`` /
    ``block_sample`` (greedy; every row of the benchmark has the same prompt, so one window start a block)."""
    import torch

    mask_id = SHAPES[args.model]["mask_id"]
    base, head = model.base_model, (model.cls if hasattr(model, "cls") else model.lm_head)
    offset = base.embeddings.padding_idx + 1 if SHAPES[args.model]["family"] == "roberta" else 0  # RoBERTa (no pads)

    def embed(ids, start):
        pos = torch.arange(start, start + ids.shape[1], device=dev)[None].expand(ids.shape[0], -1) + offset
        return base.embeddings(input_ids=ids, position_ids=pos)

    def full_logits(x):
        return model(input_ids=x).logits.float()

    def kv_cache(x):
        h, kvs = embed(x, 0), []
        for layer in base.encoder.layer:
            h, kv = torch_layer(layer, h)
            kvs.append(kv)
        return kvs

    def window_logits(x, start, width, kvs):
        h = embed(x[:, start:start + width], start)
        for layer, kv in zip(base.encoder.layer, kvs):
            h = torch_layer(layer, h, kv, start)[0]
        return head(h).float()

    def threshold_steps(x, corr, steps, logits_fn, calls):
        """``threshold_unmask_sample`` (greedy) on rows x [B, W] with positions ``corr`` to decode."""
        for i in range(steps):
            still = corr & (x == mask_id)
            remaining = still.sum(-1)
            if not bool(remaining.any()):
                break
            calls += (remaining > 0).long()
            logits = logits_fn(x)
            logits[..., mask_id] = -float("inf")
            logp, tok = torch.log_softmax(logits, -1).max(-1)
            need = -(-remaining // (steps - i))
            key = torch.where(still, -logp, torch.full_like(logp, float("inf")))
            ranks = torch.argsort(torch.argsort(key, dim=-1, stable=True), dim=-1, stable=True)
            unmask = (still & (logp.exp() > args.threshold)) | ((ranks < need[:, None]) & still)
            x = torch.where(unmask, tok, x)
        return x

    def decode():
        x = torch.from_numpy(x0).long().to(dev)
        gen = torch.from_numpy(gen0).to(dev)
        calls = torch.zeros(x.shape[0], dtype=torch.long, device=dev)
        x = torch.where(gen, torch.full_like(x, mask_id), x)
        if args.decoder == "thr":
            x = threshold_steps(x, gen, args.steps, full_logits, calls)
            return x.cpu().numpy(), float(calls.float().mean())
        cache, L, nb = args.decoder.split(":")[1], x.shape[1], args.num_blocks
        n_gen = gen.sum(-1, keepdim=True)
        block_id = torch.where(gen, ((gen.cumsum(-1) - 1) * nb) // n_gen, torch.full_like(x, -1))
        span = -(-int(gen.sum(-1).max()) // nb)
        for b in range(nb):
            in_block = block_id == b
            if cache == "none":
                x = threshold_steps(x, in_block, block_steps(args), full_logits, calls)
                continue
            width = min(L, span if cache == "dual" else (nb - b) * span + 1)
            start = min(int(in_block[0].float().argmax()), L - width)
            kvs = kv_cache(x)
            rest = x.clone()

            def logits_fn(x_w, start=start, width=width, kvs=kvs, rest=rest):
                row = rest.clone()
                row[:, start:start + width] = x_w
                return window_logits(row, start, width, kvs)

            x_w = threshold_steps(x[:, start:start + width].clone(), in_block[:, start:start + width],
                                  block_steps(args), logits_fn, calls)
            x = x.clone()
            x[:, start:start + width] = x_w
        return x.cpu().numpy(), float(calls.float().mean())  # .cpu() waits for CUDA

    with torch.no_grad():
        return timed(decode, args.repeats)


def run_worker(args):
    fn = worker_jax if args.worker == "jax" else worker_torch
    out, first, times, calls = fn(args, args.model_dir)
    np.save(args.tokens_out, out)
    sec = statistics.median(times)
    extra = {}
    if args.worker == "torch":
        import torch

        extra = dict(torch_threads=args.torch_threads, device=args.torch_device,
                     float32_matmul_precision=torch.get_float32_matmul_precision())
    else:
        import jax

        extra = dict(device=str(jax.devices()[0].device_kind), backend=jax.default_backend())
    print(json.dumps(dict(framework=args.worker, model=args.model, length=args.length, batch=args.batch,
                          steps=args.steps, decoder=args.decoder, seconds=sec, first_call_seconds=first,
                          tokens_per_s=args.batch * args.length / sec, calls_per_token=calls / args.length,
                          peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="minilm,roberta-base")
    p.add_argument("--lengths", default="64,256,1024")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--decoders", default="topk", help="comma-separated: topk, thr, thr:none, thr:prefix, thr:dual")
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--num_blocks", type=int, default=4)
    p.add_argument("--decoder", default="topk", help=argparse.SUPPRESS)
    p.add_argument("--out", "--json", dest="out", default=_machine.default_json_path("generation"))
    p.add_argument("--torch_threads", type=int, default=None,
                   help="torch threads (default: the cores XLA:CPU uses, os.sched_getaffinity)")
    p.add_argument("--no_torch", action="store_true", help="diffjax only")
    p.add_argument("--worker", choices=["jax", "torch"])
    p.add_argument("--torch_device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--model"), p.add_argument("--length", type=int), p.add_argument("--model_dir"), p.add_argument("--tokens_out")
    args = p.parse_args()
    if args.worker:
        return run_worker(args)
    import torch  # the models are made (and saved) with transformers + torch in any case

    info = _machine.machine_info()
    backend = info["jax_backend"]
    threads = args.torch_threads or info["xla_cpu_threads"]
    torch.set_num_threads(threads)
    info = _machine.machine_info(import_torch=True)
    torch_device, torch_note = "cpu", None
    if backend == "gpu":
        if torch.cuda.is_available():
            torch_device = "cuda"
            _machine.torch_cuda_fp32_like_jax()  # for the torch peak below (the worker sets it again)
        else:
            torch_note = "JAX runs on the GPU but torch has no CUDA here: torch side skipped"
    if args.no_torch:
        torch_note = "--no_torch: torch side skipped"
    _machine.print_machine(info)
    n_mm = _machine.default_matmul_n(backend)
    peaks = {"matmul_n": n_mm, "peak_jnp_dot_flops": _machine.jnp_matmul_peak(n_mm),
             "peak_torch_matmul_flops": (_machine.torch_matmul_peak(n_mm, device=torch_device)
                                         if torch_note is None else None)}
    print(f"matmul {n_mm}^2 fp32 (best of 10): jnp.dot ({backend}) {peaks['peak_jnp_dot_flops'] / 1e9:.1f} GFLOP/s, "
          + (f"torch.matmul ({torch_device}) {peaks['peak_torch_matmul_flops'] / 1e9:.1f} GFLOP/s" if torch_note is None
             else "torch -"))
    print(f"torch: {torch_device}, {threads} thread(s) (= XLA:CPU's {info['xla_cpu_threads']}"
          f"{', --torch_threads' if args.torch_threads else ''})" + (f"; note: {torch_note}" if torch_note else ""),
          flush=True)
    fws = ("jax",) if torch_note else ("jax", "torch")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            lengths = [int(s) for s in args.lengths.split(",")]
            model_dir = save_model(name, PROMPT + max(lengths), tmp)
            for length, decoder in [(n, d) for n in lengths for d in args.decoders.split(",")]:
                res = {}
                for fw in fws:
                    tok = os.path.join(tmp, f"{fw}.npy")
                    cmd = [sys.executable, __file__, f"--worker={fw}", f"--model={name}", f"--length={length}",
                           f"--model_dir={model_dir}", f"--tokens_out={tok}", f"--steps={args.steps}",
                           f"--batch={args.batch}", f"--repeats={args.repeats}", f"--torch_threads={threads}",
                           f"--torch_device={torch_device}", f"--decoder={decoder}",
                           f"--threshold={args.threshold}", f"--num_blocks={args.num_blocks}"]
                    r = subprocess.run(cmd, capture_output=True, text=True)
                    if r.returncode:
                        raise RuntimeError(f"{fw} worker failed:\n{r.stderr[-3000:]}")
                    res[fw] = json.loads(r.stdout.strip().splitlines()[-1])
                    res[fw + "_tokens"] = np.load(tok)
                line = (f"{name:13s} L={length:5d} {decoder:10s} jax {res['jax']['tokens_per_s']:9.1f} tok/s "
                        f"{res['jax']['calls_per_token']:.3f} calls/tok "
                        f"(rss {res['jax']['peak_rss_mb']:.0f} MB, compile+run {res['jax']['first_call_seconds']:.1f} s)")
                row = dict(model=name, length=length, decoder=decoder, batch=args.batch, steps=args.steps,
                           jax=res["jax"])
                if "torch" in res:
                    agree = float(np.mean(res["jax_tokens"] == res["torch_tokens"]))
                    row.update(torch=res["torch"], speedup=res["jax"]["tokens_per_s"] / res["torch"]["tokens_per_s"],
                               token_agreement=agree)
                    line += (f" | torch {res['torch']['tokens_per_s']:9.1f} tok/s (rss {res['torch']['peak_rss_mb']:.0f} MB) | "
                             f"jax/torch {row['speedup']:.2f}x ({torch_device}, {threads} threads each) | same tokens {agree:.3f}")
                else:
                    row["torch_skipped"] = torch_note
                rows.append(row)
                print(line, flush=True)
                _machine.write_json(args.out, dict(benchmark="generation", partial=True, **peaks, rows=rows), info)
    _machine.write_json(args.out, dict(benchmark="generation", backend=backend, torch_device=torch_device,
                                       torch_threads=threads, torch_note=torch_note, **peaks, rows=rows), info)


if __name__ == "__main__":
    main()
