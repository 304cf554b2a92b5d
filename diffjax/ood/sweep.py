"""Timestep x noise-seed sweeps of DLSR scores as ONE vmapped, jitted call (design.md convention 3).

``make_sweep_fn`` builds ``sweep(params, z0 [N, D], ts [n_t] int32, seed_keys [n_s], ids [N])``
-> ``{score_name: [n_t, n_s, N]}``: ``jax.vmap`` over t of ``jax.vmap`` over seeds of the batched
reconstruction score (``diffjax.ood.scores``). Params are an argument (not closed over), so the
final and the early (LR) params share one compilation; all shapes are static, so a whole grid
compiles once. Example i under seed s always gets the noise of ``fold_in(seed_key_s, ids[i])``:
the result does not depend on chunking (``sweep_chunked``) or on the order of the grid.

``sweep_auroc`` turns ID and OOD sweeps into AUROC per t (scores averaged over seeds first, as
papers.md "average over K noise draws"); ``plot_sweep`` writes ``sweep.png``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.ood import metrics, scores


def make_sweep_fn(apply_fn: Callable, schedule, dims: Sequence[int], *, ddim_steps: int = 3,
                  eta: float = 1.0, mfsim_skip_first: bool = False, per_layer: bool = False,
                  t_batch_size: int | None = None) -> Callable:
    """Returns the jitted sweep (see module docstring).

    Args:
      apply_fn: ``(params, z_t [B, D], t [B] int32) -> z0_hat [B, D]``.
      schedule: a ``GaussianSchedule``; dims: per-layer channel counts (sum = D).
      per_layer: also return "mse_layers" / "mfsim_layers" as [n_t, n_s, L, N].
      t_batch_size: None = vmap over all timesteps at once; k = ``jax.lax.map(..., batch_size=k)``
        over t (vmap over k timesteps at a time, still one jitted call): bounds the working set,
        which is faster on CPU caches and needed for big grids on accelerators.
    """
    dims = tuple(int(d) for d in dims)

    def one(params, z0, t, seed_key, ids):
        denoise = lambda x, tt: apply_fn(params, x, tt)
        out = scores.reconstruction_scores(denoise, schedule, z0, t, scores.example_keys(seed_key, ids), dims,
                                           ddim_steps=ddim_steps, eta=eta, mfsim_skip_first=mfsim_skip_first)
        return out if per_layer else {k: v for k, v in out.items() if not k.endswith("_layers")}

    over_seeds = jax.vmap(one, in_axes=(None, None, None, 0, None))
    if not t_batch_size:
        return jax.jit(jax.vmap(over_seeds, in_axes=(None, None, 0, None, None)))

    def over_t(params, z0, ts, keys, ids):
        return jax.lax.map(lambda t: over_seeds(params, z0, t, keys, ids), ts, batch_size=int(t_batch_size))

    return jax.jit(over_t)


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
    """The fixed noise seeds: keys ``fold_in(PRNGKey(seed), s)`` for s < num_seeds -> [num_seeds]."""
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.arange(num_seeds))


def sweep_chunked(sweep_fn: Callable, params, z0: np.ndarray, ts: Sequence[int], keys: jax.Array, *,
                  chunk: int | None = None) -> dict[str, np.ndarray]:
    """Runs ``sweep_fn`` over examples in chunks (padded to one static size) -> {name: [n_t, n_s, ..., N]}.

    Identical to one call on all examples (noise depends on example ids, not on chunk position).
    """
    z0 = np.asarray(z0, np.float32)
    n = z0.shape[0]
    chunk = n if not chunk or chunk >= n else chunk
    ts = jnp.asarray(ts, jnp.int32)
    parts: dict[str, list] = {}
    for start in range(0, n, chunk):
        ids = np.arange(start, min(start + chunk, n))
        m = len(ids)
        pad = chunk - m
        z = np.concatenate([z0[ids], np.repeat(z0[ids[-1:]], pad, 0)]) if pad else z0[ids]
        ids_p = np.concatenate([ids, np.repeat(ids[-1:], pad)]) if pad else ids
        out = sweep_fn(params, jnp.asarray(z), ts, keys, jnp.asarray(ids_p, jnp.int32))
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v)[..., :m])
    return {k: np.concatenate(v, axis=-1) for k, v in parts.items()}


@jax.jit
def _auroc_per_t(id_scores, ood_scores):
    return jax.vmap(metrics.auroc)(id_scores, ood_scores)


def sweep_auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> np.ndarray:
    """[n_t, n_s, N_id], [n_t, n_s, N_ood] -> AUROC per t [n_t] of the seed-averaged scores."""
    return np.asarray(_auroc_per_t(jnp.asarray(np.mean(id_scores, axis=1)),
                                   jnp.asarray(np.mean(ood_scores, axis=1))))


def plot_sweep(ts: Sequence[int], curves: dict, path: str, title: str = "") -> None:
    """AUROC vs t -> PNG at ``path``. ``curves``: {label: [n_t]} (one panel) or
    {panel: {label: [n_t]}} (one panel each, e.g. one per OOD set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curves if all(isinstance(v, dict) for v in curves.values()) else {"": curves}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 0.6, 4.2), squeeze=False)
    for ax, (name, panel) in zip(axes[0], panels.items()):
        for label, y in panel.items():
            ax.plot(list(ts), np.asarray(y), marker="o", ms=2.5, lw=1.2, label=label)
        ax.set_xlabel("timestep t")
        ax.set_ylabel("AUROC (OOD positive)")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "DLSR score AUROC vs noise timestep", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
