"""AR2Diff stages chain through workdirs and resume (tiny random Llama, configs/ar2diff_smollm2_demo.py:tiny):
stage 1 (AR prefix LM) -> stage 2 (diffusion, init_from stage 1: every param loaded, none fresh) ->
stage 3 (init_from stage 2); stage 3 run 1 step then resumed to 2 == 2 steps uninterrupted, bit for bit;
loss.png from the runs' metrics.jsonl."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from diffjax.cli import _load_config_file
from tests._config_util import REPO, set_fields

CONFIG = os.path.join(REPO, "configs", "ar2diff_smollm2_demo.py")


def _cfg(tmp, stage, steps, init_from="", eval_at_end=False):
    c = _load_config_file(CONFIG + ":tiny")
    with c.unlocked():
        set_fields(c, {"task.cache_dir": str(tmp / "cache"), "task.eval_examples": 8, "task.stage": stage,
                       "train.num_steps": steps, "init_from": init_from, "train.eval_at_end": eval_at_end,
                       "train.checkpoint_every": 1, "train.global_batch_size": 4})
    return c


@pytest.mark.slow  # three tiny trainings + one resume: ~40 s on 2 idle cores, several minutes under heavy load
def test_stages_chain_and_resume(tmp_path):
    from diffjax.train.pipeline import table
    from diffjax.train.loss_plots import plot_runs
    from diffjax.train import trainer

    s1, s2 = str(tmp_path / "s1"), str(tmp_path / "s2")
    st1 = trainer.train(_cfg(tmp_path, 1, 2), s1)
    st2 = trainer.train(_cfg(tmp_path, 2, 1, init_from=s1), s2)
    rep = json.load(open(os.path.join(s2, "init_from.json")))
    assert rep["fresh"] == [] and rep["unused"] == [] and len(rep["loaded"]) == len(jax.tree_util.tree_leaves(st1.params))
    # stage 2 started from stage 1's final params: its first update moved them by one Adam step only
    d = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
            for a, b in zip(jax.tree_util.tree_leaves(st1.params), jax.tree_util.tree_leaves(st2.params)))
    assert 0 < d < 5e-3  # lr 1e-3, one clipped Adam step
    a, b = str(tmp_path / "s3a"), str(tmp_path / "s3b")
    full = trainer.train(_cfg(tmp_path, 3, 2, init_from=s2), a)
    trainer.train(_cfg(tmp_path, 3, 1, init_from=s2), b)
    resumed = trainer.train(_cfg(tmp_path, 3, 2, init_from=s2), b)  # resumes from its own step-1 checkpoint
    for x, y in zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    png = plot_runs({"stage1": s1, "stage2": s2, "stage3": a}, str(tmp_path / "loss.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    md = table({"total_steps": 2, "stage2_steps": 1, "stage3_steps": 1,
                "arms": {"n0": {"decoder": "refine", "exact_match": 0.5, "bleu": 1.0, "heldout_loss": 2.0}}})
    assert "| n0 | 2 | refine | 0.500 |" in md


def test_pipeline_verb_runs_the_stages_in_process(tmp_path, monkeypatch):
    """``python -m diffjax pipeline``: each stage is ``trainer.train`` in this process with the stage's fields and
    ``init_from`` the previous workdir; a stage with results.json is skipped (resume); no subprocess."""
    import subprocess

    from diffjax import cli
    from diffjax.train import pipeline, trainer

    calls = []

    def fake_train(config, workdir, **kw):
        calls.append((workdir, int(config.task.stage), int(config.train.num_steps), config.init_from,
                      bool(config.task.eval_decode), config.task.cache_dir))
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({"heldout_loss": 1.0}, f)

    def no_subprocess(*a, **k):
        raise AssertionError("the pipeline shells out")

    monkeypatch.setattr(trainer, "train", fake_train)
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    root = str(tmp_path / "root")
    argv = ["diffjax", "pipeline", f"--config={CONFIG}:tiny", f"--root={root}", "--config.task.cache_dir=/tmp/c"]
    assert cli.main(argv) == 0
    t = _load_config_file(CONFIG + ":tiny").task
    assert calls == [
        (f"{root}/stage1", 1, int(t.stage1.steps), "", True, "/tmp/c"),
        (f"{root}/stage2", 2, int(t.stage2.steps), f"{root}/stage1", False, "/tmp/c"),
        (f"{root}/stage3", 3, int(t.stage3.steps), f"{root}/stage2", True, "/tmp/c")]
    assert json.load(open(f"{root}/stage3/results.json"))["wall_seconds"] >= 0
    calls.clear()
    assert cli.main(argv) == 0 and calls == []  # every stage done: all skipped
    assert pipeline.ARMS == ("ar", "ar2diff", "n0", "scratch", "scratch2")
    assert cli.main(["diffjax", "pipeline", f"--config={CONFIG}:tiny", f"--workdir={root}"]) == 2  # --root, not --workdir


def test_compare_arms_take_the_pretrained_start_from_init_from(tmp_path, monkeypatch):
    """``--compare``: P is ``config.init_from`` (no second field); the random-init arms (scratch, scratch2) run
    with ``init_from=""`` and P's architecture as ``task.architecture``; the others chain from P."""
    from diffjax.train import pipeline, trainer

    gguf = str(tmp_path / "m.gguf")
    open(gguf, "w").close()
    calls = {}

    def fake_train(config, workdir, **kw):
        calls[os.path.relpath(workdir, root)] = (int(config.task.stage), config.init_from, config.task.architecture)
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({"heldout_loss": 1.0}, f)

    monkeypatch.setattr(trainer, "train", fake_train)
    root = str(tmp_path / "root")
    c = _cfg(tmp_path, 3, 1, init_from=gguf)
    comp = pipeline.compare(c, root, list(pipeline.ARMS), 5)
    assert comp["source"] == gguf
    assert calls == {"ar": (1, gguf, ""), "ar2diff/stage2": (2, gguf, ""),
                     "ar2diff/stage3": (3, f"{root}/ar2diff/stage2", ""), "n0": (3, gguf, ""),
                     "scratch": (3, "", gguf), "scratch2": (2, "", gguf)}
    calls.clear()
    root = str(tmp_path / "root2")  # no pretrained start: stage 1 from random init first; task.model throughout
    pipeline.compare(_cfg(tmp_path, 3, 1), root, ["n0", "scratch"], 5)
    assert calls == {"pretrain": (1, "", ""), "n0": (3, f"{root}/pretrain", ""), "scratch": (3, "", "")}
