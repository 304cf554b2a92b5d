"""AR2Diff (papers.md 001) in one command: the three stages chained through workdirs, or the comparison arms,
each stage trained in this process by ``diffjax.train.trainer.train``:

    python -m diffjax pipeline --config=configs/ar2diff_smollm2_demo.py[:tiny] --root=DIR
        [--compare] [--arms=ar,ar2diff,n0,scratch,scratch2] [--stage2_eval_every=5] [--config.FIELD=VALUE ...]

A stage is the config (with its ``--config.`` overrides) and ``task.stage=S``, ``init_from=<previous
workdir>``, ``train.num_steps=<stageS.steps>``, ``optimizer.learning_rate=<stageS.learning_rate>`` (these
four the pipeline sets); a stage whose workdir already holds ``results.json`` is skipped, and an
interrupted stage resumes from its own checkpoints when rerun.

The pretrained start P is the config's ``init_from`` (e.g. the SmolLM2 GGUF): it gives the weights and the
architecture of every stage that chains from it. With ``init_from=""`` the architecture is the task's
(``task.architecture``, or the ``task.model`` fields) and stage 1 trains from random init.

Default (chain): ``DIR/stage1`` (AR prefix LM from P; skipped when ``stage1.steps`` is 0 and P is set, P
then seeds stage 2) -> ``DIR/stage2`` -> ``DIR/stage3``.

``--compare``: equal total training steps S = stage2.steps + stage3.steps after P (for a config without
one, ``DIR/pretrain`` = stage 1 for ``stage1.steps`` from random init):
  ar       stage 1 (AR finetune on the stage-3 task data) for S steps from P, AR decoding;
  ar2diff  stage 2 for N = stage2.steps from P, then stage 3 for stage3.steps (AR2Diff, N > 0);
  n0       stage 3 for S steps from P (N = 0);
  scratch  stage 3 for S steps from random init (diffusion from scratch, same architecture: P's,
           as ``task.architecture``);
  scratch2 stage 2 for N steps from random init (the adaptation baseline for ar2diff's stage 2).
Stage-2 runs evaluate the held-out diffusion loss every ``--stage2_eval_every`` steps. Writes
``DIR/comparison.json``, ``DIR/comparison.md`` and ``DIR/loss.png`` (``train/loss_plots.py``).
"""

from __future__ import annotations

import json
import os
import time

from diffjax.checkpoints.pretrained import architecture_source
from diffjax.train import trainer

ARMS = ("ar", "ar2diff", "n0", "scratch", "scratch2")


def stage_config(config, stage: int, steps: int, lr: float, init_from: str, fields: dict | None = None):
    """A copy of ``config`` for one stage: ``task.stage``, ``train.num_steps``, ``optimizer.learning_rate``,
    ``init_from`` and ``fields`` ({"a.b": value}) set."""
    c = config.copy_and_resolve_references()
    c.update_from_flattened_dict({"task.stage": stage, "train.num_steps": steps, "optimizer.learning_rate": lr,
                                  "init_from": init_from, **(fields or {})})
    return c


def run_stage(config, workdir: str, stage: int, steps: int, lr: float, init_from: str, fields: dict | None = None,
              log=print) -> dict:
    """One stage trained in this process; returns its results.json (skips a finished stage)."""
    results = os.path.join(workdir, "results.json")
    if os.path.isfile(results):
        log(f"[ar2diff] {workdir}: done already (results.json), skipped")
        with open(results) as f:
            return json.load(f)
    log(f"[ar2diff] {workdir}: stage {stage}, {steps} steps, lr {lr}, init_from={init_from!r}"
        + "".join(f", {k}={v!r}" for k, v in (fields or {}).items()))
    t0 = time.perf_counter()
    trainer.train(stage_config(config, stage, steps, lr, init_from, fields), workdir)
    seconds = time.perf_counter() - t0
    with open(results) as f:
        res = json.load(f)
    res["wall_seconds"] = seconds
    with open(results, "w") as f:
        json.dump(res, f, indent=2, sort_keys=True)
    return res


def chain(config, root: str) -> dict:
    """Stages 1 (unless a pretrained ``init_from`` and no stage-1 steps), 2 and 3 under ``root``."""
    t = config.task
    source = config.init_from
    out = {}
    if int(t.stage1.steps) > 0 or not source:
        out["stage1"] = run_stage(config, os.path.join(root, "stage1"), 1, int(t.stage1.steps),
                                  float(t.stage1.learning_rate), source)
        source = os.path.join(root, "stage1")
    out["stage2"] = run_stage(config, os.path.join(root, "stage2"), 2, int(t.stage2.steps),
                              float(t.stage2.learning_rate), source, {"task.eval_decode": False})
    out["stage3"] = run_stage(config, os.path.join(root, "stage3"), 3, int(t.stage3.steps),
                              float(t.stage3.learning_rate), os.path.join(root, "stage2"))
    return out


