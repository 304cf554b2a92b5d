"""Timestep x noise-seed sweeps of DLSR scores as ONE vmapped, jitted call (design.md convention 3).

``make_sweep_fn`` builds ``sweep(params, z0 [N, D], ts [n_t] int32, seed_keys [n_s], ids [N])``
-> ``{score_name: [n_t, n_s, N]}``: the batched reconstruction score (``diffjax.ood.scores``) over
the whole (t, seed, example) grid as one flat batch of rows (the vectorised form of a vmap over t
and seeds; a grid row's score equals the single-t call's bit for bit, see ``make_sweep_fn``). Params are an argument (not closed over), so the
final and the early (LR) params share one compilation; all shapes are static, so a whole grid
compiles once. Example i under seed s always gets the noise of ``fold_in(seed_key_s, ids[i])``:
the result does not depend on chunking (``sweep_chunked``) or on the order of the grid.

``sweep_auroc`` turns ID and OOD sweeps into AUROC per t (scores averaged over seeds first, as
papers.md "average over K noise draws"; the same AUROC function as the evaluation table); ``plot_sweep`` writes ``sweep.png``.
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

    The (t, seed, example) grid is laid out as one flat batch of ``n_t * n_s * N`` rows (row
    ``(t, s, i)`` = example i noised to t with the key ``fold_in(seed_key_s, ids[i])``), and the
    per-row reconstruction (``scores.reconstruction_scores`` with a per-row t) runs once over it:
    the denoiser sees plain ``[rows, D]`` matmuls. This is the vectorised (vmap-equivalent) form of
    design.md convention 3, and it makes a row's score independent of the rest of the grid: the
    sweep at t equals, bit for bit on XLA:CPU, a call with ``ts = [t]`` (what ``evaluate`` runs). A
    ``jax.vmap`` over t instead batches the dots along extra axes, which XLA rounds differently
    (~1e-7 relative), enough to move an AUROC in its 6th digit.

    Args:
      apply_fn: ``(params, z_t [B, D], t [B] int32) -> z0_hat [B, D]``.
      schedule: a ``GaussianSchedule``; dims: per-layer channel counts (sum = D).
      per_layer: also return "mse_layers" / "mfsim_layers" as [n_t, n_s, L, N].
      t_batch_size: None = all timesteps in one flat batch; k = ``jax.lax.map`` over groups of k
        timesteps (one flat batch of ``k * n_s * N`` rows each, still one jitted call; the last
        group is padded with its last t): bounds the working set, which is faster on CPU caches
        and needed for big grids on accelerators.
    Returns: ``sweep(params, z0 [N, D], ts [n_t] int32, seed_keys [n_s], ids [N] int32)``
      -> ``{name: [n_t, n_s, N]}`` (+ ``[n_t, n_s, L, N]`` per-layer entries).
    """
    dims = tuple(int(d) for d in dims)

    def grid(params, z0, ts, keys, ids):  # ts [k] -> {name: [k, n_s, (L,) N]}
        n_t, n_s, n = ts.shape[0], keys.shape[0], z0.shape[0]
        ex_keys = jax.vmap(lambda k: scores.example_keys(k, ids))(keys)  # [n_s, N] keys
        rows = n_t * n_s * n
        z = jnp.broadcast_to(z0, (n_t, n_s) + z0.shape).reshape(rows, z0.shape[-1])
        t = jnp.broadcast_to(ts[:, None, None], (n_t, n_s, n)).reshape(rows)
        k = jnp.broadcast_to(ex_keys[None], (n_t,) + ex_keys.shape).reshape((rows,) + ex_keys.shape[2:])
        out = scores.reconstruction_scores(lambda x, tt: apply_fn(params, x, tt), schedule, z, t, k, dims,
                                           ddim_steps=ddim_steps, eta=eta, mfsim_skip_first=mfsim_skip_first)
        res = {}
        for name, v in out.items():
            if name.endswith("_layers"):
                if per_layer:  # [L, rows] -> [n_t, n_s, L, N]
                    res[name] = jnp.moveaxis(v.reshape(v.shape[0], n_t, n_s, n), 0, 2)
            else:
                res[name] = v.reshape(n_t, n_s, n)
        return res

    if not t_batch_size:
        return jax.jit(grid)
    k = int(t_batch_size)

    def over_t(params, z0, ts, keys, ids):
        n_t = ts.shape[0]
        n_g = -(-n_t // k)
        ts_p = jnp.concatenate([ts, jnp.broadcast_to(ts[-1:], (n_g * k - n_t,))]).reshape(n_g, k)
        out = jax.lax.map(lambda g: grid(params, z0, g, keys, ids), ts_p)  # {name: [n_g, k, ...]}
        return {name: v.reshape((n_g * k,) + v.shape[2:])[:n_t] for name, v in out.items()}

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


def seed_mean(scores_grid: np.ndarray) -> np.ndarray:
    """Average over the seed axis: [n_t, n_s, ...] -> [n_t, ...] (float32, summed in seed order,
    so ``evaluate`` and the sweep average identically)."""
    x = np.asarray(scores_grid, np.float32)
    acc = x[:, 0].copy()
    for s in range(1, x.shape[1]):
        acc += x[:, s]
    return acc / np.float32(x.shape[1])


def sweep_auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> np.ndarray:
    """[n_t, n_s, N_id], [n_t, n_s, N_ood] -> AUROC per t [n_t] of the seed-averaged scores.

    Each t goes through ``metrics.ood_metrics``, the function the evaluation table uses (a vmapped
    AUROC reduces its float32 mean in another order: 1e-7 apart), so equal scores give equal AUROCs.
    """
    id_m, ood_m = seed_mean(id_scores), seed_mean(ood_scores)
    return np.array([metrics.ood_metrics(a, b)["auroc"] for a, b in zip(id_m, ood_m)], np.float64)


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
