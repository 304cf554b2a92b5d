"""OOD detection metrics: AUROC, FPR@95%TPR, AUPR-In / AUPR-Out, threshold at a TPR.

Conventions (papers.md, "Shared building blocks" 5):

* Scores are **OOD-ness**: higher means more likely OOD. OOD is the positive class for AUROC and
  AUPR-Out; ID is the positive class for AUPR-In (scored by ``-score``).
* ``auroc`` = P(S_ood > S_id) + 1/2 P(S_ood = S_id) (Mann-Whitney U with ties counted one half),
  identical to ``sklearn.metrics.roc_auc_score(y, s)`` with ``y = 1`` for OOD.
* ``fpr95`` uses the **ID-95% convention** (DLSR / classic "FPR at 95% TPR" with ID positive):
  tau = the smallest threshold such that at least 95% of ID scores are ``<= tau`` (ID accepted);
  fpr95 = fraction of OOD scores ``<= tau`` (OOD wrongly accepted). Exact: tau is an ID score
  (the ``ceil(0.95 * n_id)``-th smallest), no interpolation and no dropped ROC points. This equals
  sklearn's ``roc_curve(y_id, -s, drop_intermediate=False)`` read at the first TPR >= 0.95.
  (OpenOOD's ``fpr`` fixes 95% of *OOD* detected instead; it is not what we report.)
* ``aupr_in`` / ``aupr_out`` are average precision (step-wise, no interpolation), identical to
  ``sklearn.metrics.average_precision_score``.

The cores (``auroc``, ``fpr_at_tpr``, ``average_precision``) are pure jnp, jit- and vmap-able
(the timestep sweep vmaps ``auroc`` over t); ``ood_metrics`` is the numpy-in / float-out wrapper.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

FPR95_CONVENTION = "FPR95: fraction of OOD accepted at the threshold that accepts 95% of ID (ID-95% convention)"


def auroc(id_scores: jax.Array, ood_scores: jax.Array) -> jax.Array:
    """AUROC with OOD positive, ties counted 1/2.

    Args:
      id_scores: [N_id] float, ood_scores: [N_ood] float (higher = more OOD).
    Returns: scalar float = mean over OOD x of (#{id < x} + 1/2 #{id == x}) / N_id.
    """
    id_sorted = jnp.sort(id_scores)
    less = jnp.searchsorted(id_sorted, ood_scores, side="left")
    leq = jnp.searchsorted(id_sorted, ood_scores, side="right")
    per_ood = (less + leq).astype(jnp.float32) * 0.5 / id_scores.shape[0]
    return jnp.mean(per_ood)


def _accept_index(n_id: int, tpr: float) -> int:
    """0-based index k of the sorted ID scores such that (k+1)/n_id is the smallest value >= tpr."""
    k = math.ceil(tpr * n_id - 1e-9) - 1  # the 1e-9 guards 0.95 * 100 = 95.00000000000001
    return min(max(k, 0), n_id - 1)


def threshold_at_tpr(id_scores: jax.Array, tpr: float = 0.95) -> jax.Array:
    """Smallest threshold tau with at least ``tpr`` of ID scores ``<= tau``. id_scores: [N_id] -> scalar."""
    return jnp.sort(id_scores)[_accept_index(id_scores.shape[0], tpr)]


def fpr_at_tpr(id_scores: jax.Array, ood_scores: jax.Array, tpr: float = 0.95) -> jax.Array:
    """Fraction of OOD scores ``<= threshold_at_tpr(id_scores, tpr)`` (ID-95% convention for tpr=0.95)."""
    tau = threshold_at_tpr(id_scores, tpr)
    return jnp.mean((ood_scores <= tau).astype(jnp.float32))


def average_precision(pos_scores: jax.Array, neg_scores: jax.Array) -> jax.Array:
    """Step-wise average precision, positives ranked by *higher* score (sklearn's definition).

    AP = (1/N_pos) sum_{positive i} precision(s_i), precision(v) = #{pos >= v} / #{all >= v};
    tied positives share one threshold, exactly as sklearn's distinct-threshold sum.
    pos_scores: [N_pos], neg_scores: [N_neg] -> scalar.
    """
    pos_sorted = jnp.sort(pos_scores)
    neg_sorted = jnp.sort(neg_scores)
    n_pos = pos_scores.shape[0]
    tp = n_pos - jnp.searchsorted(pos_sorted, pos_scores, side="left")
    fp = neg_scores.shape[0] - jnp.searchsorted(neg_sorted, pos_scores, side="left")
    return jnp.mean(tp.astype(jnp.float32) / (tp + fp).astype(jnp.float32))


@jax.jit
def _all_metrics(id_scores, ood_scores):
    return {
        "auroc": auroc(id_scores, ood_scores),
        "fpr95": fpr_at_tpr(id_scores, ood_scores, 0.95),
        "aupr_in": average_precision(-id_scores, -ood_scores),
        "aupr_out": average_precision(ood_scores, id_scores),
    }


def ood_metrics(id_scores, ood_scores) -> dict[str, float]:
    """AUROC, FPR95 (ID-95% convention), AUPR-In, AUPR-Out of OOD-ness scores.

    Args:
      id_scores: [N_id] array-like (numpy / jax / list), higher = more OOD.
      ood_scores: [N_ood] array-like.
    Returns: ``{"auroc", "fpr95", "aupr_in", "aupr_out"}`` as Python floats (see module docstring).
    """
    id_np = np.asarray(id_scores, dtype=np.float32).reshape(-1)
    ood_np = np.asarray(ood_scores, dtype=np.float32).reshape(-1)
    if id_np.size == 0 or ood_np.size == 0:
        raise ValueError(f"ood_metrics needs at least one ID and one OOD score; got {id_np.size} ID "
                         f"and {ood_np.size} OOD scores.")
    if not (np.isfinite(id_np).all() and np.isfinite(ood_np).all()):
        raise ValueError("ood_metrics got non-finite scores (NaN/inf); check the model and the "
                         f"score function ({np.sum(~np.isfinite(id_np))} ID, "
                         f"{np.sum(~np.isfinite(ood_np))} OOD non-finite).")
    out = _all_metrics(jnp.asarray(id_np), jnp.asarray(ood_np))
    return {k: float(v) for k, v in out.items()}


def roc_curve(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    """ROC points (numpy, for plots): (fpr = fraction of ID flagged, tpr = fraction of OOD flagged)
    at every distinct threshold "flag if score >= thr", from (0, 0) to (1, 1)."""
    id_np = np.sort(np.asarray(id_scores, np.float64).reshape(-1))
    ood_np = np.sort(np.asarray(ood_scores, np.float64).reshape(-1))
    thr = np.unique(np.r_[id_np, ood_np])[::-1]
    fpr = (len(id_np) - np.searchsorted(id_np, thr, side="left")) / len(id_np)
    tpr = (len(ood_np) - np.searchsorted(ood_np, thr, side="left")) / len(ood_np)
    return np.r_[0.0, fpr], np.r_[0.0, tpr]
