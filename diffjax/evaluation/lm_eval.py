"""lm-evaluation-harness's model ``diffjax``: any trained diffjax text run (``masked_lm``, ``ar2diff``) served
through ``evaluation/harness.RunServer``. Needs the extra (``pip install .[eval]``); the core never imports it.

    python -m diffjax.evaluation.lm_eval make-tasks --out /tmp/diffjax_tasks
    HF_DATASETS_OFFLINE=1 python -m diffjax.evaluation.lm_eval run --model diffjax \\
        --model_args workdir=/tmp/rdm,mc_samples=32,seed=0,decoder=threshold \\
        --tasks diffjax_headline_mc,diffjax_headline_unshuffle --include_path /tmp/diffjax_tasks
    python -m diffjax.evaluation.lm_eval seed-spread --workdir /tmp/rdm --tasks_dir /tmp/diffjax_tasks --seeds 5

``run`` is ``lm_eval``'s own command line with this module imported first (which registers the model); from
Python: ``import diffjax.evaluation.lm_eval`` then ``lm_eval.simple_evaluate(model="diffjax", model_args=...)``.
``model_args``: ``workdir`` (required), ``mc_samples`` (32: MC samples of the ELBO per request), ``seed`` (0),
``batch_size`` (rows per global batch; 0 = the task's ``eval_batch_size``), and any other ``name=value`` is the
run's ``config.task.name`` (``decoder=threshold``, ``threshold=0.8``; dotted names reach other fields).
``seed-spread`` prints the MC-ELBO's standard error over seeds on the multiple-choice task's requests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from diffjax.evaluation import example_tasks
from diffjax.evaluation.harness import RunServer



@register_model("diffjax")
class DiffjaxLM(LM):
    """The harness's view of a ``RunServer`` (module docstring)."""

    def __init__(self, workdir: str, mc_samples: int = 32, seed: int = 0, batch_size=0, max_batch_size=None,
                 device=None, **task_overrides):
        super().__init__()
        del max_batch_size, device  # the run's mesh decides placement
        size = 0 if batch_size in (None, "auto", "") else int(str(batch_size).split(":")[0])
        self.server = RunServer.from_workdir(str(workdir), mc_samples=int(mc_samples), seed=int(seed),
                                             batch_size=size, **task_overrides)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return self.server.loglikelihood([tuple(r.args) for r in requests])

    def loglikelihood_rolling(self, requests) -> list[float]:
        return self.server.loglikelihood_rolling([r.args[0] for r in requests])

    def generate_until(self, requests) -> list[str]:
        items = []
        for r in requests:
            context, kwargs = r.args
            until = kwargs.get("until") or []
            items.append((context, [until] if isinstance(until, str) else list(until), int(kwargs.get("max_gen_toks", 0))))
        return self.server.generate_until(items)


def _seed_spread(args) -> dict:
    with open(os.path.join(args.tasks_dir, "headlines.jsonl")) as f:
        docs = [json.loads(line) for line in f][: args.num_docs]
    requests = [(d["context"], " " + c) for d in docs for c in d["choices"]]
    server = RunServer.from_workdir(args.workdir, mc_samples=args.mc_samples)
    res = server.seed_spread(requests, list(range(args.seeds)))
    return {"workdir": args.workdir, "requests": len(requests), "mc_samples": args.mc_samples, "seeds": args.seeds,
            "mean_stderr": res["mean_stderr"],
            "mean_abs_log_likelihood": float(sum(abs(p["mean"]) for p in res["per_request"]) / len(requests))}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:
        from lm_eval.__main__ import cli_evaluate

        sys.argv = ["lm_eval"] + argv[1:]
        cli_evaluate()
        return
    p = argparse.ArgumentParser(prog="python -m diffjax.evaluation.lm_eval")
    sub = p.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-tasks", help="write the example task YAMLs and their JSONL into --out")
    mk.add_argument("--out", required=True)
    sp = sub.add_parser("seed-spread", help="the MC-ELBO's standard error over seeds on the multiple-choice requests")
    sp.add_argument("--workdir", required=True)
    sp.add_argument("--tasks_dir", required=True)
    sp.add_argument("--seeds", type=int, default=5)
    sp.add_argument("--mc_samples", type=int, default=32)
    sp.add_argument("--num_docs", type=int, default=20)
    sub.add_parser("run", help="lm_eval's command line (every lm_eval flag), with the diffjax model registered")
    args = p.parse_args(argv)
    if args.cmd == "make-tasks":
        for path in example_tasks.write_example_tasks(args.out):
            print(path)
    elif args.cmd == "seed-spread":
        print(json.dumps(_seed_spread(args), indent=1))


if __name__ == "__main__":
    main()
