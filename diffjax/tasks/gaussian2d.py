"""DDPM on a 2-D Gaussian mixture with a small MLP denoiser: the trainer's end-to-end task.

Data: ``num_components`` isotropic Gaussians (std ``component_std``) with means evenly spaced on a
circle of ``radius``. Training: ``eps_loss`` (DDPM eq. 14) or ``x0_loss`` of
``diffjax.diffusion.gaussian`` on a ``gaussian_schedule``. Evaluation: DDIM samples
(``ddim_sample``) compared to fresh data by mean, covariance and an RBF-kernel MMD^2, with the
same MMD between two independent data draws as the noise floor; plots ``samples.png``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion import gaussian
from diffjax.diffusion.gaussian_sampling import ddim_sample
from diffjax.diffusion.schedules import GAUSSIAN_KINDS, gaussian_schedule
from diffjax.models.mlp import MLPDenoiser
from diffjax.runtime import RuntimeContext
from diffjax.tasks import fields as F
from diffjax.tasks.base import Task, batch_shapes, register_task


def mixture_means(num_components: int, radius: float) -> np.ndarray:
    """``[K, 2]`` component means on a circle."""
    angles = 2 * np.pi * np.arange(num_components) / num_components
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def sample_mixture(rng: np.random.Generator, n: int, means: np.ndarray, std: float) -> np.ndarray:
    """``[n, 2] float32`` draws of the equal-weight mixture."""
    comp = rng.integers(0, len(means), size=n)
    return (means[comp] + std * rng.standard_normal((n, means.shape[1]))).astype(np.float32)


def rbf_mmd2(x: jax.Array, y: jax.Array, bandwidths=(0.1, 0.3, 1.0, 3.0)) -> jax.Array:
    """Biased MMD^2 between ``x [N, D]`` and ``y [M, D]`` with a sum of RBF kernels
    ``k(a, b) = sum_s exp(-|a - b|^2 / (2 s^2))`` (Gretton et al. 2012, eq. 5 with V-statistics)."""

    def k(a, b):
        d2 = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2 * a @ b.T
        d2 = jnp.maximum(d2, 0.0)
        return sum(jnp.exp(-d2 / (2 * s * s)) for s in bandwidths)

    return jnp.mean(k(x, x)) + jnp.mean(k(y, y)) - 2 * jnp.mean(k(x, y))


@dataclasses.dataclass(frozen=True)
class MLPFields(F.TaskConfig):
    """``config.task.model``: the ``MLPDenoiser``'s sizes."""

    hidden: int = F.field(F.integer(1), 128, "width of each hidden layer")
    depth: int = F.field(F.integer(1), 3, "hidden layers")
    time_embed_dim: int = F.field(F.integer(2), 32, "sinusoidal timestep embedding size")


@dataclasses.dataclass(frozen=True)
class Gaussian2DConfig(F.TaskConfig):
    """``config.task`` of the 2-D Gaussian-mixture DDPM (configs/gaussian2d.py), validated at construction."""

    name: str = F.field(F.choice("gaussian2d"), "gaussian2d")
    num_components: int = F.field(F.integer(1), 8, "mixture components, means evenly spaced on a circle")
    radius: float = F.field(F.number(0.0), 2.0, "radius of that circle")
    component_std: float = F.field(F.number(0.0, low_open=True), 0.15, "each component's isotropic std")
    data_seed: int = F.field(F.integer(0), 0, "seeds the training draws and the evaluation's data draws")
    schedule: str = F.field(F.choice(*GAUSSIAN_KINDS), "cosine", "diffusion.schedules.gaussian_schedule kind")
    num_diffusion_steps: int = F.field(F.integer(1), 200, "T")
    prediction: str = F.field(F.choice("eps", "x0"), "eps", "what the network predicts")
    model: MLPFields = F.field(None, MLPFields(), "the denoiser", nested=MLPFields)
    eval_num_samples: int = F.field(F.integer(2, what="a covariance needs 2"), 2000, "DDIM samples vs data")
    sample_batch_size: int = F.field(F.integer(1), 1024, "DDIM samples per global batch (mesh-sharded)")
    ddim_steps: int = F.field(None, 50, "DDIM steps, in [1, num_diffusion_steps] (checked in check())")
    ddim_eta: float = F.field(F.number(0.0, 1.0), 0.0, "0 = deterministic DDIM, 1 = DDPM-like")
    clip_x0: float = F.field(F.number(0.0, what="0 = off"), 4.0, "clip x0_hat to [-c, c]")

    def check(self) -> None:
        F.require(F.integer(1, self.num_diffusion_steps).ok(self.ddim_steps), "task.ddim_steps", self.ddim_steps,
                  f"an integer in [1, {self.num_diffusion_steps}] (at most task.num_diffusion_steps)")