def compare(config, root: str, arms, stage2_eval_every: int) -> dict:
    """The comparison arms (module docstring) under ``root``."""
    t = config.task
    n, m = int(t.stage2.steps), int(t.stage3.steps)
    total = n + m
    source = config.init_from
    # random-init arms: init_from "" and P's architecture (none: the task's own architecture fields)
    arch = architecture_source(source)
    scratch = {"task.architecture": arch} if arch else {}
    if not source:  # no pretrained model: pretrain an AR model first (stage 1 from random init)
        run_stage(config, os.path.join(root, "pretrain"), 1, int(t.stage1.steps), float(t.stage1.learning_rate), "")
        source = os.path.join(root, "pretrain")
    s2 = {"task.eval_decode": False, "train.eval_every": int(stage2_eval_every)}
    lr2, lr3 = float(t.stage2.learning_rate), float(t.stage3.learning_rate)
    task_data = {f"task.stage1.{k}": t.stage3[k] for k in ("data", "derive")}
    rows = {}
    for arm in arms:
        d = os.path.join(root, arm)
        if arm == "ar":
            rows[arm] = run_stage(config, d, 1, total, lr3, source, task_data)
        elif arm == "ar2diff":
            r2 = run_stage(config, os.path.join(d, "stage2"), 2, n, lr2, source, s2)
            rows[arm] = run_stage(config, os.path.join(d, "stage3"), 3, m, lr3, os.path.join(d, "stage2"))
            rows[arm]["stage2_heldout_loss"] = r2["heldout_loss"]
            rows[arm]["wall_seconds"] = rows[arm].get("wall_seconds", 0) + r2.get("wall_seconds", 0)
        elif arm == "n0":
            rows[arm] = run_stage(config, d, 3, total, lr3, source)
        elif arm == "scratch":
            rows[arm] = run_stage(config, d, 3, total, lr3, "", scratch)
        elif arm == "scratch2":
            rows[arm] = run_stage(config, d, 2, n, lr2, "", {**s2, **scratch})
        else:
            raise ValueError(f"unknown arm {arm!r}; known: {ARMS}")
    return {"total_steps": total, "stage2_steps": n, "stage3_steps": m, "source": source, "arms": rows}


def table(comp: dict) -> str:
    lines = ["| arm | steps | decoder | EM | BLEU | SQuAD F1 | held-out loss | wall s |", "|---|---|---|---|---|---|---|---|"]
    for arm, r in comp["arms"].items():
        steps = {"ar2diff": f"{comp['stage2_steps']}+{comp['stage3_steps']}", "scratch2": f"{comp['stage2_steps']} (stage 2)"}.get(
            arm, str(comp["total_steps"]))
        f = lambda k, fmt="{:.3f}": fmt.format(r[k]) if k in r else "-"  # noqa: E731
        lines.append(f"| {arm} | {steps} | {r.get('decoder', '-')} | {f('exact_match')} | {f('bleu', '{:.2f}')} | "
                     f"{f('squad_f1')} | {f('heldout_loss', '{:.4f}')} | {f('wall_seconds', '{:.0f}')} |")
    return "\n".join(lines)


def run_pipeline(config, root: str, *, compare_arms: bool = False, arms=ARMS, stage2_eval_every: int = 5) -> dict:
    """``python -m diffjax pipeline``: the chain, or (``compare_arms``) the comparison with its table and plot."""
    os.makedirs(root, exist_ok=True)
    if not compare_arms:
        out = chain(config, root)
        print(json.dumps({k: {x: v.get(x) for x in ("heldout_loss", "exact_match", "bleu") if x in v}
                          for k, v in out.items()}, indent=2))
        return out
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; known: {ARMS}")
    comp = compare(config, root, list(arms), stage2_eval_every)
    with open(os.path.join(root, "comparison.json"), "w") as f:
        json.dump(comp, f, indent=2, sort_keys=True)
    md = table(comp)
    with open(os.path.join(root, "comparison.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    from diffjax.train.loss_plots import plot_runs

    runs = {arm: os.path.join(root, arm) for arm in comp["arms"]}
    if "ar2diff" in runs:
        runs["ar2diff/stage2"] = os.path.join(runs.pop("ar2diff"), "stage2")
        runs["ar2diff/stage3"] = os.path.join(root, "ar2diff", "stage3")
    print("wrote", plot_runs(runs, os.path.join(root, "loss.png")))
    return comp
