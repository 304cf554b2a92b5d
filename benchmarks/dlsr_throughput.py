"""DLSR end-to-end throughput: images -> EfficientNet stages -> GAP + z-score -> LFDN DDIM
reconstruction (t=10, 3 steps, eta=1) -> MSE + MFsim scores, in img/s.

diffjax (one jitted function) vs the same pipeline in PyTorch eager (efficientnet_pytorch /
efficientnet_lite_pytorch blocks + a torch LFDN holding the *same* weights; outputs are checked to
agree first), for EfficientNet-Lite0 @224 and B4 @380 (native resolutions) with the paper's LFDN
(width 2D, 16 blocks). Also: the vmapped timestep sweep's cost per timestep vs a single-t call.

    python benchmarks/dlsr_throughput.py [--batch 16] [--iters 3] [--variants lite0,b4] [--sweep_t 100]
        [--torch_threads N] [--json benchmarks/results/dlsr_throughput.json]

The torch pipeline runs in a child process that never runs XLA work (with XLA:CPU's thread pool in the
same process, torch's 2-thread Lite0 figure swung between 34 and 57 img/s from run to run).

Prints the machine first (``benchmarks/_machine.py``) and both matmul peaks; writes JSON (rows, sweep
lines, machine, peaks). Torch gets as many threads as XLA:CPU uses (``os.sched_getaffinity``; override
with ``--torch_threads``): the ratio is at equal threads; torch at 1 thread is an extra number. Without
torch / efficientnet_pytorch / efficientnet_lite_pytorch (or when JAX runs on a GPU: the torch pipeline
here is CPU-only) diffjax runs alone (random-init weights) and the JSON says why. fp32 only.

Inputs are CIFAR-sized 32x32 uint8 images resized inside each pipeline to the native resolution.

Random weights (speed does not depend on them). Torch is a benchmark-only dependency.
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
import numpy as np  # noqa: E402

from diffjax.diffusion.schedules import gaussian_schedule  # noqa: E402
from diffjax.models import efficientnet as en  # noqa: E402
from diffjax.models.lfdn import LFDN  # noqa: E402
from diffjax.ood import features as feat  # noqa: E402
from diffjax.ood import scores, sweep  # noqa: E402

T_SCORE, DDIM_STEPS = 10, 3


def _timeit(fn, iters):
    fn()  # warm-up / compile
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


# ------------------------------------------------------------------------------------------
# PyTorch reference pipeline


def torch_pipeline(name, sd_np, lfdn_params, dims, sched, res):
    import torch

    tnn = torch.nn
    torch.set_grad_enabled(False)
    if "lite" in name:
        from efficientnet_lite_pytorch import EfficientNet as TE
    else:
        from efficientnet_pytorch import EfficientNet as TE
    enc = TE.from_name(name, image_size=res).eval()
    enc.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd_np.items()})
    ends = set(en.stage_end_blocks(en.efficientnet_config(name)))
    cfg = en.efficientnet_config(name)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)

    def lin(p):
        m = tnn.Linear(*np.asarray(p["kernel"]).shape)
        m.weight.copy_(torch.from_numpy(np.asarray(p["kernel"]).T.copy()))
        m.bias.copy_(torch.from_numpy(np.asarray(p["bias"])))
        return m

    def gn(p):
        m = tnn.GroupNorm(1, np.asarray(p["scale"]).shape[0], eps=1e-5)
        m.weight.copy_(torch.from_numpy(np.asarray(p["scale"])))
        m.bias.copy_(torch.from_numpy(np.asarray(p["bias"])))
        return m

    p = lfdn_params
    nb = len([k for k in p if k.startswith("block_")])
    blocks = [(gn(p[f"block_{i}"]["norm_in"]), lin(p[f"block_{i}"]["dense_in"]), lin(p[f"block_{i}"]["dense_emb"]),
               gn(p[f"block_{i}"]["norm_out"]), lin(p[f"block_{i}"]["dense_out"])) for i in range(nb)]
    inp, t0, t1, no, out = lin(p["input_proj"]), lin(p["time_dense_0"]), lin(p["time_dense_1"]), gn(p["norm_out"]), lin(p["output"])
    width = np.asarray(p["input_proj"]["kernel"]).shape[1]
    silu = tnn.functional.silu
    abar = torch.from_numpy(np.asarray(sched.alpha_bars, np.float32))

    def lfdn(x, t):
        half = width // 2
        freqs = torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        a = t.float()[:, None] * freqs[None]
        emb = t1(silu(t0(torch.cat([torch.cos(a), torch.sin(a)], -1))))
        h = inp(silu(x))
        for n1, l1, le, n2, l2 in blocks:
            h = h + l2(silu(n2(l1(silu(n1(h))) + le(silu(emb)))))
        return out(silu(no(h)))

    def pipeline(images_uint8, gen):
        x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
        x = tnn.functional.interpolate(x, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
        x = (x - mean) / std
        x = enc._swish(enc._bn0(enc._conv_stem(x)))
        fs = []
        for idx, block in enumerate(enc._blocks):
            x = block(x)
            if idx in ends:
                fs.append(x.mean((2, 3)))
        zs = []
        for f in fs:  # per-sample z-score per layer (ddof=1 as torch.std)
            zs.append((f - f.mean(1, keepdim=True)) / (f.std(1, keepdim=True) + 1e-5))
        z0 = torch.cat(zs, 1)
        b = z0.shape[0]
        x = abar[T_SCORE].sqrt() * z0 + (1 - abar[T_SCORE]).sqrt() * torch.randn(z0.shape, generator=gen)
        for k in range(DDIM_STEPS, 0, -1):  # DDIM eta=1 from t to 0 (same sub-sequence as diffjax)
            t, tp = (T_SCORE * k) // DDIM_STEPS, (T_SCORE * (k - 1)) // DDIM_STEPS
            x0 = lfdn(x, torch.full((b,), t))
            if t == tp:
                continue
            a_t, a_p = abar[t], abar[tp]
            sigma = ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)).sqrt()
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
            x = a_p.sqrt() * x0 + (1 - a_p - sigma ** 2).clamp(min=0).sqrt() * eps + sigma * torch.randn(x.shape, generator=gen)
        mse = ((z0 - x) ** 2).sum(1)
        cos, start = [], 0
        for d in dims:
            cos.append(tnn.functional.cosine_similarity(z0[:, start:start + d], x[:, start:start + d], dim=1))
            start += d
        return mse, -torch.stack(cos).mean(0), z0

    return pipeline, lfdn


def run_torch_child(name, sd, lfdn_params, images, z_in, iters, threads):
    """Time the torch pipeline in a child process that never runs XLA work (XLA:CPU's thread pool in the same
    process made torch's 2-thread figure swing between 34 and 57 img/s on Lite0): -> {"torch_img_s_<n>thr"
    for n in (threads, 1), "z0": torch's features [B, D], "lfdn_out": torch's LFDN on ``z_in`` at t=T_SCORE}."""
    import pickle
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        job, out = os.path.join(d, "job.pkl"), os.path.join(d, "out.pkl")
        with open(job, "wb") as f:
            pickle.dump({"name": name, "sd": sd, "lfdn_params": jax.tree_util.tree_map(np.asarray, lfdn_params),
                         "images": images, "z_in": z_in, "iters": iters, "threads": threads}, f)
        subprocess.run([sys.executable, os.path.abspath(__file__), "--torch_worker", job, out], check=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
        with open(out, "rb") as f:
            return pickle.load(f)


def torch_worker(job_path, out_path):
    """Child process: build the torch pipeline from the job's weights, check outputs, time it (see run_torch_child)."""
    import pickle

    import torch

    with open(job_path, "rb") as f:
        job = pickle.load(f)
    name, images, threads = job["name"], job["images"], job["threads"]
    cfg = en.efficientnet_config(name)
    pipe, t_lfdn = torch_pipeline(name, job["sd"], job["lfdn_params"], en.feature_channels(cfg),
                                  gaussian_schedule("scaled_linear", 100), cfg.resolution)
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    res = {"z0": pipe(images, gen)[2].numpy(),
           "lfdn_out": t_lfdn(torch.from_numpy(job["z_in"]), torch.full((len(images),), T_SCORE)).numpy()}
    # torch eager at XLA:CPU's thread count (the headline ratio: equal threads) and, as an extra number,
    # at 1 thread (on a loaded machine OpenMP spinning can make several threads slower than 1)
    for n_threads in sorted({1, threads}, reverse=True):
        torch.set_num_threads(n_threads)
        res[f"torch_img_s_{n_threads}thr"] = len(images) / _timeit(lambda: pipe(images, gen), job["iters"])
    with open(out_path, "wb") as f:
        pickle.dump(res, f)