class Gaussian2DTask(Task):
    name = "gaussian2d"

    def __init__(self, cfg):
        self.cfg = cfg
        self.means = mixture_means(int(cfg.num_components), float(cfg.radius))
        self.std = float(cfg.component_std)
        self.data_seed = int(cfg.data_seed)
        self.schedule = gaussian_schedule(cfg.schedule, int(cfg.num_diffusion_steps))
        self.prediction = cfg.prediction
        m = cfg.model
        self.model = MLPDenoiser(features=2, hidden=int(m.hidden), depth=int(m.depth),
                                 time_embed_dim=int(m.time_embed_dim),
                                 time_scale=1000.0 / int(cfg.num_diffusion_steps))

    # -- Task interface ------------------------------------------------------------------------
    def init_params(self, rng):
        x = jnp.zeros((1, 2), jnp.float32)
        t = jnp.zeros((1,), jnp.int32)
        return self.model.init(rng, x, t)["params"]

    def denoise_fn(self, params):
        return lambda x_t, t: self.model.apply({"params": params}, x_t, t)

    def loss_fn(self, params, batch, rng):
        """``batch["x"]: [B, 2] float32``; DDPM eps loss or x0 loss, averaged over the batch."""
        loss_impl = gaussian.eps_loss if self.prediction == "eps" else gaussian.x0_loss
        loss, _ = loss_impl(self.denoise_fn(params), batch["x"], rng, schedule=self.schedule,
                            prediction=self.prediction)
        return loss, {}

    def train_batches(self, start_step: int, *, global_batch_size: int, process_index: int = 0,
                      process_count: int = 1) -> Iterator[dict]:
        """Global batch ``s`` is drawn from ``default_rng([data_seed, s])``; each process keeps its
        contiguous slice, so any process count sees the same global batches."""
        per = global_batch_size // process_count
        step = int(start_step)
        while True:
            rng = np.random.default_rng([self.data_seed, step])
            x = sample_mixture(rng, global_batch_size, self.means, self.std)
            yield {"x": x[process_index * per:(process_index + 1) * per]}
            step += 1

    def abstract_batch(self, global_batch_size: int) -> dict:
        return batch_shapes(next(self.train_batches(0, global_batch_size=global_batch_size)))

    def _sample_batch(self, params, rng, index):
        """``[Bg, 2]`` DDIM samples; sample ``i`` uses ``fold_in(rng, index[i])`` for all its noise,
        so it does not depend on the batch it is drawn in (or on the mesh)."""

        def one(i):
            return ddim_sample(self.denoise_fn(params), self.schedule, (1, 2), jax.random.fold_in(rng, i),
                               num_steps=int(self.cfg.ddim_steps), eta=float(self.cfg.ddim_eta),
                               prediction=self.prediction, clip_x0=float(self.cfg.clip_x0) or None)[0]

        return jax.vmap(one)(index)

    def sample(self, params, rng, n: int, *, context: RuntimeContext) -> np.ndarray:
        """``[n, 2]`` DDIM samples, generated in global batches on ``context``'s mesh."""
        step = jax.jit(self._sample_batch)
        return context.map_batches(lambda _, index: step(params, rng, index), np.zeros((n, 0), np.float32),
                                   batch_size=int(self.cfg.sample_batch_size))

    def evaluate(self, params, rng, workdir: str, *, context: RuntimeContext, **unused) -> dict:
        n = int(self.cfg.eval_num_samples)
        samples = np.asarray(self.sample(params, rng, n, context=context), np.float64)
        data_rng = np.random.default_rng([self.data_seed, 2**31 - 1])
        data = sample_mixture(data_rng, n, self.means, self.std).astype(np.float64)
        data2 = sample_mixture(data_rng, n, self.means, self.std).astype(np.float64)
        mmd = float(rbf_mmd2(jnp.asarray(samples, jnp.float32), jnp.asarray(data, jnp.float32)))
        mmd_floor = float(rbf_mmd2(jnp.asarray(data2, jnp.float32), jnp.asarray(data, jnp.float32)))
        # Mode coverage: fraction of samples within 3 std of their nearest mean; modes hit.
        d = np.linalg.norm(samples[:, None, :] - self.means[None], axis=-1)
        near = d.min(1) < 3 * self.std
        modes_hit = len(set(d.argmin(1)[near].tolist()))
        results = {
            "sample_mean": samples.mean(0).tolist(), "data_mean": data.mean(0).tolist(),
            "sample_cov": np.cov(samples.T).tolist(), "data_cov": np.cov(data.T).tolist(),
            "mean_abs_err": float(np.abs(samples.mean(0) - data.mean(0)).max()),
            "cov_abs_err": float(np.abs(np.cov(samples.T) - np.cov(data.T)).max()),
            "mmd2": mmd, "mmd2_data_vs_data": mmd_floor,
            "frac_near_mode": float(near.mean()), "modes_hit": modes_hit,
            "num_modes": len(self.means), "num_samples": n,
        }
        if context.is_main:
            self._plot(samples, data, os.path.join(workdir, "samples.png"))
        return results

    def generate(self, params, rng, workdir: str, *, context: RuntimeContext, **unused) -> dict:
        samples = self.sample(params, rng, int(self.cfg.eval_num_samples), context=context)
        if context.is_main:
            np.save(os.path.join(workdir, "samples.npy"), samples)
        return {"num_samples": int(samples.shape[0]), "path": os.path.join(workdir, "samples.npy")}

    @staticmethod
    def _plot(samples, data, path):
        from diffjax.ood.report import figure

        fig, ax = figure(1, 2, figsize=(8, 4), sharex=True, sharey=True)
        ax[0].scatter(data[:, 0], data[:, 1], s=2)
        ax[0].set_title("data")
        ax[1].scatter(samples[:, 0], samples[:, 1], s=2, color="C1")
        ax[1].set_title("DDIM samples")
        for a in ax:
            a.set_aspect("equal")
        fig.tight_layout()
        fig.savefig(path, dpi=100)


@register_task("gaussian2d", config=Gaussian2DConfig)
def from_config(cfg: Gaussian2DConfig) -> Gaussian2DTask:
    return Gaussian2DTask(cfg)
