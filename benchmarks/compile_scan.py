"""Compile time of one train step (loss, grads, Adam update), unrolled vs scanned layers (``config.scan_layers``),
per remat policy and precision, for a deep tiny model of each transformer family.

    python benchmarks/compile_scan.py --family bert --layers 24    # JSON: benchmarks/results/compile_scan.json

Reports, per variant, ``compile_s`` (``jit(...).lower(...).compile()``: trace + XLA compile) and ``step_ms``
(the median of a few executed steps). A scanned stack compiles one layer, so its compile time does not grow
with depth; an unrolled one compiles every layer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402

from diffjax.models import bert, llama, t5  # noqa: E402
from diffjax.models.options import ModelOptions  # noqa: E402


def build(family: str, layers: int, width: int):
    """(model, init args, loss(model, params) over a fixed batch) of a tiny ``family`` model with ``layers``."""
    rs = np.random.RandomState(0)
    ids = jnp.asarray(rs.randint(1, 512, (8, 64)))
    if family == "bert":
        cfg = bert.BertConfig(vocab_size=512, hidden_size=width, num_layers=layers, num_heads=4,
                              intermediate_size=4 * width, max_position_embeddings=128)
        model, args = bert.BertEncoder(cfg), (ids,)

        def logits(m, p):
            return m.apply({"params": p}, ids)["logits"]
    elif family == "llama":
        cfg = llama.LlamaConfig(vocab_size=512, hidden_size=width, intermediate_size=4 * width,
                                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2)
        model, args = llama.Llama(cfg), (ids,)

        def logits(m, p):
            return m.apply({"params": p}, ids)
    else:
        cfg = t5.T5Config(vocab_size=512, d_model=width, d_kv=width // 4, d_ff=4 * width, num_layers=layers,
                          num_heads=4, feed_forward_proj="gated-gelu", dropout_rate=0.0)
        model, args = t5.T5(cfg), (ids, ids)

        def logits(m, p):
            return m.apply({"params": p}, ids, ids)

    def loss(m, p):
        lg = logits(m, p)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(lg), ids[..., None], -1))

    return model, args, loss


def measure(model, args, loss, options: ModelOptions, steps: int) -> dict:
    m = model.with_options(options)
    params = jax.jit(m.init)(jax.random.key(0), *args)["params"]
    opt = optax.adam(1e-3)
    state = opt.init(params)

    def step(p, s):
        value, g = jax.value_and_grad(lambda q: loss(m, q))(p)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, value

    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(params, state).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        params, state, value = compiled(params, state)
        value.block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"scan_layers": options.scan_layers, "remat": options.remat, "precision": options.precision,
            "compile_s": round(compile_s, 2), "step_ms": round(1e3 * float(np.median(times)), 1),
            "loss": float(value)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=("bert", "llama", "t5"), default="bert")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--remats", default="none,full,dots_saveable")
    ap.add_argument("--precisions", default="fp32")
    ap.add_argument("--json", default=_machine.default_json_path("compile_scan"),
                    help="write the results here (default benchmarks/results/compile_scan.json; '' for none)")
    a = ap.parse_args(argv)
    info = _machine.machine_info()
    model, args, loss = build(a.family, a.layers, a.width)
    rows = []
    for precision in a.precisions.split(","):
        for remat in a.remats.split(","):
            for scan in (False, True):
                row = measure(model, args, loss, ModelOptions(scan_layers=scan, remat=remat, precision=precision),
                              a.steps)
                print(json.dumps(row), flush=True)
                rows.append(row)
    if a.json:
        payload = {"family": a.family, "layers": a.layers, "width": a.width, "rows": rows,
                   "command": " ".join(["python", "benchmarks/compile_scan.py"] + (argv or sys.argv[1:]))}
        _machine.write_json(a.json, payload, info)


if __name__ == "__main__":
    main()