# ------------------------------------------------------------------------------------------


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--torch_worker":
        return torch_worker(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--variants", default="lite0,b4")
    ap.add_argument("--sweep_t", type=int, default=100)
    ap.add_argument("--sweep_examples", type=int, default=256)
    ap.add_argument("--torch_threads", type=int, default=None,
                    help="torch threads (default: the cores XLA:CPU uses, os.sched_getaffinity)")
    ap.add_argument("--json", "--out", dest="json", default=_machine.default_json_path("dlsr_throughput"))
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    info = _machine.machine_info()
    backend = info["jax_backend"]
    threads = args.torch_threads or info["xla_cpu_threads"]
    torch_note = None
    if torch is None:
        torch_note = "torch not installed: diffjax only"
    elif backend != "cpu":
        torch_note = f"JAX runs on {backend}; the torch pipeline here is CPU-only: diffjax only"
    if torch is not None:
        torch.set_num_threads(threads)
        info["torch_num_threads"] = threads
    _machine.print_machine(info)
    n_mm = _machine.default_matmul_n(backend)
    peaks = {"matmul_n": n_mm, "peak_jnp_dot_flops": _machine.jnp_matmul_peak(n_mm),
             "peak_torch_matmul_flops": _machine.torch_matmul_peak(n_mm) if torch is not None else None}
    print(f"matmul {n_mm}^2 fp32 (best of 10): jnp.dot {peaks['peak_jnp_dot_flops'] / 1e9:.1f} GFLOP/s, torch.matmul "
          + (f"{peaks['peak_torch_matmul_flops'] / 1e9:.1f} GFLOP/s (cpu, {threads} threads)" if torch is not None else "-"))
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s)); "
          f"torch {torch.__version__ if torch else 'missing'} threads {threads if torch else '-'} (= XLA:CPU's "
          f"{info['xla_cpu_threads']}{', --torch_threads' if args.torch_threads else ''}); "
          f"batch {args.batch}, median of {args.iters}" + (f"; note: {torch_note}" if torch_note else ""), flush=True)
    sweeps = []
    sched = gaussian_schedule("scaled_linear", 100)
    rows = []
    for v in args.variants.split(","):
        name = en.canonical_name(v)
        cfg = en.efficientnet_config(name)
        res = cfg.resolution
        dims = en.feature_channels(cfg)
        d = sum(dims)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (args.batch, 32, 32, 3)).astype(np.uint8)  # CIFAR-sized input

        # same random weights in both frameworks: torch random init -> diffjax's strict converter
        from diffjax.checkpoints.efficientnet import convert_state_dict

        pkg = "efficientnet_lite_pytorch" if "lite" in name else "efficientnet_pytorch"
        use_torch = torch_note is None and importlib.util.find_spec(pkg) is not None
        skip_note = torch_note or (None if use_torch else f"{pkg} not installed: diffjax only")
        if skip_note:
            print(f"{name}: {skip_note}", flush=True)
        if use_torch:
            if "lite" in name:
                from efficientnet_lite_pytorch import EfficientNet as TE
            else:
                from efficientnet_pytorch import EfficientNet as TE
            torch.manual_seed(0)
            tm = TE.from_name(name, image_size=res)
            for m in tm.modules():  # non-trivial BN statistics
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
            sd = {k: t.detach().numpy() for k, t in tm.state_dict().items()}
            variables = convert_state_dict(sd, cfg, "lukemelas")
        else:
            sd = None
            variables = jax.jit(en.EfficientNet(cfg, include_head=False).init)(jax.random.PRNGKey(0), jnp.zeros((1, res, res, 3)))
        model = en.EfficientNet(cfg, include_head=False)
        lfdn = LFDN(in_dim=d)
        lp = jax.jit(lfdn.init)(jax.random.PRNGKey(1), jnp.zeros((1, d)), jnp.zeros((1,), jnp.int32))["params"]
        lp = jax.tree_util.tree_map(lambda a: a + 0.02 * jax.random.normal(jax.random.PRNGKey(2), a.shape), lp)

        @jax.jit
        def jax_pipeline(imgs, key):
            x = feat.preprocess(imgs, res, cfg.mean, cfg.std)
            z0 = feat.zscore_per_sample(feat.global_average_pool(model.apply(variables, x)["features"]), dims)
            keys = scores.example_keys(key, jnp.arange(z0.shape[0]))
            out = scores.reconstruction_scores(lambda a, t: lfdn.apply({"params": lp}, a, t), sched, z0, T_SCORE,
                                               keys, dims, ddim_steps=DDIM_STEPS, eta=1.0)
            return out["mse"], out["mfsim"], z0

        jimgs = jnp.asarray(images)
        key = jax.random.PRNGKey(0)
        t_jax = _timeit(lambda: jax.block_until_ready(jax_pipeline(jimgs, key)), args.iters)
        row = {"variant": name, "res": res, "D": d, "batch": args.batch, "backend": backend, "jax_img_s": args.batch / t_jax}
        if skip_note:
            row["torch_skipped"] = skip_note
        if use_torch:
            _, _, z_j = jax_pipeline(jimgs, key)
            zz = np.asarray(z_j)  # LFDN parity on the same input
            t_res = run_torch_child(name, sd, lp, images, zz, args.iters, threads)
            row["z0_max_abs_diff"] = float(np.max(np.abs(t_res.pop("z0") - zz)))
            row["lfdn_max_abs_diff"] = float(np.max(np.abs(t_res.pop("lfdn_out") - np.asarray(
                lfdn.apply({"params": lp}, jnp.asarray(zz), jnp.full((args.batch,), T_SCORE))))))
            row.update(t_res)
            row["torch_threads"] = threads
            row["torch_img_s"] = row[f"torch_img_s_{threads}thr"]
            row["ratio"] = row["jax_img_s"] / row["torch_img_s"]
        rows.append(row)
        print(row, flush=True)
        _machine.write_json(args.json, {"benchmark": "dlsr_throughput", "partial": True, **peaks, "rows": rows}, info)

        # the sweep: n_t timesteps in one vmapped call vs a single-t call, on features only
        if v == args.variants.split(",")[0]:
            z = jnp.asarray(rng.normal(size=(args.sweep_examples, d)).astype(np.float32))
            ids = jnp.arange(args.sweep_examples)
            ks = sweep.seed_keys(0, 1)
            ts_all = jnp.arange(1, args.sweep_t + 1)
            for tb in (None, 1):
                fn = sweep.make_sweep_fn(lambda p, a, t: lfdn.apply({"params": p}, a, t), sched, dims,
                                         ddim_steps=DDIM_STEPS, t_batch_size=tb)
                t_one = _timeit(lambda: jax.block_until_ready(fn(lp, z, ts_all[:1] * 10, ks, ids)), args.iters)
                t_all = _timeit(lambda: jax.block_until_ready(fn(lp, z, ts_all, ks, ids)), max(1, args.iters - 2))
                how = "vmap over all t" if tb is None else f"lax.map over t, batch_size={tb}"
                sweeps.append({"variant": name, "examples": args.sweep_examples, "n_t": args.sweep_t, "how": how,
                               "single_t_s": t_one, "all_t_s": t_all, "per_t_over_single": t_all / args.sweep_t / t_one})
                print(f"sweep ({name} LFDN, {args.sweep_examples} examples, {DDIM_STEPS} DDIM steps, {how}): "
                      f"single t {t_one * 1e3:.1f} ms; {args.sweep_t} t in one jitted call {t_all:.2f} s = "
                      f"{t_all / args.sweep_t * 1e3:.1f} ms per t ({t_all / args.sweep_t / t_one:.2f}x a single-t call)",
                      flush=True)

    print(f"\nDLSR end-to-end img/s (features + LFDN 16 blocks + MSE/MFsim scores), {backend}, fp32, batch {args.batch}")
    print(f"torch = {threads} thread(s), equal to XLA:CPU's (torch_img_s_1thr in the per-variant lines above)"
          if any("torch_img_s" in r for r in rows) else f"torch: not run ({torch_note or 'see the per-variant notes'})")
    print(f"{'variant':<20} {'res':>4} {'D':>4} {'diffjax':>9} {'torch':>9} {'ratio':>6}  z0 |diff|  LFDN |diff|")
    for r in rows:
        print(f"{r['variant']:<20} {r['res']:>4} {r['D']:>4} {r['jax_img_s']:9.1f} {r.get('torch_img_s', float('nan')):9.1f} "
              f"{r.get('ratio', float('nan')):6.2f}  {r.get('z0_max_abs_diff', float('nan')):.1e}    "
              f"{r.get('lfdn_max_abs_diff', float('nan')):.1e}")
    _machine.write_json(args.json, {"benchmark": "dlsr_throughput", "batch": args.batch, "iters": args.iters,
                                    "torch_threads": threads if torch is not None else None, "torch_note": torch_note,
                                    **peaks, "rows": rows, "sweep": sweeps}, info)


if __name__ == "__main__":
    main()
