"""Shared OOD reporting (table, ROC / sweep plots) and the generic sweep on text-shaped inputs
(paper 000: Gaussian diffusion on token embeddings [N, L, D] with a [N, L] padding mask)."""
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import gaussian
from diffjax.diffusion.schedules import gaussian_schedule
from diffjax.ood import metrics, report, scores, sweep

N, L, D, V = 7, 5, 4, 11
SCHED = gaussian_schedule("linear", 1000)


def _png_size(path):
    from PIL import Image

    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # decodes the whole image: a truncated file fails here
        return im.size


# ----------------------------------------------------------------------------------------------
# results table and plots


def _sets(seed=0):
    rng = np.random.default_rng(seed)
    id_s = {"a": rng.normal(size=40), "b": rng.normal(size=40), "base": rng.normal(size=40)}
    ood = {"near": {n: rng.normal(size=30) + 0.5 for n in id_s},
           "far": {n: rng.normal(size=25) + 2.0 for n in id_s}}
    ood["far"]["a"][:5] = id_s["a"][:5]  # ties between ID and OOD
    return id_s, ood


def test_results_table_is_ood_metrics_per_set_and_json_able():
    id_s, ood = _sets()
    table = report.results_table(id_s, ood)
    assert list(table["metrics"]) == ["near", "far"] and list(table["average"]) == ["a", "b", "base"]
    for o, per in ood.items():
        for n in id_s:
            assert table["metrics"][o][n] == metrics.ood_metrics(id_s[n], per[n])
    for n in id_s:
        for m in report.METRIC_NAMES:
            assert table["average"][n][m] == pytest.approx(np.mean([table["metrics"][o][n][m] for o in ood]), abs=0)
    assert json.loads(json.dumps(table)) == table
    text = report.format_table(table, "title line", baselines=("base",),
                               per_layer={"near": {"a_layers": [0.5, 0.25]}}, per_layer_title="per layer:")
    lines = text.splitlines()
    assert lines[0] == "title line" and metrics.FPR95_CONVENTION in text and "95% of ID" in text
    assert "base (baseline)" in text and "a (baseline)" not in text
    row = next(x for x in lines if x.startswith("far") and " b " in x)
    m = table["metrics"]["far"]["b"]
    assert row.split()[2:] == [f"{m['auroc']:.4f}", f"{m['fpr95']:.4f}", f"{m['aupr_in']:.4f}", f"{m['aupr_out']:.4f}"]
    assert sum(x.startswith("average") for x in lines) == 3 and lines[-2] == "per layer:"


def test_per_layer_auroc():
    rng = np.random.default_rng(1)
    id_l = {"mse_layers": rng.normal(size=(3, 20))}
    ood_l = {"x": {"mse_layers": rng.normal(size=(3, 15)) + np.arange(3)[:, None]}}
    got = report.per_layer_auroc(id_l, ood_l)
    assert got["x"]["mse_layers"] == [metrics.ood_metrics(id_l["mse_layers"][l], ood_l["x"]["mse_layers"][l])["auroc"]
                                      for l in range(3)]


def test_plots_are_valid_pngs(tmp_path):
    id_s, ood = _sets()
    report.plot_rocs(id_s, ood, str(tmp_path / "roc.png"), baselines=("base",))
    w, h = _png_size(tmp_path / "roc.png")
    assert w > h  # two panels side by side
    ts = [1, 5, 10]
    rng = np.random.default_rng(2)
    res = report.sweep_results(ts, {"a": rng.normal(size=(3, 2, 20))},
                               {o: {"a": rng.normal(size=(3, 2, 10)) + 1} for o in ("p", "q", "r")})
    report.plot_sweep(ts, report.sweep_curves(res), str(tmp_path / "sweep.png"), title="t")
    w3, _ = _png_size(tmp_path / "sweep.png")
    report.plot_sweep(ts, {"a": res["auroc"]["p"]["a"]}, str(tmp_path / "one.png"))
    w1, _ = _png_size(tmp_path / "one.png")
    assert w3 > 2 * w1  # one panel per OOD set


def test_sweep_results_best_t_and_at_t():
    rng = np.random.default_rng(3)
    ts = [2, 4, 8]
    id_g = {"s": rng.normal(size=(3, 2, 30))}
    ood_g = {"o": {"s": rng.normal(size=(3, 2, 20)) + np.array([0.2, 2.0, 0.5])[:, None, None]}}
    res = report.sweep_results(ts, id_g, ood_g)
    want = report.sweep_auroc(id_g["s"], ood_g["o"]["s"])
    assert res["auroc"]["o"]["s"] == [float(x) for x in want]
    assert res["best_t"]["o"]["s"] == {"t": 4, "auroc": float(want[1])}
    assert report.at_t(res, 8) == {"t": 8, "auroc": {"o": {"s": float(want[2])}}} and report.at_t(res, 3) is None
    assert "o/s: t=4" in report.format_best_t(res)
    assert json.loads(json.dumps(res)) == res


