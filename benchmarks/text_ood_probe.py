"""Does the text-OOD denoiser (paper 000) use its input? A diagnostic, not a speed benchmark.

Trains the demo's denoiser (``configs/text_ood_demo.py``: real MiniLM, movie reviews, batch 16, AdamW
with the demo's warmup and cosine decay) for ``--steps`` steps and, every ``--every`` steps, reports on 64
held-out ID sentences at t in ``--ts``:

* ``swap``: the relative change of x0_hat when each row's x_t is replaced by another row's (same mask):
  0 = the prediction ignores its input;
* ``cos``: mean cos(x0_hat, x_0) over real tokens (does it denoise?);
* ``ld`` / ``ld_mean``: L_d of the denoiser and of the mean-embedding predictor (a model-free floor).

Any ``config.task`` field can be overridden as ``field=value`` (e.g. ``prediction=x0``, ``x0_std=0``).
Prints one line per report and writes benchmarks/results/text_ood_probe.json (``--json``).

    python benchmarks/text_ood_probe.py [--steps 100] [--every 25] [--lr 1e-4] [prediction=x0 ...]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ts", default="10,100,300,600")
    ap.add_argument("--json", default=_machine.default_json_path("text_ood_probe"))
    ap.add_argument("overrides", nargs="*", help="config.task fields, field=value")
    args = ap.parse_args()

    from diffjax.cli import _load_config_file
    from diffjax.ood import text_scores as tm
    from diffjax.tasks.base import build_task
    from diffjax.train.init_from import initial_params

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = _load_config_file(os.path.join(root, "configs", "text_ood_demo.py"))
    with c.unlocked():
        for kv in args.overrides:
            k, v = kv.split("=", 1)
            old = getattr(c.task, k)
            setattr(c.task, k, v if isinstance(old, str) else type(old)(ast.literal_eval(v)))
    task = build_task(c.task, init_from=c.init_from)
    params = initial_params(task, c.init_from, jax.random.PRNGKey(0))
    lr = optax.warmup_cosine_decay_schedule(0.0, args.lr, int(c.optimizer.warmup_steps), max(args.steps, 21))
    opt = optax.adamw(lr, weight_decay=float(c.optimizer.weight_decay))
    state = opt.init(params)

    @jax.jit
    def step(p, s, batch, rng):
        (_, m), g = jax.value_and_grad(lambda p: task.loss_fn(p, batch, rng), has_aux=True)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, m

    held = task.sets()["heldout"]
    tok, msk = jnp.asarray(held.tokens[:64]), jnp.asarray(held.mask[:64])
    both = msk & msk[::-1]

    @jax.jit
    def probe(p, t):
        den = p["denoiser"]
        emb = tm.embedding_matrix(den)
        scale = tm.embedding_scale(emb, float(c.task.x0_std))
        x0 = emb[tok] * scale
        tt = jnp.full((tok.shape[0],), t, jnp.int32)
        x_t = tm.gaussian.q_sample(task.schedule, x0, tt, jax.random.normal(jax.random.PRNGKey(1), x0.shape))
        pred = lambda x: tm.predict_x0(task.model, den, task.schedule, x, tt, msk, scale, c.task.prediction)
        a, b = pred(x_t), pred(x_t[::-1])
        m = both[..., None]
        mean = jnp.sum(x0 * msk[..., None], (0, 1)) / jnp.sum(msk)
        return {"swap": jnp.linalg.norm((a - b) * m) / jnp.linalg.norm(a * m),
                "cos": jnp.mean(tm.token_cosine(a, x0, msk)), "ld": jnp.mean(tm.l_d(a, x0, msk)),
                "ld_mean": jnp.mean(tm.l_d(jnp.broadcast_to(mean, x0.shape), x0, msk))}

    ts = [int(t) for t in args.ts.split(",")]
    rows = []

    def report(i):
        row = {"step": i, **{str(t): {k: float(v) for k, v in probe(params, t).items()} for t in ts}}
        rows.append(row)
        print(f"step {i}: " + " | ".join(f"t={t}: swap {row[str(t)]['swap']:.3f} cos {row[str(t)]['cos']:.3f} "
                                        f"ld {row[str(t)]['ld']:.0f} (mean {row[str(t)]['ld_mean']:.0f})" for t in ts),
              flush=True)

    batches = task.train_batches(0, global_batch_size=int(c.train.global_batch_size))
    report(0)
    start = time.time()
    for i in range(1, args.steps + 1):
        params, state, m = step(params, state, next(batches), jax.random.PRNGKey(i))
        if i % args.every == 0 or i == args.steps:
            print(f"  train loss {float(m['loss']):.1f} (l_d {float(m['l_d']):.1f}, l_c {float(m['l_c']):.2f}), "
                  f"{time.time() - start:.0f} s", flush=True)
            report(i)
    _machine.write_json(args.json, {"benchmark": "text_ood_probe", "overrides": args.overrides, "lr": args.lr,
                                    "steps": args.steps, "rows": rows}, _machine.machine_info())


if __name__ == "__main__":
    main()
