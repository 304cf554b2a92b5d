"""orbax checkpoints: keep-K, mismatch errors naming tree paths, corruption, snapshots, and a
SIGKILLed CLI run that resumes to params bit-identical to an uninterrupted run."""

import glob
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffjax.checkpoints import orbax as ck
from diffjax.train import trainer
from diffjax.train.metrics import read_metrics
from diffjax.train.state import TrainState
from tests._config_util import small_config
from tests._sigkill import kill_then_rerun

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "gaussian2d.py")


def make_state(hidden=4, step=0):
    params = {"dense": {"kernel": jnp.arange(3 * hidden, dtype=jnp.float32).reshape(3, hidden) + step,
                        "bias": jnp.zeros(hidden)}}
    opt = optax.adam(1e-3)
    return TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=opt.init(params),
                      rng=jax.random.PRNGKey(step))


def test_save_keep_restore_roundtrip(tmp_path):
    c = ck.Checkpointer(str(tmp_path), keep=2)
    try:
        for s in (1, 2, 3):
            c.save(s, make_state(step=s))
        c.wait()
        assert c.all_steps() == [2, 3] and c.latest_step() == 3
        restored = c.restore(3, make_state())
    finally:
        c.close()
    want = make_state(step=3)
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A fresh manager (new process) finds and reads the same checkpoint.
    c2 = ck.Checkpointer(str(tmp_path), keep=2)
    try:
        assert c2.latest_step() == 3
        assert int(c2.restore(3, make_state()).step) == 3
    finally:
        c2.close()


def test_mismatch_error_names_every_path_and_shape(tmp_path):
    c = ck.Checkpointer(str(tmp_path))
    try:
        c.save(1, make_state(hidden=4))
        c.wait()
        target = make_state(hidden=6)
        target = target.replace(params={**target.params, "extra": jnp.zeros(2)},
                                opt_state=optax.adam(1e-3).init({**target.params, "extra": jnp.zeros(2)}))
        with pytest.raises(ck.CheckpointMismatchError) as e:
            c.restore(1, target)
    finally:
        c.close()
    msg = str(e.value)
    assert "shape/dtype mismatch: params/dense/kernel: stored (3, 4) float32, expected (3, 6) float32" in msg
    assert "shape/dtype mismatch: opt_state/0/mu/dense/bias: stored (4,) float32, expected (6,) float32" in msg
    assert "missing in checkpoint" in msg and "params/extra (expected shape (2,) float32)" in msg
    assert "use the original config, or a fresh --workdir" in msg


def test_corrupt_checkpoint_is_reported(tmp_path):
    c = ck.Checkpointer(str(tmp_path))
    c.save(1, make_state())
    c.close()
    for f in glob.glob(str(tmp_path / "1" / "**" / "d" / "*"), recursive=True):
        with open(f, "wb") as fh:
            fh.write(b"garbage")
    c = ck.Checkpointer(str(tmp_path))
    try:
        with pytest.raises(ck.CheckpointCorruptError) as e:
            c.restore(1, make_state())
    finally:
        c.close()
    assert f"checkpoint {tmp_path}/1" in str(e.value) and "Delete that step directory" in str(e.value)
    assert len(str(e.value)) < 800


def test_snapshot_roundtrip(tmp_path):
    p = make_state(step=5).params
    ck.save_snapshot(str(tmp_path), 5, p)
    assert ck.snapshot_steps_on_disk(str(tmp_path)) == [5]
    back = ck.load_snapshot(str(tmp_path), 5, make_state().params)
    np.testing.assert_array_equal(np.asarray(back["dense"]["kernel"]), np.asarray(p["dense"]["kernel"]))
    with pytest.raises(ck.CheckpointMismatchError, match="dense/kernel: stored"):
        ck.load_snapshot(str(tmp_path), 5, make_state(hidden=2).params)


def test_resume_with_changed_model_gives_tree_path_error(tmp_path):
    overrides = {"train.num_steps": 2, "train.eval_at_end": False}
    trainer.train(small_config(**overrides), str(tmp_path))
    with pytest.raises(trainer.WorkdirConfigMismatch, match="task.model.hidden: workdir has 32, command line has 16"):
        trainer.train(small_config(**overrides, **{"task.model.hidden": 16}), str(tmp_path))
    with pytest.raises(ck.CheckpointMismatchError) as e:
        trainer.train(small_config(**overrides, **{"task.model.hidden": 16, "overwrite": True}), str(tmp_path))
    assert "params/hidden_0/kernel: stored (34, 32) float32, expected (34, 16) float32" in str(e.value)
    assert "ema_params/out/kernel: stored (32, 2) float32, expected (16, 2) float32" in str(e.value)


STEPS = 300
ARGS = ["--config.train.num_steps=%d" % STEPS, "--config.train.checkpoint_every=20", "--config.train.log_every=10",
        "--config.train.eval_at_end=False", "--config.task.model.hidden=16", "--config.train.global_batch_size=16"]


@pytest.mark.slow
def test_sigkill_then_rerun_is_bit_identical(tmp_path):
    """Acceptance: SIGKILL a `python -m diffjax train` run mid-way, rerun the same command: the final
    params equal an uninterrupted run's bit for bit."""
    workdir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "diffjax", "train", f"--config={CONFIG}:small", f"--workdir={workdir}", *ARGS]
    killed_at, _ = kill_then_rerun(cmd, cwd=REPO, workdir=workdir, kill_at=f"step 50/{STEPS}", deadline_s=120,
                                   rerun_timeout_s=180)
    assert 20 <= killed_at < STEPS  # really killed mid-way, after a checkpoint

    config = small_config(**{"train.num_steps": STEPS, "train.checkpoint_every": 20, "train.log_every": 10,
                             "train.eval_at_end": False, "task.model.hidden": 16, "train.global_batch_size": 16})
    reference = trainer.train(config, str(tmp_path / "straight"))
    c = ck.Checkpointer(str(workdir / "checkpoints"))
    try:
        resumed = c.restore(STEPS, trainer.build(config).abstract_state)
    finally:
        c.close()
    steps = [r["step"] for r in read_metrics(str(workdir))]
    assert steps == list(range(10, STEPS + 1, 10))  # rows after the killed run's checkpoint were dropped
    for name in ("params", "ema_params", "opt_state", "rng", "step"):
        a = jax.tree_util.tree_leaves(getattr(resumed, name))
        b = jax.tree_util.tree_leaves(getattr(reference, name))
        assert len(a) == len(b)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)


def test_one_mismatch_error_class_and_one_flattener():
    from diffjax.checkpoints import errors, hf
    from diffjax.checkpoints.trees import flatten_tree

    assert ck.CheckpointMismatchError is errors.CheckpointMismatchError is hf.CheckpointMismatchError
    assert issubclass(errors.CheckpointMismatchError, ValueError)
    tree = {"params": {"dense": {"kernel": np.zeros((2, 3)), "bias": np.zeros(3)}, "layers": [np.ones(1), None]},
            "step": 7}
    flat = flatten_tree(tree)
    assert set(flat) == {"params/dense/kernel", "params/dense/bias", "params/layers/0", "step"}
    assert flat["step"] == 7 and flat["params/dense/kernel"].shape == (2, 3)
    assert set(flatten_tree(tree, separator=None)) == {("params", "dense", "kernel"), ("params", "dense", "bias"),
                                                       ("params", "layers", "0"), ("step",)}
    assert set(flatten_tree(tree, separator=".")) == {"params.dense.kernel", "params.dense.bias", "params.layers.0",
                                                      "step"}