# ----------------------------------------------------------------------------------------------
# the generic sweep on text-shaped inputs


def _text_data(seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, L + 1, size=N)
    mask = (np.arange(L)[None] < lengths[:, None])
    ids = np.where(mask, rng.integers(0, V, size=(N, L)), 0).astype(np.int32)
    emb = rng.normal(size=(V, D)).astype(np.float32)
    x = emb[ids] * mask[..., None]
    return {"embeddings": x.astype(np.float32), "ids": ids, "mask": mask}, emb


def _text_model(seen):
    """A toy token denoiser with input-dependent, token-mixing behaviour (a masked mean over the
    sentence, like attention) and paper 000's scores L_d, L_c, L_d + L_c. ``seen`` records the
    shapes the denoiser is traced with."""
    rng = np.random.default_rng(9)
    params = {"w": jnp.asarray(rng.normal(size=(D, D)) * 0.5, jnp.float32),
              "u": jnp.asarray(rng.normal(size=(D, D)) * 0.5, jnp.float32),
              "emb": jnp.asarray(_text_data()[1])}

    def denoise(p, x_t, mask, t):  # [B, L, D], [B, L], [B] -> x0_hat [B, L, D]
        seen.append((x_t.shape, mask.shape, t.shape))
        m = mask[..., None].astype(x_t.dtype)
        ctx = jnp.sum(x_t * m, axis=1, keepdims=True) / jnp.maximum(jnp.sum(m, axis=1, keepdims=True), 1.0)
        return jnp.tanh(x_t @ p["w"] + ctx @ p["u"]) * (1.0 + t[:, None, None] / 1000.0)

    def score_fn(p, inputs, t, keys):  # rows [B, ...], t [B], keys [B] -> {name: [B]}
        x0, mask, ids = inputs["embeddings"], inputs["mask"], inputs["ids"]
        eps = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:]))(keys)
        x_t = gaussian.q_sample(SCHED, x0, t, eps)
        x0_hat = denoise(p, x_t, mask, t)
        m = mask.astype(jnp.float32)
        n_tok = jnp.maximum(jnp.sum(m, axis=1), 1.0)
        l_d = jnp.sum(jnp.sum((x0_hat - x0) ** 2, axis=-1) * m, axis=1) / n_tok
        logp = jax.nn.log_softmax(x0_hat @ p["emb"].T, axis=-1)
        l_c = -jnp.sum(jnp.take_along_axis(logp, ids[..., None], axis=-1)[..., 0] * m, axis=1) / n_tok
        return {"l_d": l_d, "l_c": l_c, "l_d+l_c": l_d + l_c}

    return params, score_fn


@pytest.fixture(scope="module")
def text():
    seen = []
    params, score_fn = _text_model(seen)
    return params, score_fn, seen


