"""Trainer: NaN guard, gradient accumulation, EMA, snapshots, schedules, outputs, in-process resume."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffjax.checkpoints.orbax import Checkpointer
from diffjax.tasks.base import Task, register_task
from diffjax.train import trainer
from diffjax.train.config import base_config
from diffjax.train.metrics import read_metrics
from diffjax.train.optim import learning_rate_schedule
from tests._config_util import set_fields


class ToyLinear(Task):
    """Linear regression y = x @ w*: a loss that ignores rng, with an optional NaN batch."""

    name = "toy_linear"

    def __init__(self, cfg):
        self.cfg = cfg
        self.snapshot_steps = tuple(cfg.snapshot_steps)
        self.w_true = np.linspace(-1, 1, cfg.dim, dtype=np.float32)[:, None]
        self.eval_calls = []

    def init_params(self, rng):
        return {"dense": {"kernel": 0.1 * jax.random.normal(rng, (self.cfg.dim, 4)), "bias": jnp.zeros(4)},
                "head": {"kernel": 0.1 * jax.random.normal(jax.random.fold_in(rng, 1), (4, 1))}}

    def loss_fn(self, params, batch, rng):
        h = batch["x"] @ params["dense"]["kernel"] + params["dense"]["bias"]
        err = h @ params["head"]["kernel"] - batch["y"]
        loss = jnp.mean(err ** 2)
        return loss, {"abs_err": jnp.mean(jnp.abs(err))}

    def train_batches(self, start_step, *, global_batch_size, process_index=0, process_count=1):
        step = start_step
        while True:
            r = np.random.default_rng(step)
            x = r.standard_normal((global_batch_size, self.cfg.dim)).astype(np.float32)
            if step == self.cfg.nan_at_step:
                x[3, 1] = np.nan
            yield {"x": x, "y": x @ self.w_true}
            step += 1

    def evaluate(self, params, rng, workdir, **kwargs):
        self.eval_calls.append({"params": params, **kwargs})
        x = np.random.default_rng(123).standard_normal((64, self.cfg.dim)).astype(np.float32)
        loss, _ = self.loss_fn(params, {"x": x, "y": x @ self.w_true}, rng)
        return {"mse": float(loss), "nested": {"n": 64}}


@register_task("toy_linear")
def _toy_from_config(cfg):
    return ToyLinear(cfg)


def toy_config(**overrides):
    c = base_config()
    c.task = ml_collections.ConfigDict(dict(name="toy_linear", dim=8, nan_at_step=-1, snapshot_steps=()))
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.05
    c.optimizer.schedule = "constant"
    c.optimizer.grad_clip_norm = 0.0
    c.train.num_steps = 6
    c.train.global_batch_size = 16
    c.train.log_every = 2
    c.train.checkpoint_every = 2
    c.train.eval_at_end = False
    set_fields(c, overrides)
    c.lock()
    return c


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_nan_halts_with_message_and_keeps_last_good_checkpoint(tmp_path):
    config = toy_config(**{"task.nan_at_step": 4, "train.num_steps": 8})
    with pytest.raises(trainer.NonFiniteError) as e:
        trainer.train(config, str(tmp_path))
    msg = str(e.value)
    assert "non-finite loss or gradient at train step 5" in msg
    assert f"last good checkpoint is step 4 in {tmp_path}/checkpoints" in msg
    ckpt = Checkpointer(str(tmp_path / "checkpoints"))
    try:
        assert ckpt.all_steps() == [2, 4]  # nothing written at or after the bad step
        state = ckpt.restore(4, trainer.build(config).abstract_state)
    finally:
        ckpt.close()
    assert int(state.step) == 4 and all(np.isfinite(x).all() for x in leaves(state.params))
    # metrics.jsonl has rows only for finite steps.
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [2, 4]


def test_gradient_accumulation_matches_full_batch():
    """The toy loss ignores rng, so k micro-batches give the full-batch update (mean of means)."""
    out = []
    for k in (1, 4):
        config = toy_config(**{"train.accumulate_steps": k, "mesh_shape": (2, 2)})
        setup = trainer.build(config)
        state = setup.init_state()
        local = next(setup.task.train_batches(0, global_batch_size=16))
        step = setup.train_step
        new, metrics = step(state, setup.context.global_batch(local, 16))
        out.append((leaves(new.params), float(metrics["loss"]), float(metrics["abs_err"])))
    for a, b in zip(out[0][0], out[1][0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[0][1:], out[1][1:], rtol=1e-5)


def test_ema_follows_recurrence():
    d = 0.8
    config = toy_config(ema_decay=d)
    setup = trainer.build(config)
    state = setup.init_state()
    history = [leaves(state.params)]
    batches = setup.task.train_batches(0, global_batch_size=16)
    step = None
    for _ in range(2):
        local = next(batches)
        step = setup.train_step
        state, _ = step(state, setup.context.global_batch(local, 16))
        history.append(leaves(state.params))
    p0, p1, p2 = history
    for i, e in enumerate(leaves(state.ema_params)):
        np.testing.assert_allclose(e, d * d * p0[i] + d * (1 - d) * p1[i] + (1 - d) * p2[i], rtol=1e-5, atol=1e-6)
    assert not np.allclose(leaves(state.ema_params)[0], p2[0])


def test_ema_warmup_follows_litema_recurrence(tmp_path):
    """ema_warmup: decay min(d, (1+n)/(10+n)) at update n = 1, 2, ... (latent-diffusion LitEma),
    against a numpy loop over the raw params; d = 0.5 caps the decay from update n = 8 on."""
    d, n_steps = 0.5, 9
    config = toy_config(**{"ema_decay": d, "ema_warmup": True})
    setup = trainer.build(config)
    state = setup.init_state()
    ema = [x.astype(np.float64) for x in leaves(state.params)]
    batches = setup.task.train_batches(0, global_batch_size=16)
    step, decays = None, []
    for n in range(1, n_steps + 1):
        local = next(batches)
        step = setup.train_step
        state, _ = step(state, setup.context.global_batch(local, 16))
        decays.append(min(d, (1 + n) / (10 + n)))
        ema = [decays[-1] * e + (1 - decays[-1]) * p for e, p in zip(ema, leaves(state.params))]
    assert decays[0] == pytest.approx(2 / 11) and decays[6] < d and decays[7] == d  # both regimes hit
    for e, ref in zip(leaves(state.ema_params), ema):
        np.testing.assert_allclose(e, ref, rtol=1e-5, atol=1e-6)
    # Differs from the EMA without warm-up (decay d throughout) on the same params.
    plain = toy_config(**{"ema_decay": d})
    setup_p = trainer.build(plain)
    state_p = setup_p.init_state()
    step_p = setup_p.train_step
    for local in setup_p.task.train_batches(0, global_batch_size=16):
        state_p, _ = step_p(state_p, setup_p.context.global_batch(local, 16))
        if int(state_p.step) == n_steps:
            break
    for a, b in zip(leaves(state_p.params), leaves(state.params)):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(leaves(state_p.ema_params)[0], leaves(state.ema_params)[0], rtol=1e-3)
    # Resumable: the update count is the state's step, so 3 + 3 steps == 6 straight, bit for bit.
    straight = trainer.train(toy_config(**{"ema_decay": 0.9, "ema_warmup": True}), str(tmp_path / "a"))
    trainer.train(toy_config(**{"ema_decay": 0.9, "ema_warmup": True, "train.num_steps": 3}), str(tmp_path / "b"))
    resumed = trainer.train(toy_config(**{"ema_decay": 0.9, "ema_warmup": True}), str(tmp_path / "b"))
    for a, b in zip(leaves(straight.ema_params), leaves(resumed.ema_params)):
        np.testing.assert_array_equal(a, b)


def test_schedules():
    opt = ml_collections.ConfigDict(dict(learning_rate=1.0, warmup_steps=10, schedule="cosine", end_lr_factor=0.1))
    f = learning_rate_schedule(opt, 110)
    np.testing.assert_allclose([f(0), f(5), f(10), f(60), f(110)], [0.0, 0.5, 1.0, 0.55, 0.1], atol=1e-6)
    opt.schedule = "linear"
    f = learning_rate_schedule(opt, 110)
    np.testing.assert_allclose([f(10), f(60), f(110)], [1.0, 0.55, 0.1], atol=1e-6)
    opt.schedule = "constant"
    np.testing.assert_allclose(learning_rate_schedule(opt, 110)(50), 1.0)
    opt.schedule = "cosin"
    with pytest.raises(ValueError, match="expected 'constant', 'cosine' or 'linear'"):
        learning_rate_schedule(opt, 110)


def test_outputs_snapshots_and_eval(tmp_path):
    config = toy_config(**{"task.snapshot_steps": (0, 3), "train.num_steps": 4, "train.eval_at_end": True,
                           "ema_decay": 0.5})
    setup = trainer.build(config)
    state = trainer.train(config, str(tmp_path), task=setup.task)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "metrics.jsonl", "results.json", "tensorboard", "checkpoints", "snapshots"} <= files
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
    assert json.load(open(tmp_path / "config.json"))["task"]["snapshot_steps"] == [0, 3]
    rows = read_metrics(str(tmp_path))
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]
    assert {"loss", "grad_norm", "learning_rate", "abs_err", "steps_per_sec"} <= set(rows[0])
    assert rows[-1]["eval/mse"] == json.load(open(tmp_path / "results.json"))["mse"]
    call = setup.task.eval_calls[-1]
    assert sorted(call["snapshots"]) == [0, 3]
    init = setup.init_state().params  # snapshot 0 = initial params (EMA = params at step 0)
    for a, b in zip(leaves(call["snapshots"][0]), leaves(init)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(leaves(call["params"]), leaves(state.ema_params)):  # evaluate gets EMA params
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(leaves(call["snapshots"][3])[0], leaves(call["snapshots"][0])[0])
    # `eval` on the workdir gives the same results from the checkpoint.
    res = trainer.run_task_method(config, str(tmp_path), "evaluate", task=setup.task)
    assert res["mse"] == json.load(open(tmp_path / "results.json"))["mse"]


def test_resume_in_process_is_bit_identical_and_config_guard(tmp_path):
    straight = trainer.train(toy_config(), str(tmp_path / "a"))
    trainer.train(toy_config(**{"train.num_steps": 3}), str(tmp_path / "b"))  # stops at 3 (ckpt 2 and 3)
    resumed = trainer.train(toy_config(), str(tmp_path / "b"))  # num_steps may grow: resumes from 3
    for a, b in zip(leaves(straight), leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(trainer.WorkdirConfigMismatch, match="optimizer.learning_rate: workdir has 0.05, command line has 0.1"):
        trainer.train(toy_config(**{"optimizer.learning_rate": 0.1}), str(tmp_path / "b"))
    assert json.load(open(tmp_path / "b" / "config.json"))["optimizer"]["learning_rate"] == 0.05
