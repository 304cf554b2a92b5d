"""``OODTask`` (diffjax/tasks/ood_task.py): a third OOD method is a small binder.

A toy binder (vectors; score = squared distance of a noised input from the ID mean) implements only
the hooks the base's docstring lists, and gets evaluate / threshold / sweep / score from the base:
the table separates a far OOD set, the threshold accepts 95% of ID test, the sweep at ``score_t``
equals the table (same examples, seeds and keys) and ``score`` flags the far inputs.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffjax.ood import sweep as sweep_lib
from diffjax.runtime import RuntimeContext
from diffjax.tasks.ood_task import OODTask


@dataclasses.dataclass
class Vectors:
    x: np.ndarray  # [N, D]

    def __len__(self):
        return len(self.x)


class ToyOOD(OODTask):
    name = "toy_ood"
    read_user_inputs = staticmethod(lambda c, inputs: np.load(inputs))

    def __init__(self, c):
        self.c = c

    def build_sets(self):
        rng = np.random.default_rng(0)
        return {"train": Vectors(rng.normal(size=(64, 4))), "test": Vectors(rng.normal(size=(40, 4))),
                "ood/far": Vectors(rng.normal(4.0, 1.0, size=(30, 4)))}

    def init_params(self, rng):
        return {"mean": jnp.asarray(self.sets()["train"].x.mean(0), jnp.float32)}

    def loss_fn(self, params, batch, rng):
        loss = jnp.mean(jnp.sum(jnp.square(batch["x"] - params["mean"]), -1))
        return loss, {"loss": loss}

    def train_batches(self, start_step, *, global_batch_size, process_index=0, process_count=1):
        while True:
            yield {"x": self.sets()["train"].x[:global_batch_size]}

    def score_set(self, params, key, s, ts, *, num_seeds, seed, stage, context, snapshots=None,
                  max_examples=None, names=None):
        def score_fn(p, x, t, keys):  # [B, D], t [B], keys [B] -> {"dist": [B]}
            noise = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:]))(keys)
            z = x + 0.01 * t[:, None].astype(jnp.float32) * noise
            return {"dist": jnp.sum(jnp.square(z - p["mean"]), -1)}

        fn = sweep_lib.make_score_sweep(score_fn, t_batch_size=1)
        keys = sweep_lib.seed_keys(seed, num_seeds)
        return sweep_lib.sweep_chunked(fn, params, s.x[:max_examples], ts, keys, chunk=16, context=context)

    def user_set(self, read, inputs):
        return list(range(len(read))), Vectors(read)

    def table_header(self, results):
        return f"toy OOD at t={results['score_t']}"


def _config():
    c = ml_collections.ConfigDict(dict(score_t=2, sweep_ts=(1, 2, 5), num_seeds=2, score_seed=3, deploy_score="dist",
                                       sweep_num_seeds=0, sweep_max_examples=0))
    return c


def test_a_toy_binder_gets_evaluate_threshold_sweep_and_score(tmp_path):
    task, ctx, workdir = ToyOOD(_config()), RuntimeContext.local(), str(tmp_path)
    params = task.init_params(jax.random.PRNGKey(0))
    res = task.evaluate(params, None, workdir, context=ctx)
    assert res["metrics"]["far"]["dist"]["auroc"] > 0.99
    assert res["num_examples"] == {"train": 64, "test": 40, "ood/far": 30}
    assert "per_layer" not in res and "threshold" not in res
    thr = json.load(open(os.path.join(workdir, "threshold.json")))
    assert thr["score"] == "dist" and thr["score_t"] == 2 and thr["num_seeds"] == 2 and thr["score_seed"] == 3
    for name in ("results_table.txt", "roc.png"):
        assert os.path.exists(os.path.join(workdir, name))

    sw = task.sweep(params, None, workdir, context=ctx)
    assert sw["ts"] == [1, 2, 5] and sw["num_examples_per_set"] == {"test": 40, "ood/far": 30}
    assert sw["at_score_t"]["auroc"]["far"]["dist"] == res["metrics"]["far"]["dist"]["auroc"]

    inputs = os.path.join(workdir, "inputs.npy")
    np.save(inputs, np.concatenate([task.sets()["test"].x[:4], task.sets()["ood/far"].x[:4]]))
    summary = task.score(params, None, workdir, context=ctx, inputs=inputs, read_inputs=np.load(inputs))
    assert summary["num_inputs"] == 8 and summary["num_ood"] >= 4
