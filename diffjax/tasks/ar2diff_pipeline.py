"""AR2Diff in one command: the three stages chained through workdirs, or the comparison arms.

    python -m diffjax.tasks.ar2diff_pipeline --config=configs/ar2diff_smollm2_demo.py[:tiny] --root=DIR
        [--compare] [--arms=ar,ar2diff,n0,scratch,scratch2] [--set FIELD=VALUE ...]

Each stage is one ``python -m diffjax train`` process (so this module imports nothing of the
trainer), ``--config.task.stage=S --config.init_from=<previous workdir> --config.train.num_steps=<stageS.steps>
--config.optimizer.learning_rate=<stageS.learning_rate>``; a stage whose workdir already holds
``results.json`` is skipped, and an interrupted stage resumes from its own checkpoints when rerun.

Default (chain): ``DIR/stage1`` (AR prefix LM; skipped when ``stage1.steps`` is 0 and the config
names a pretrained ``model_source``, which then seeds stage 2) -> ``DIR/stage2`` -> ``DIR/stage3``.

``--compare``: equal total training steps S = stage2.steps + stage3.steps after the pretrained
start P (``model_source``, e.g. the SmolLM2 GGUF; for a config without one, ``DIR/pretrain`` =
stage 1 for ``stage1.steps`` from random init):
  ar       stage 1 (AR finetune on the stage-3 task data) for S steps from P, AR decoding;
  ar2diff  stage 2 for N = stage2.steps from P, then stage 3 for stage3.steps (AR2Diff, N > 0);
  n0       stage 3 for S steps from P (N = 0);
  scratch  stage 3 for S steps from random init (diffusion from scratch, same architecture);
  scratch2 stage 2 for N steps from random init (the adaptation baseline for ar2diff's stage 2).
Stage-2 runs evaluate the held-out diffusion loss every ``--stage2_eval_every`` steps. Writes
``DIR/comparison.json``, ``DIR/comparison.md`` and ``DIR/loss.png`` (``ar2diff_plots``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ARMS = ("ar", "ar2diff", "n0", "scratch", "scratch2")


def load_config(spec: str):
    """``path.py[:arg]`` -> the config (as the CLI reads it)."""
    import importlib.util

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("ar2diff_pipeline_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def run_stage(config_spec: str, workdir: str, stage: int, steps: int, lr: float, init_from: str,
              extra: list[str] = (), log=print) -> dict:
    """One ``python -m diffjax train`` stage; returns its results.json (skips a finished stage)."""
    results = os.path.join(workdir, "results.json")
    if os.path.isfile(results):
        log(f"[ar2diff] {workdir}: done already (results.json), skipped")
        with open(results) as f:
            return json.load(f)
    cmd = [sys.executable, "-m", "diffjax", "train", f"--config={config_spec}", f"--workdir={workdir}",
           f"--config.task.stage={stage}", f"--config.train.num_steps={steps}",
           f"--config.optimizer.learning_rate={lr}", f"--config.init_from={init_from}", *extra]
    log("[ar2diff] " + " ".join(cmd))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    with open(results) as f:
        res = json.load(f)
    res["wall_seconds"] = seconds
    with open(results, "w") as f:
        json.dump(res, f, indent=2, sort_keys=True)
    return res


def _overrides(pairs) -> list[str]:
    return [f"--config.{p}" for p in pairs or ()]


def chain(config_spec: str, root: str, extra: list[str]) -> dict:
    cfg = load_config(config_spec)
    t = cfg.task
    source = os.path.expanduser(t.model_source) if t.model_source else ""
    out = {}
    if int(t.stage1.steps) > 0 or not source:
        out["stage1"] = run_stage(config_spec, os.path.join(root, "stage1"), 1, int(t.stage1.steps),
                                  float(t.stage1.learning_rate), source, extra)
        source = os.path.join(root, "stage1")
    out["stage2"] = run_stage(config_spec, os.path.join(root, "stage2"), 2, int(t.stage2.steps),
                              float(t.stage2.learning_rate), source, extra + ["--config.task.eval_decode=False"])
    out["stage3"] = run_stage(config_spec, os.path.join(root, "stage3"), 3, int(t.stage3.steps),
                              float(t.stage3.learning_rate), os.path.join(root, "stage2"), extra)
    return out


def compare(config_spec: str, root: str, arms, extra: list[str], stage2_eval_every: int) -> dict:
    cfg = load_config(config_spec)
    t = cfg.task
    n, m = int(t.stage2.steps), int(t.stage3.steps)
    total = n + m
    source = os.path.expanduser(t.model_source) if t.model_source else ""
    if not source:  # no pretrained model: pretrain an AR model first (stage 1 from random init)
        run_stage(config_spec, os.path.join(root, "pretrain"), 1, int(t.stage1.steps), float(t.stage1.learning_rate),
                  "", extra)
        source = os.path.join(root, "pretrain")
    s2_extra = extra + ["--config.task.eval_decode=False", f"--config.train.eval_every={stage2_eval_every}"]
    lr2, lr3 = float(t.stage2.learning_rate), float(t.stage3.learning_rate)
    task_data = [f"--config.task.stage1.{k}={t.stage3[k]}" for k in ("data", "derive")]
    rows = {}
    for arm in arms:
        d = os.path.join(root, arm)
        if arm == "ar":
            rows[arm] = run_stage(config_spec, d, 1, total, lr3, source, extra + task_data)
        elif arm == "ar2diff":
            s2 = run_stage(config_spec, os.path.join(d, "stage2"), 2, n, lr2, source, s2_extra)
            rows[arm] = run_stage(config_spec, os.path.join(d, "stage3"), 3, m, lr3, os.path.join(d, "stage2"), extra)
            rows[arm]["stage2_heldout_loss"] = s2["heldout_loss"]
            rows[arm]["wall_seconds"] = rows[arm].get("wall_seconds", 0) + s2.get("wall_seconds", 0)
        elif arm == "n0":
            rows[arm] = run_stage(config_spec, d, 3, total, lr3, source, extra)
        elif arm == "scratch":
            rows[arm] = run_stage(config_spec, d, 3, total, lr3, "", extra)
        elif arm == "scratch2":
            rows[arm] = run_stage(config_spec, d, 2, n, lr2, "", s2_extra)
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="configs/NAME.py[:arg]")
    ap.add_argument("--root", required=True, help="directory for the stage workdirs")
    ap.add_argument("--compare", action="store_true", help="run the comparison arms instead of one chain")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--stage2_eval_every", type=int, default=5)
    ap.add_argument("--set", action="append", metavar="FIELD=VALUE", help="config override for every stage")
    a = ap.parse_args(argv)
    os.makedirs(a.root, exist_ok=True)
    extra = _overrides(a.set)
    if not a.compare:
        out = chain(a.config, a.root, extra)
        print(json.dumps({k: {x: v.get(x) for x in ("heldout_loss", "exact_match", "bleu") if x in v}
                          for k, v in out.items()}, indent=2))
        return out
    comp = compare(a.config, a.root, [x for x in a.arms.split(",") if x], extra, a.stage2_eval_every)
    with open(os.path.join(a.root, "comparison.json"), "w") as f:
        json.dump(comp, f, indent=2, sort_keys=True)
    md = table(comp)
    with open(os.path.join(a.root, "comparison.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    from diffjax.tasks.ar2diff_plots import plot_runs

    runs = {arm: os.path.join(a.root, arm) for arm in comp["arms"]}
    if "ar2diff" in runs:
        runs["ar2diff/stage2"] = os.path.join(runs.pop("ar2diff"), "stage2")
        runs["ar2diff/stage3"] = os.path.join(a.root, "ar2diff", "stage3")
    print("wrote", plot_runs(runs, os.path.join(a.root, "loss.png")))
    return comp


if __name__ == "__main__":
    main()
