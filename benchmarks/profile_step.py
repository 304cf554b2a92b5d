"""Where a jitted training step spends its time on this machine: XLA's per-op profile, grouped.

Traces one fwd+bwd call of a RoBERTa-base- or SmolLM2-135M-shaped model (random weights, the token
cross-entropy every diffjax text loss is built from) with ``jax.profiler``, reads the trace back with
``jax.profiler.ProfileData`` and prints the thread time of each compiled op, grouped by the op's kind
(``ynn_fusion`` = an XNNPACK dot fusion, ``dot`` = an Eigen dot, ``*_fusion`` = XLA loop fusions) and
the model path it came from (layer numbers folded), largest first. This is how issue 18's hot spots
were found (a silu derivative fused into a 3-d transpose: 1 s of SmolLM2's 7.2 s step; a bias-gradient
reduce: 338 ms of RoBERTa's MLM head).

    python benchmarks/profile_step.py [--model roberta|llama] [--batch 8 --length 128] [--top 30] [--fwd]
    python benchmarks/profile_step.py --tiny        # seconds-long smoke run

Thread time, not wall time: XLA runs independent ops concurrently on its thread pool, and an Eigen
``dot`` event can end before the work it queued does, so the rows rank costs but need not add up to
the step's wall time (printed on the first line). The compiled HLO is written next to the trace
(``--trace_dir``) so a row's op can be looked up by name.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SKIPPED_EVENTS = ("ThunkExecutor", "SlinkyThreadPool", "end:", "Threadpool")


def op_table(xplane_file: str, hlo_text: str) -> collections.Counter:
    """{(op kind, shape, op path with layer numbers folded): thread ns} from a trace and its compiled HLO."""
    import jax

    data = jax.profiler.ProfileData.from_file(xplane_file)
    per_op = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if "Eigen" not in line.name and "PjRt" not in line.name:
                continue  # the XLA worker threads and the client thread that runs inline ops
            for event in line.events:
                if not event.name.startswith(SKIPPED_EVENTS):
                    per_op[event.name] += event.duration_ns
    table = collections.Counter()
    for name, ns in per_op.items():
        m = re.search(r"^\s*(?:ROOT )?%" + re.escape(name) + r" = (\S+) .*?op_name=\"([^\"]+)\"", hlo_text, re.M)
        shape, path = (m.group(1).split("{")[0], m.group(2)) if m else ("?", "?")
        path = re.sub(r"layers?_\d+", "L", path)
        table[(re.sub(r"\.\d+$", "", name), shape, path)] += ns
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="roberta", choices=("roberta", "llama"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--fwd", action="store_true", help="profile the forward only")
    ap.add_argument("--tiny", action="store_true", help="tiny config (smoke run)")
    ap.add_argument("--trace_dir", default=None, help="keep the trace and HLO here (default: a temp dir)")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    import text_models as tm  # benchmarks/text_models.py: the same model sizes, weights and batch

    kw = tm.hf_kwargs(args.model, args.tiny)
    out_dir = args.trace_dir or tempfile.mkdtemp(prefix="profile_step_")
    model, params = tm.random_diffjax_model(args.model, kw, os.path.join(out_dir, "model"))
    ids, labels = tm.batch(kw, args.batch, args.length)
    x, y = jnp.asarray(ids), jnp.asarray(labels)
    logits_fn, loss_fn = tm.step_functions(model)

    step = jax.jit(logits_fn) if args.fwd else jax.jit(jax.value_and_grad(loss_fn))
    call = (lambda: step(params, x)) if args.fwd else (lambda: step(params, x, y))
    jax.block_until_ready(call())
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    wall = time.perf_counter() - t0
    trace = os.path.join(out_dir, "trace")
    with jax.profiler.trace(trace):
        jax.block_until_ready(call())
    hlo = (step.lower(params, x) if args.fwd else step.lower(params, x, y)).compile().as_text()
    with open(os.path.join(out_dir, "step_hlo.txt"), "w") as f:
        f.write(hlo)
    table = op_table(glob.glob(os.path.join(trace, "**", "*.xplane.pb"), recursive=True)[0], hlo)
    total = sum(table.values())
    print(f"{args.model} {'fwd' if args.fwd else 'fwd+bwd'} {args.batch}x{args.length}: wall {wall * 1e3:.0f} ms; "
          f"thread time of compiled ops {total / 1e6:.0f} ms; trace + HLO in {out_dir}")
    print(f"{'thread ms':>10} {'share':>6}  op kind / shape / model path")
    for (kind, shape, path), ns in table.most_common(args.top):
        print(f"{ns / 1e6:10.1f} {ns / total:6.1%}  {kind} {shape} {path[-90:]}")
    return table


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
