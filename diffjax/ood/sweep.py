"""Timestep x noise-seed sweeps of any reconstruction-style OOD score as ONE jitted call
(design.md convention 3), shared by the image (paper 003, DLSR) and text (paper 000) OOD tasks.

A **score function** ``score_fn(params, inputs, t, keys) -> {name: [..., B]}`` scores B rows:
``inputs`` is any pytree of arrays with a leading row axis B (``[B, 720]`` feature vectors, or
``{"embeddings": [B, L, D], "mask": [B, L]}`` token embeddings with a padding mask), ``t: [B]
int32`` the row's timestep and ``keys: [B]`` the row's PRNG key (all of its noise comes from it).
Each output has the row axis *last* (``[B]``, or e.g. ``[L_layers, B]``). Row b's scores must
depend only on (params, inputs[b], t[b], keys[b]) -- e.g. noise drawn as
``jax.vmap(lambda k: jax.random.normal(k, x.shape[1:]))(keys)``, and, for padded text, nothing of
the positions outside the mask.

``make_score_sweep(score_fn)`` builds ``sweep(params, inputs [N, ...], ts [n_t], seed_keys [n_s],
ids [N]) -> {name: [n_t, n_s, ..., N]}``: the (t, seed, example) grid laid out as one flat batch of
``n_t * n_s * N`` rows (the vectorised form of a vmap over t and seeds; ``t_batch_size`` = a
``jax.lax.map`` over groups of t). Example i under seed s always gets the key
``fold_in(seed_key_s, ids[i])``, so a score depends neither on chunking (``sweep_chunked``) nor on
the other examples of its chunk nor on the order of the grid. Params are an argument (not closed
over): two sets of params (e.g. DLSR's final and early LR params) share one compilation.

``make_sweep_fn`` is the DLSR binding (``scores.make_reconstruction_score_fn``). AUROC per t,
tables and plots: ``diffjax.ood.report``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.ood import report, scores
from diffjax.runtime import Progress, RuntimeContext

# kept here for existing callers; defined once, in report
seed_mean = report.seed_mean
sweep_auroc = report.sweep_auroc
plot_sweep = report.plot_sweep


def make_score_sweep(score_fn: Callable, *, t_batch_size: int | None = None,
                     keep: Callable[[str], bool] | None = None) -> Callable:
    """Returns the jitted sweep of ``score_fn`` (see module docstring).

    Row ``(t, s, i)`` of the flat batch is example i at timestep t with key
    ``fold_in(seed_key_s, ids[i])``; ``score_fn`` runs once over all rows, so the denoiser sees
    plain ``[rows, ...]`` inputs. A row's score is then independent of the rest of the grid: with
    ``t_batch_size=1`` each t is a flat batch of the single-t call's shape, and for the DLSR scores
    the sweep at t equals, bit for bit on XLA:CPU, a call with ``ts = [t]`` (asserted by the tests;
    a score with a log_softmax, as paper 000's L_c, was seen 1 ulp apart: XLA removes the loop of a
    1-t call and fuses it differently). A ``jax.vmap`` over t instead batches the dots along extra
    axes, which XLA rounds differently, ~1e-7 relative, enough to move an AUROC in its 6th digit.

    Args:
      score_fn: ``(params, inputs [B, ...] pytree, t [B] int32, keys [B]) -> {name: [..., B]}``.
      t_batch_size: None = all timesteps in one flat batch; k = ``jax.lax.map`` over groups of k
        timesteps (one flat batch of ``k * n_s * N`` rows each, still one jitted call; the last
        group is padded with its last t): bounds the working set (faster on CPU caches, needed for
        big grids on accelerators).
      keep: optional ``name -> bool``: outputs to return (others are dropped inside the jit).
    Returns: ``sweep(params, inputs [N, ...], ts [n_t] int32, seed_keys [n_s], ids [N] int32)``
      -> ``{name: [n_t, n_s, ..., N]}``.
    """

    def grid(params, inputs, ts, keys, ids):  # ts [k] -> {name: [k, n_s, ..., N]}
        n_t, n_s, n = ts.shape[0], keys.shape[0], ids.shape[0]
        ex_keys = jax.vmap(lambda k: scores.example_keys(k, ids))(keys)  # [n_s, N] keys
        rows = n_t * n_s * n
        x = jax.tree_util.tree_map(
            lambda a: jnp.broadcast_to(a, (n_t, n_s) + a.shape).reshape((rows,) + a.shape[1:]), inputs)
        t = jnp.broadcast_to(ts[:, None, None], (n_t, n_s, n)).reshape(rows)
        k = jnp.broadcast_to(ex_keys[None], (n_t,) + ex_keys.shape).reshape((rows,) + ex_keys.shape[2:])
        out = score_fn(params, x, t, k)
        res = {}
        for name, v in out.items():
            if keep is not None and not keep(name):
                continue
            lead = v.shape[:-1]  # [..., rows] -> [n_t, n_s, ..., N]
            v = v.reshape(lead + (n_t, n_s, n))
            res[name] = jnp.moveaxis(v, (len(lead), len(lead) + 1), (0, 1)) if lead else v
        return res

    if not t_batch_size:
        return jax.jit(grid)
    kb = int(t_batch_size)

    def over_t(params, inputs, ts, keys, ids):
        n_t = ts.shape[0]
        n_g = -(-n_t // kb)
        ts_p = jnp.concatenate([ts, jnp.broadcast_to(ts[-1:], (n_g * kb - n_t,))]).reshape(n_g, kb)
        out = jax.lax.map(lambda g: grid(params, inputs, g, keys, ids), ts_p)  # {name: [n_g, kb, ...]}
        return {name: v.reshape((n_g * kb,) + v.shape[2:])[:n_t] for name, v in out.items()}

    return jax.jit(over_t)


def make_sweep_fn(apply_fn: Callable, schedule, dims: Sequence[int], *, ddim_steps: int = 3,
                  eta: float = 1.0, mfsim_skip_first: bool = False, per_layer: bool = False,
                  t_batch_size: int | None = None) -> Callable:
    """The DLSR sweep: ``make_score_sweep`` of ``scores.make_reconstruction_score_fn``.

    Args:
      apply_fn: ``(params, z_t [B, D], t [B] int32) -> z0_hat [B, D]``.
      schedule: a ``GaussianSchedule``; dims: per-layer channel counts (sum = D).
      per_layer: also return "mse_layers" / "mfsim_layers" as [n_t, n_s, L, N].
      t_batch_size: as ``make_score_sweep``.
    Returns: ``sweep(params, z0 [N, D], ts [n_t] int32, seed_keys [n_s], ids [N] int32)``
      -> ``{name: [n_t, n_s, N]}`` (+ ``[n_t, n_s, L, N]`` per-layer entries).
    """
    score_fn = scores.make_reconstruction_score_fn(apply_fn, schedule, dims, ddim_steps=ddim_steps, eta=eta,
                                                   mfsim_skip_first=mfsim_skip_first)
    return make_score_sweep(score_fn, t_batch_size=t_batch_size,
                            keep=None if per_layer else (lambda name: not name.endswith("_layers")))


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
    """The fixed noise seeds: keys ``fold_in(PRNGKey(seed), s)`` for s < num_seeds -> [num_seeds]."""
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.arange(num_seeds))


def num_examples(inputs) -> int:
    """The leading (example) axis size shared by every leaf of ``inputs``."""
    sizes = {int(np.shape(a)[0]) for a in jax.tree_util.tree_leaves(inputs)}
    if len(sizes) != 1:
        raise ValueError(f"sweep inputs: every array needs the same leading example axis; got sizes {sorted(sizes)}")
    return sizes.pop()


def sweep_chunked(sweep_fn: Callable, params, inputs, ts: Sequence[int], keys: jax.Array, *,
                  chunk: int | None = None, context: RuntimeContext | None = None,
                  ids: np.ndarray | None = None, progress: str | None = "scoring") -> dict[str, np.ndarray]:
    """Runs ``sweep_fn`` over examples in chunks (padded to one static size) -> {name: [n_t, n_s, ..., N]}.

    ``inputs``: a pytree of arrays with a leading example axis N (``[N, D]``, or
    ``{"embeddings": [N, L, D], "mask": [N, L]}``). Example i keeps id i whatever its chunk, and the
    last chunk is padded by repeating its last example (results dropped), so the result equals one
    call on all examples. Float64 leaves are scored as float32. With a ``context`` the chunks are
    global batches sharded over its mesh's "data" axis (``RuntimeContext.map_batches``; the chunk
    is rounded up to a multiple of the data axis) and every host gets all scores.

    ``ids``: optional ``[N]`` int32 example ids to fold into the noise keys instead of the
    positions 0..N-1 (e.g. a hash of a sentence's tokens, so that the same input gets the same
    noise wherever it sits in a file); None = positions (the default, unchanged).

    ``progress``: the label of the rate / ETA line a long run prints (``runtime.Progress``); None: none.
    """
    inputs = jax.tree_util.tree_map(
        lambda a: np.asarray(a, np.float32) if np.asarray(a).dtype == np.float64 else np.asarray(a), inputs)
    n = num_examples(inputs)
    chunk = n if not chunk or chunk >= n else chunk
    ts = jnp.asarray(ts, jnp.int32)
    if ids is not None:
        ids = np.asarray(ids, np.int32).reshape(-1)
        if ids.shape[0] != n:
            raise ValueError(f"sweep_chunked: {ids.shape[0]} ids for {n} examples")
    if context is not None:
        def one_batch(batch, index):  # example axis first for map_batches, last again below
            if ids is not None:
                batch, index = batch["inputs"], batch["ids"]
            return {k: jnp.moveaxis(v, -1, 0) for k, v in sweep_fn(params, batch, ts, keys, index).items()}

        tree = inputs if ids is None else {"inputs": inputs, "ids": ids}
        out = context.map_batches(one_batch, tree, batch_size=chunk, progress=progress)
        return {k: np.moveaxis(v, 0, -1) for k, v in out.items()}
    parts: dict[str, list] = {}
    bar = Progress.loop(n, progress, active=jax.process_index() == 0) if progress else None
    for start in range(0, n, chunk):
        pos = np.arange(start, min(start + chunk, n))
        m = len(pos)
        pad = chunk - m
        take = np.concatenate([pos, np.repeat(pos[-1:], pad)]) if pad else pos
        x = jax.tree_util.tree_map(lambda a: jnp.asarray(a[take]), inputs)
        out = sweep_fn(params, x, ts, keys, jnp.asarray(take if ids is None else ids[take], jnp.int32))
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v)[..., :m])
        if bar is not None:
            bar.update(start + m)
    return {k: np.concatenate(v, axis=-1) for k, v in parts.items()}