def test_text_sweep_equals_per_t_loop(text):
    params, score_fn, seen = text
    inputs, _ = _text_data()
    ts = [50, 200, 1000 - 1]
    keys = sweep.seed_keys(0, 3)  # K = 3 fixed noise draws
    fn = sweep.make_score_sweep(score_fn)
    got = sweep.sweep_chunked(fn, params, inputs, ts, keys)
    assert got["l_d"].shape == (3, 3, N) and seen[-1] == ((3 * 3 * N, L, D), (3 * 3 * N, L), (3 * 3 * N,))
    single = jax.jit(score_fn)
    for i, t in enumerate(ts):
        for s in range(3):
            ref = single(params, jax.tree_util.tree_map(jnp.asarray, inputs), jnp.full((N,), t, jnp.int32),
                         scores.example_keys(keys[s], jnp.arange(N)))
            for k in ref:
                np.testing.assert_allclose(got[k][i, s], np.asarray(ref[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    assert not np.allclose(got["l_d"][:, 0], got["l_d"][:, 1])  # seeds draw different noise
    assert not np.allclose(got["l_d"][0], got["l_d"][-1])  # t matters
    np.testing.assert_allclose(got["l_d+l_c"], got["l_d"] + got["l_c"], rtol=1e-6)
    # lax.map over t (t_batch_size) agrees. With 1 t per group the value at t is the single-t call's
    # to float32 rounding only: here XLA:CPU rounds the log_softmax of a 3-t loop and of a 1-t call
    # (whose loop it removes) 1 ulp apart in 2 of 21 values; DLSR's scores are bitwise equal
    # (tests/test_ood_sweep.py, tests/test_dlsr_task.py)
    by_map = sweep.sweep_chunked(sweep.make_score_sweep(score_fn, t_batch_size=2), params, inputs, ts, keys)
    for k in got:
        np.testing.assert_allclose(by_map[k], got[k], rtol=1e-5, atol=1e-6)
    one_t = sweep.make_score_sweep(score_fn, t_batch_size=1)
    grid = sweep.sweep_chunked(one_t, params, inputs, ts, keys, chunk=4)
    at = sweep.sweep_chunked(one_t, params, inputs, ts[1:2], keys, chunk=4)
    for k in got:
        np.testing.assert_allclose(grid[k][1], at[k][0], rtol=1e-6, atol=0, err_msg=k)


def test_text_score_independent_of_chunk_and_padding(text):
    params, score_fn, _ = text
    inputs, _ = _text_data()
    ts, keys = [100, 400], sweep.seed_keys(1, 2)
    fn = sweep.make_score_sweep(score_fn)
    whole = sweep.sweep_chunked(fn, params, inputs, ts, keys)
    parts = sweep.sweep_chunked(fn, params, inputs, ts, keys, chunk=3)  # 3 + 3 + 1 (padded)
    for k in whole:
        np.testing.assert_allclose(parts[k], whole[k], rtol=1e-6, atol=1e-7)
    # example 0 (id 0) next to different companions: the same score
    other, _ = _text_data(seed=5)
    mix = jax.tree_util.tree_map(lambda a, b: np.concatenate([a[:1], b[1:4]]), inputs, other)
    a = fn(params, jax.tree_util.tree_map(lambda v: jnp.asarray(v[:4]), inputs), jnp.asarray(ts), keys, jnp.arange(4))
    b = fn(params, jax.tree_util.tree_map(jnp.asarray, mix), jnp.asarray(ts), keys, jnp.arange(4))
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k])[..., 0], np.asarray(b[k])[..., 0], err_msg=k)
        assert not np.allclose(np.asarray(a[k])[..., 1:], np.asarray(b[k])[..., 1:])
    # garbage beyond the mask (embeddings and token ids) changes nothing
    junk = dict(inputs)
    rng = np.random.default_rng(7)
    pad = ~inputs["mask"]
    assert pad.any()
    junk["embeddings"] = np.where(pad[..., None], rng.normal(size=(N, L, D)) * 100, inputs["embeddings"]).astype(np.float32)
    junk["ids"] = np.where(pad, rng.integers(0, V, size=(N, L)), inputs["ids"]).astype(np.int32)
    padded = sweep.sweep_chunked(fn, params, junk, ts, keys)
    for k in whole:
        np.testing.assert_array_equal(padded[k], whole[k], err_msg=k)
    # the K-draw average and the table run on the swept scores as on any others
    id_m = report.seed_mean(whole["l_d+l_c"])
    assert id_m.shape == (2, N)
    np.testing.assert_allclose(id_m, whole["l_d+l_c"].mean(1), rtol=1e-6)


def test_inputs_must_share_the_example_axis(text):
    params, score_fn, _ = text
    inputs, _ = _text_data()
    inputs["mask"] = inputs["mask"][:-1]
    with pytest.raises(ValueError, match="leading example axis"):
        sweep.sweep_chunked(sweep.make_score_sweep(score_fn), params, inputs, [1], sweep.seed_keys(0, 1))


def test_plots_leave_pyplot_and_the_backend_alone(tmp_path):
    """Writing roc.png / sweep.png must not switch matplotlib's backend or touch pyplot's figure registry:
    in a notebook that would stop inline plots from showing (colabs/). A fresh process checks both."""
    import subprocess
    import sys

    code = f"""
import sys, matplotlib, numpy as np
matplotlib.use("svg")
from diffjax.ood import report
report.plot_rocs({{"s": np.arange(8.0)}}, {{"o": {{"s": np.arange(8.0) + 3}}}}, {str(tmp_path / 'roc.png')!r})
report.plot_sweep([1, 2], {{"s": [0.5, 0.7]}}, {str(tmp_path / 'sweep.png')!r})
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "roc.png").stat().st_size > 0 and (tmp_path / "sweep.png").stat().st_size > 0
