"""ood_metrics vs sklearn on random scores with many ties, and the FPR95 convention by brute force."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.ood import metrics

sk = pytest.importorskip("sklearn.metrics")


def _sklearn_reference(id_s, ood_s):
    y = np.r_[np.zeros(len(id_s)), np.ones(len(ood_s))]
    s = np.r_[id_s, ood_s].astype(np.float64)
    # FPR95, ID positive, ID accepted when score <= thr: the first ROC point reaching TPR >= 0.95.
    fpr, tpr, _ = sk.roc_curve(1 - y, -s, drop_intermediate=False)
    return {
        "auroc": sk.roc_auc_score(y, s),
        "fpr95": fpr[np.argmax(tpr >= 0.95)],
        "aupr_in": sk.average_precision_score(1 - y, -s),
        "aupr_out": sk.average_precision_score(y, s),
    }


@pytest.mark.parametrize("seed,n_id,n_ood,levels", [
    (0, 100, 80, 5), (1, 37, 211, 3), (2, 500, 500, 40), (3, 20, 20, 2), (4, 257, 63, 1000),
    (5, 1, 7, 4), (6, 60, 1, 6),
])
def test_matches_sklearn_with_ties(seed, n_id, n_ood, levels):
    rng = np.random.default_rng(seed)
    # integer-valued scores -> many exact ties; OOD shifted up so all metrics are non-trivial
    id_s = rng.integers(0, levels, n_id).astype(np.float32)
    ood_s = (rng.integers(0, levels, n_ood) + rng.integers(0, 2, n_ood)).astype(np.float32)
    got = metrics.ood_metrics(id_s, ood_s)
    ref = _sklearn_reference(id_s, ood_s)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=2e-6), (k, got[k], ref[k])


def test_fpr95_brute_force_definition():
    rng = np.random.default_rng(7)
    for n_id in [1, 19, 20, 21, 100, 101, 333]:
        id_s = rng.integers(0, 10, n_id).astype(np.float32)
        ood_s = rng.integers(0, 12, 50).astype(np.float32)
        # smallest candidate threshold (over all real values: only ID scores matter) accepting >= 95% ID
        cands = np.sort(np.unique(id_s))
        tau = next(c for c in cands if np.mean(id_s <= c) >= 0.95)
        assert metrics.ood_metrics(id_s, ood_s)["fpr95"] == pytest.approx(np.mean(ood_s <= tau), abs=1e-7)


def test_perfect_and_inverted_separation():
    id_s, ood_s = np.arange(10.0), np.arange(10.0) + 100
    m = metrics.ood_metrics(id_s, ood_s)
    assert m == {"auroc": 1.0, "fpr95": 0.0, "aupr_in": 1.0, "aupr_out": 1.0}
    m = metrics.ood_metrics(ood_s, id_s)
    assert m["auroc"] == 0.0 and m["fpr95"] == 1.0
    # all scores tied -> chance AUROC, every OOD accepted
    m = metrics.ood_metrics(np.zeros(5), np.zeros(3))
    assert m["auroc"] == 0.5 and m["fpr95"] == 1.0


def test_core_is_jittable_and_vmappable():
    rng = np.random.default_rng(3)
    id_s = rng.normal(size=(4, 30)).astype(np.float32)
    ood_s = (rng.normal(size=(4, 25)) + np.arange(4)[:, None]).astype(np.float32)
    batched = jax.jit(jax.vmap(metrics.auroc))(jnp.asarray(id_s), jnp.asarray(ood_s))
    for i in range(4):
        y = np.r_[np.zeros(30), np.ones(25)]
        assert float(batched[i]) == pytest.approx(sk.roc_auc_score(y, np.r_[id_s[i], ood_s[i]]), abs=1e-6)


def test_rejects_non_finite_and_empty():
    with pytest.raises(ValueError, match="non-finite"):
        metrics.ood_metrics([0.0, np.nan], [1.0])
    with pytest.raises(ValueError, match="at least one"):
        metrics.ood_metrics([], [1.0])
