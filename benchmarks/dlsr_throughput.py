"""DLSR end-to-end throughput: images -> EfficientNet stages -> GAP + z-score -> LFDN DDIM
reconstruction (t=10, 3 steps, eta=1) -> MSE + MFsim scores, in img/s.

diffjax (one jitted function) vs the same pipeline in PyTorch eager (efficientnet_pytorch /
efficientnet_lite_pytorch blocks + a torch LFDN holding the *same* weights; outputs are checked to
agree first), for EfficientNet-Lite0 @224 and B4 @380 (native resolutions) with the paper's LFDN
(width 2D, 16 blocks). Also: the vmapped timestep sweep's cost per timestep vs a single-t call.

    python benchmarks/dlsr_throughput.py [--batch 16] [--iters 3] [--variants lite0,b4] [--sweep_t 100]

Inputs are CIFAR-sized 32x32 uint8 images resized inside each pipeline to the native resolution.

Random weights (speed does not depend on them). Torch is a benchmark-only dependency.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.schedules import gaussian_schedule
from diffjax.models import efficientnet as en
from diffjax.models.lfdn import LFDN
from diffjax.ood import features as feat
from diffjax.ood import scores, sweep

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


# ------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--variants", default="lite0,b4")
    ap.add_argument("--sweep_t", type=int, default=100)
    ap.add_argument("--sweep_examples", type=int, default=256)
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s)); "
          f"torch {torch.__version__ if torch else 'missing'} threads {torch.get_num_threads() if torch else '-'}; "
          f"batch {args.batch}, median of {args.iters}")
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

        if torch is not None:
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
        row = {"variant": name, "res": res, "D": d, "jax_img_s": args.batch / t_jax}
        if torch is not None:
            pipe, t_lfdn = torch_pipeline(name, sd, lp, dims, sched, res)
            gen = torch.Generator().manual_seed(0)
            _, _, z_t = pipe(images, gen)
            _, _, z_j = jax_pipeline(jimgs, key)
            row["z0_max_abs_diff"] = float(np.max(np.abs(z_t.numpy() - np.asarray(z_j))))
            zz, tt = np.asarray(z_j), np.full((args.batch,), T_SCORE)  # LFDN parity on the same input
            row["lfdn_max_abs_diff"] = float(np.max(np.abs(
                t_lfdn(torch.from_numpy(zz), torch.from_numpy(tt)).numpy()
                - np.asarray(lfdn.apply({"params": lp}, jnp.asarray(zz), jnp.asarray(tt))))))
            # torch eager with 1 thread and with its default; on a loaded machine the default
            # (OpenMP spinning) can be much slower, so the ratio is taken against the faster one
            default_threads = torch.get_num_threads()
            for n_threads in sorted({1, default_threads}):
                torch.set_num_threads(n_threads)
                row[f"torch_img_s_{n_threads}thr"] = args.batch / _timeit(lambda: pipe(images, gen), args.iters)
            torch.set_num_threads(default_threads)
            row["torch_img_s"] = max(v for k, v in row.items() if k.startswith("torch_img_s_"))
            row["ratio"] = row["jax_img_s"] / row["torch_img_s"]
        rows.append(row)
        print(row, flush=True)

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
                print(f"sweep ({name} LFDN, {args.sweep_examples} examples, {DDIM_STEPS} DDIM steps, {how}): "
                      f"single t {t_one * 1e3:.1f} ms; {args.sweep_t} t in one jitted call {t_all:.2f} s = "
                      f"{t_all / args.sweep_t * 1e3:.1f} ms per t ({t_all / args.sweep_t / t_one:.2f}x a single-t call)",
                      flush=True)

    print("\nDLSR end-to-end img/s (features + LFDN 16 blocks + MSE/MFsim scores), CPU, fp32")
    print("torch = the faster of 1 thread / default threads (see the per-variant lines above)")
    print(f"{'variant':<20} {'res':>4} {'D':>4} {'diffjax':>9} {'torch':>9} {'ratio':>6}  z0 |diff|  LFDN |diff|")
    for r in rows:
        print(f"{r['variant']:<20} {r['res']:>4} {r['D']:>4} {r['jax_img_s']:9.1f} {r.get('torch_img_s', float('nan')):9.1f} "
              f"{r.get('ratio', float('nan')):6.2f}  {r.get('z0_max_abs_diff', float('nan')):.1e}    "
              f"{r.get('lfdn_max_abs_diff', float('nan')):.1e}")


if __name__ == "__main__":
    main()
