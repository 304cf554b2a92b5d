"""Feature-space OOD baselines on the same features as DLSR (higher = more OOD).

* Mahalanobis distance to one Gaussian fitted on the ID training features (unsupervised, no
  labels): (x - mu)^T (Sigma + lambda I)^-1 (x - mu), lambda = ``shrinkage * trace(Sigma) / D``.
* kNN (Sun et al. 2022, "Out-of-distribution detection with deep nearest neighbors"): distance
  from the L2-normalised feature to its k-th nearest L2-normalised ID training feature.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.runtime import RuntimeContext


def fit_mahalanobis(train: np.ndarray, shrinkage: float = 1e-3) -> dict[str, np.ndarray]:
    """train: [N, D] -> {"mean": [D], "precision": [D, D]} (float64 fit, float32 out)."""
    x = np.asarray(train, np.float64)
    mu = x.mean(0)
    cov = np.cov(x - mu, rowvar=False).reshape(x.shape[1], x.shape[1])
    cov += shrinkage * max(np.trace(cov) / cov.shape[0], 1e-12) * np.eye(cov.shape[0])
    return {"mean": mu.astype(np.float32), "precision": np.linalg.inv(cov).astype(np.float32)}


@jax.jit
def mahalanobis_score(fit: dict, x: jax.Array) -> jax.Array:
    """x: [N, D] -> squared Mahalanobis distance [N]."""
    d = x - fit["mean"]
    return jnp.einsum("nd,de,ne->n", d, fit["precision"], d)


def mahalanobis_scores(fit: dict, x: np.ndarray, *, chunk: int = 1024,
                       context: RuntimeContext | None = None) -> np.ndarray:
    """x: [N, D] -> ``mahalanobis_score`` [N] numpy; with ``context`` the rows are global batches of ``chunk``
    sharded over its "data" axis and ``fit`` is replicated on its mesh (``RuntimeContext.map_batches``)."""
    x = np.asarray(x, np.float32)
    if context is None:
        return np.asarray(mahalanobis_score(fit, jnp.asarray(x)))
    placed = jax.device_put(fit, context.replicated())
    return context.map_batches(lambda q, index: mahalanobis_score(placed, q), x, batch_size=chunk, progress=None)


def _unit(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames="k")
def knn_distance(bank: jax.Array, x: jax.Array, k: int) -> jax.Array:
    """bank: [M, D] unit rows, x: [N, D] -> Euclidean distance of unit(x) to its k-th nearest bank row [N]."""
    sims = _unit(x) @ bank.T  # unit vectors: ||a - b||^2 = 2 - 2 a.b
    top = jax.lax.top_k(sims, k)[0][:, -1]
    return jnp.sqrt(jnp.maximum(2.0 - 2.0 * top, 0.0))


def knn_score(train: np.ndarray, x: np.ndarray, k: int = 5, chunk: int = 1024,
              context: RuntimeContext | None = None) -> np.ndarray:
    """x: [N, D] -> Euclidean distance of unit(x) to its k-th nearest unit(train) [N] (k clipped to N_train).
    ``chunk`` queries per call; with ``context`` the queries are global batches sharded over its "data" axis
    and the bank is replicated on its mesh (``RuntimeContext.map_batches``)."""
    bank = np.asarray(_unit(jnp.asarray(train, jnp.float32)))
    k = int(min(k, bank.shape[0]))
    x = np.asarray(x, np.float32)
    if context is not None:
        placed = jax.device_put(bank, context.replicated())
        return context.map_batches(lambda q, index: knn_distance(placed, q, k), x, batch_size=chunk, progress=None)
    return np.concatenate([np.asarray(knn_distance(bank, jnp.asarray(x[i:i + chunk]), k))
                           for i in range(0, len(x), chunk)])
