"""Decoding speed and quality of a trained masked-LM run (``configs/rdm_minilm_demo.py``) by decoder and K/V cache
(issue 27): tokens/s, model calls per generated token and the task's BLEU / F1 / exact match on the held-out set.

    python benchmarks/cache_demo.py --workdir=/tmp/rdm --gen_length=256 --examples=50

Variants (``--variants``, comma-separated): ``topk50`` = the paper's 50-step top-k without a cache;
``thr:none`` / ``thr:prefix`` / ``thr:dual`` = threshold decoding in ``--num_blocks`` blocks with that cache
(block refresh, as Fast-dLLM). Every variant decodes the same held-out prompts with one length (length head,
``length_beam=1``) in rows of ``--gen_length`` slots. Each variant is loaded, compiled by one untimed decode,
then timed ``--repeats`` times (median; ``--repeats=0``: the first call is the time, compile included, for
variants whose run dwarfs their compile); the variants run back to back in the order given, ``--rounds``
times (A/B pairs on a shared machine). tokens/s = generated tokens / seconds of one decode of the set.
BLEU: the run's convention (``bleu_tokenizer`` / ``bleu_lowercase``; the demo's: sacrebleu 13a, lowercased).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine  # noqa: E402

from diffjax.inference import load_run  # noqa: E402

VARIANTS = {
    "topk50": {"task.decoder": "topk", "task.num_steps": 50},
    "thr:none": {"task.decoder": "block", "task.block_inner": "threshold", "task.cache": "none"},
    "thr:prefix": {"task.decoder": "block", "task.block_inner": "threshold", "task.cache": "prefix"},
    "thr:dual": {"task.decoder": "block", "task.block_inner": "threshold", "task.cache": "dual"},
}


def measure(workdir: str, overrides: dict, repeats: int) -> dict:
    run = load_run(workdir, **overrides)
    task, params, ctx = run.task, run.params, run.setup.context
    es = task.eval_set()
    rng = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    out = task.decode(params, rng, es.inputs, ctx)  # compile + one run
    first = time.perf_counter() - t0
    times = [] if repeats else [first]
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = task.decode(params, rng, es.inputs, ctx)
        times.append(time.perf_counter() - t0)
    hyps = task.texts(es.inputs, out["tokens"])
    m = task.text_metrics(hyps, es.references, es.tasks)
    gen = int(np.sum(out["generated"]))
    sec = statistics.median(times)
    return dict(seconds=sec, first_call_seconds=first, includes_compile=not repeats, tokens_per_s=gen / sec, calls_per_token=float(np.sum(out["decoder_calls"]) / gen),
                generated=gen, examples=len(hyps), bleu=m["bleu"], squad_f1=m["squad_f1"],
                exact_match=m["exact_match"], first_output=hyps[0])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--variants", default="topk50,thr:none,thr:prefix,thr:dual")
    p.add_argument("--gen_length", type=int, default=256)
    p.add_argument("--examples", type=int, default=50)
    p.add_argument("--num_blocks", type=int, default=4)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--num_steps_block", type=int, default=16, help="threshold steps at most per block")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", "--json", dest="out", default=_machine.default_json_path("cache_demo"),
                   help="write the results here (default benchmarks/results/cache_demo.json; '' for none)")
    args = p.parse_args()
    base = {"task.gen_length": args.gen_length, "task.length_beam": 1, "task.eval_max_examples": args.examples,
            "task.eval_batch_size": args.examples, "task.num_blocks": args.num_blocks, "task.threshold": args.threshold}
    rows = []
    for r in range(args.rounds):
        for name in args.variants.split(","):
            ov = dict(base, **VARIANTS[name])
            if name.startswith("thr:"):
                ov["task.num_steps"] = args.num_steps_block
            res = dict(variant=name, round=r, **measure(args.workdir, ov, args.repeats))
            rows.append(res)
            print(json.dumps(res), flush=True)
    if args.out:
        _machine.write_json(args.out, dict(benchmark="cache_demo", rows=rows), _machine.machine_info())


if __name__ == "__main__":
    main()
