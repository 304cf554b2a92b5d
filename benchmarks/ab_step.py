"""Paired A/B of a model change: a model file at a git revision vs the working tree, in one process.

On a shared or virtualised machine two separate benchmark runs can differ by 10% (issue 18); a change
worth 5% is only visible when both versions run in the same process on the same parameters, with
their calls alternating. This loads ``--file`` (e.g. ``diffjax/models/bert.py``) as it is at ``--rev``
(default HEAD) next to the working-tree module, builds the same RoBERTa-base / SmolLM2-135M-shaped
model as ``benchmarks/text_models.py`` from one random HF checkpoint, checks both give the same logits,
then times jitted forward and forward+backward (the token cross-entropy) of the two, alternating A and
B ``--repeats`` times. Prints each side's median and minimum and the median of the paired ratios
old / new (> 1: the working tree is faster).

    python benchmarks/ab_step.py --model roberta --file diffjax/models/bert.py [--rev HEAD~1] [--repeats 7]
    python benchmarks/ab_step.py          # A/A on a clean tree (what ``make bench`` runs): the noise level
    python benchmarks/ab_step.py --tiny --file diffjax/models/llama.py --model llama   # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def module_at_revision(path: str, rev: str):
    """The module file ``path`` (relative to the repository) as it is at git revision ``rev``, imported under
    a new name (its own imports resolve to the working tree)."""
    src = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout
    name = path[:-3].replace("/", ".") + "_at_" + "".join(c if c.isalnum() else "_" for c in rev)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    sys.modules[name] = module  # dataclasses (flax modules) look their module up while the class is built
    exec(compile(src, f"{path}@{rev}", "exec"), module.__dict__)
    return module


def same_model_from(module, model):
    """An instance of ``type(model)``'s namesake in ``module`` with the same dataclass fields."""
    cls = getattr(module, type(model).__name__)
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
              if f.init and f.name not in ("parent", "name")}
    return cls(**fields)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="roberta", choices=("roberta", "roberta-large", "llama"))
    ap.add_argument("--file", default="diffjax/models/bert.py",
                    help="the model module to compare, relative to the repository root (default: bert.py; on a clean "
                         "tree with --rev HEAD this is an A/A run: the spread of the ratio around 1 is the noise)")
    ap.add_argument("--rev", default="HEAD", help="git revision of the old version (default HEAD)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--fwd-only", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="tiny config (smoke run)")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    import text_models as tm

    kw = tm.hf_kwargs(args.model, args.tiny)
    new, params = tm.random_diffjax_model(args.model, kw)
    old = same_model_from(module_at_revision(args.file, args.rev), new)
    ids, labels = tm.batch(kw, args.batch, args.length)
    x, y = jnp.asarray(ids), jnp.asarray(labels)

    def step_fns(model):
        logits_fn, loss_fn = tm.step_functions(model)
        fwd, grad = jax.jit(logits_fn), jax.jit(jax.value_and_grad(loss_fn))
        return {"fwd": lambda: fwd(params, x), "fwd+bwd": lambda: grad(params, x, y)}

    a, b = step_fns(old), step_fns(new)
    diff = float(np.abs(np.asarray(a["fwd"]()) - np.asarray(b["fwd"]())).max())
    print(f"{args.model} {args.batch}x{args.length}: {args.file} at {args.rev} (old) vs working tree (new); "
          f"max |logit diff| {diff:.2e}")
    results = {}
    for what in ("fwd",) if args.fwd_only else ("fwd", "fwd+bwd"):
        jax.block_until_ready(a[what]())
        jax.block_until_ready(b[what]())
        ta, tb = [], []
        for _ in range(args.repeats):
            for fn, times in ((a[what], ta), (b[what], tb)):
                t0 = time.perf_counter()
                jax.block_until_ready(fn())
                times.append(time.perf_counter() - t0)
        ratio = statistics.median(p / q for p, q in zip(ta, tb))
        results[what] = dict(old_ms=statistics.median(ta) * 1e3, new_ms=statistics.median(tb) * 1e3, ratio=ratio)
        print(f"  {what:8s} old median {statistics.median(ta) * 1e3:8.1f} ms (min {min(ta) * 1e3:8.1f})  "
              f"new median {statistics.median(tb) * 1e3:8.1f} ms (min {min(tb) * 1e3:8.1f})  "
              f"old/new paired median {ratio:.3f}", flush=True)
    return results


if __name__ == "__main__":
    main()
