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
    torch.set_num_threads(args.torch_threads)
    dev = args.torch_device
    if dev == "cuda":  # float32 matmuls in TF32 as XLA:GPU does by default
        _machine.torch_cuda_fp32_like_jax()
    model = tr.AutoModelForMaskedLM.from_pretrained(model_dir).eval().to(dev)
    x0, gen0 = inputs(args.model, args.batch, args.length)
    mask_id, N = SHAPES[args.model]["mask_id"], args.steps

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
    extra = {}
    if args.worker == "torch":
        import torch

        extra = dict(torch_threads=args.torch_threads, device=args.torch_device,
                     float32_matmul_precision=torch.get_float32_matmul_precision())
    else:
        import jax

        extra = dict(device=str(jax.devices()[0].device_kind), backend=jax.default_backend())
    print(json.dumps(dict(framework=args.worker, model=args.model, length=args.length, batch=args.batch,
                          steps=args.steps, seconds=sec, first_call_seconds=first,
                          tokens_per_s=args.batch * args.length / sec,
                          peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="minilm,roberta-base")
    p.add_argument("--lengths", default="64,256,1024")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
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
            for length in lengths:
                res = {}
                for fw in fws:
                    tok = os.path.join(tmp, f"{fw}.npy")
                    cmd = [sys.executable, __file__, f"--worker={fw}", f"--model={name}", f"--length={length}",
                           f"--model_dir={model_dir}", f"--tokens_out={tok}", f"--steps={args.steps}",
                           f"--batch={args.batch}", f"--repeats={args.repeats}", f"--torch_threads={threads}",
                           f"--torch_device={torch_device}"]
                    r = subprocess.run(cmd, capture_output=True, text=True)
                    if r.returncode:
                        raise RuntimeError(f"{fw} worker failed:\n{r.stderr[-3000:]}")
                    res[fw] = json.loads(r.stdout.strip().splitlines()[-1])
                    res[fw + "_tokens"] = np.load(tok)
                line = (f"{name:13s} L={length:5d} jax {res['jax']['tokens_per_s']:9.1f} tok/s "
                        f"(rss {res['jax']['peak_rss_mb']:.0f} MB, compile+run {res['jax']['first_call_seconds']:.1f} s)")
                row = dict(model=name, length=length, batch=args.batch, steps=args.steps, jax=res["jax"])
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
