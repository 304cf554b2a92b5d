"""DLSR scores and features: closed forms, brute-force numpy, batching independence."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion.schedules import gaussian_schedule
from diffjax.ood import features as feat
from diffjax.ood import scores

DIMS = (3, 5, 8)


def _pair(seed=0, n=7):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, sum(DIMS))).astype(np.float32), rng.normal(size=(n, sum(DIMS))).astype(np.float32)


def test_scores_match_numpy_per_layer_and_fused():
    a, b = _pair()
    out = scores.scores_from_reconstruction(jnp.asarray(a), jnp.asarray(b), DIMS)
    ends = np.cumsum(DIMS)
    sl = [slice(e - d, e) for d, e in zip(DIMS, ends)]
    mse_l = np.stack([((a[:, s] - b[:, s]) ** 2).sum(1) for s in sl])
    cos_l = np.stack([-(a[:, s] * b[:, s]).sum(1) / np.linalg.norm(a[:, s], axis=1) / np.linalg.norm(b[:, s], axis=1)
                      for s in sl])
    np.testing.assert_allclose(out["mse_layers"], mse_l, rtol=1e-5)
    np.testing.assert_allclose(out["mse"], ((a - b) ** 2).sum(1), rtol=1e-5)  # papers.md: sum over all dims
    np.testing.assert_allclose(out["mfsim_layers"], cos_l, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["mfsim"], cos_l.mean(0), rtol=1e-5, atol=1e-6)
    skip = scores.scores_from_reconstruction(jnp.asarray(a), jnp.asarray(b), DIMS, mfsim_skip_first=True)
    np.testing.assert_allclose(skip["mfsim"], cos_l[1:].mean(0), rtol=1e-5, atol=1e-6)
    # perfect reconstruction: mse 0, mfsim -1 (most ID-like)
    same = scores.scores_from_reconstruction(jnp.asarray(a), jnp.asarray(a), DIMS)
    np.testing.assert_allclose(same["mse"], 0.0, atol=1e-6)
    np.testing.assert_allclose(same["mfsim"], -1.0, atol=1e-6)
    # LR = S_early - S_final (xbyym/DLSR test_LR.py: mse_first - mse_end): a final model that
    # reconstructs perfectly scores S_early
    lr = scores.likelihood_ratio(same, out)
    np.testing.assert_allclose(lr["lr_mse"], out["mse"], rtol=1e-6)
    np.testing.assert_allclose(lr["lr_mfsim"], out["mfsim"] + 1.0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores.likelihood_ratio(out, same)["lr_mse"], -out["mse"], rtol=1e-6)


def test_per_sample_zscore_matches_authors_formula():
    a, _ = _pair(1)
    a = a * np.array([1.0] * 3 + [10.0] * 5 + [0.1] * 8, np.float32) + 3.0
    got = np.asarray(feat.zscore_per_sample(jnp.asarray(a), DIMS))
    ends = np.cumsum(DIMS)
    ref = np.concatenate([(a[:, e - d:e] - a[:, e - d:e].mean(1, keepdims=True))
                          / (a[:, e - d:e].std(1, ddof=1, keepdims=True) + 1e-5) for d, e in zip(DIMS, ends)], 1)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    stats = feat.fit_dataset_stats(a)
    ds = np.asarray(feat.normalize_features(jnp.asarray(a), DIMS, "dataset", stats=stats))
    np.testing.assert_allclose(ds.mean(0), 0.0, atol=1e-4)
    with pytest.raises(ValueError, match="dims"):
        feat.split_layers(jnp.zeros((2, 5)), DIMS)


def test_feature_fn_gap_and_padded_batching():
    # a fake 2-stage "encoder": stride-2 average pool, then its 3-channel to 2-channel map
    def encode(x):
        f1 = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
        return [f1, f1[..., :2] * 2.0]

    fn = feat.make_feature_fn(encode, image_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    imgs = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3)).astype(np.uint8)
    out = feat.extract_features(fn, imgs, batch_size=2, progress=False)
    x = (imgs / 255.0 - 0.5) / 0.5
    ref = np.concatenate([x.mean((1, 2)), 2 * x[..., :2].mean((1, 2))], 1)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert out.shape == (5, 5)


def test_reconstruction_noise_statistics_and_batch_independence():
    sched = gaussian_schedule("scaled_linear", 100)
    t = 40
    abar = float(sched.alpha_bars[t])

    def unbiased(x, tt):  # x0_hat = x_t / sqrt(abar_t): z0_hat - z0 = sqrt((1-abar)/abar) eps
        return x / jnp.sqrt(sched.alpha_bars[tt])[:, None]

    rng = np.random.default_rng(0)
    z0 = jnp.asarray(rng.normal(size=(2000, sum(DIMS))).astype(np.float32))
    keys = scores.example_keys(jax.random.PRNGKey(3), jnp.arange(2000))
    out = scores.reconstruction_scores(unbiased, sched, z0, t, keys, DIMS, ddim_steps=0)
    expected = sum(DIMS) * (1 - abar) / abar
    assert float(out["mse"].mean()) == pytest.approx(expected, rel=0.03)
    # same example ids -> same noise, whatever the batch it is in
    sub = scores.reconstruction_scores(unbiased, sched, z0[5:9], t, keys[5:9], DIMS, ddim_steps=0)
    np.testing.assert_allclose(sub["mse"], out["mse"][5:9], rtol=1e-5)
    # t = 0 is clean: perfect reconstruction
    clean = scores.reconstruction_scores(unbiased, sched, z0[:4], 0, keys[:4], DIMS, ddim_steps=0)
    np.testing.assert_allclose(clean["mse"], 0.0, atol=1e-8)
