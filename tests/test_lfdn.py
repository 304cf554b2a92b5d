"""LFDN: shapes, zero-init property, paper-size parameter count, parity with a PyTorch LFDN."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models.lfdn import LFDN


def _init(model, d, b=3, seed=0):
    return model.init(jax.random.PRNGKey(seed), jnp.zeros((b, d)), jnp.zeros((b,), jnp.int32))["params"]


def test_shapes_and_zero_init_output():
    model = LFDN(in_dim=12, num_blocks=3)
    params = _init(model, 12)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 12))
    out = model.apply({"params": params}, x, jnp.arange(5))
    assert out.shape == (5, 12) and out.dtype == jnp.float32
    # zero-initialised output layer -> exactly 0, and every block's last Dense is zero
    np.testing.assert_array_equal(np.asarray(out), 0.0)
    for i in range(3):
        assert not np.any(np.asarray(params[f"block_{i}"]["dense_out"]["kernel"]))
    assert params["input_proj"]["kernel"].shape == (12, 24)  # width = 2 * in_dim by default
    assert params["time_dense_0"]["kernel"].shape == (24, 12)  # sinusoidal(W) -> E = in_dim


def test_blocks_are_identity_at_init_and_time_matters_after_training_like_perturbation():
    model = LFDN(in_dim=8, width=16, num_blocks=2)
    params = _init(model, 8)
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 8))
    # blocks are the identity at init: with a random output kernel the network is
    # Dense_out(SiLU(GN(input_proj(SiLU(x))))), whatever t is
    p = jax.tree_util.tree_map(lambda a: a, params)
    p["output"]["kernel"] = jax.random.normal(jax.random.PRNGKey(3), (16, 8))
    h = jax.nn.silu(x) @ params["input_proj"]["kernel"] + params["input_proj"]["bias"]
    mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    hn = (h - mu) / jnp.sqrt(var + 1e-5) * p["norm_out"]["scale"] + p["norm_out"]["bias"]
    expected = jax.nn.silu(hn) @ p["output"]["kernel"] + p["output"]["bias"]
    got = model.apply({"params": p}, x, jnp.full((4,), 7))
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
    # with non-zero block outputs the prediction depends on t
    p2 = jax.tree_util.tree_map(lambda a: a + 0.05 * jax.random.normal(jax.random.PRNGKey(4), a.shape), params)
    o1 = model.apply({"params": p2}, x, jnp.full((4,), 1))
    o2 = model.apply({"params": p2}, x, jnp.full((4,), 50))
    assert float(jnp.max(jnp.abs(o1 - o2))) > 1e-3


def test_paper_size_parameter_count():
    # D=720, W=1440, E=720, 16 blocks: count from the papers.md layer list
    model = LFDN(in_dim=720)
    shapes = jax.eval_shape(lambda: _init(model, 720))
    n = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))
    d, w, e = 720, 1440, 720
    block = 2 * w + (w * w + w) + (e * w + w) + 2 * w + (w * w + w)
    expected = (d * w + w) + (w * e + e) + (e * e + e) + 16 * block + 2 * w + (w * d + d)
    assert n == expected
    assert len([k for k in shapes if k.startswith("block_")]) == 16


def test_parity_with_torch_lfdn():
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    d, w, e, nb = 10, 20, 10, 2

    class TBlock(tnn.Module):  # the authors' layer order: GN->SiLU->Linear (+ SiLU->Linear(emb)) -> GN->SiLU->Linear
        def __init__(self):
            super().__init__()
            self.n1, self.l1, self.le = tnn.GroupNorm(1, w), tnn.Linear(w, w), tnn.Linear(e, w)
            self.n2, self.l2 = tnn.GroupNorm(1, w), tnn.Linear(w, w)

        def forward(self, x, emb):
            h = self.l1(tnn.functional.silu(self.n1(x))) + self.le(tnn.functional.silu(emb))
            return x + self.l2(tnn.functional.silu(self.n2(h)))

    class TLFDN(tnn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.t0, self.t1 = tnn.Linear(d, w), tnn.Linear(w, e), tnn.Linear(e, e)
            self.blocks = tnn.ModuleList([TBlock() for _ in range(nb)])
            self.no, self.out = tnn.GroupNorm(1, w), tnn.Linear(w, d)

        def forward(self, x, t):
            half = w // 2
            freqs = torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
            args = t.float()[:, None] * freqs[None]
            emb = self.t1(tnn.functional.silu(self.t0(torch.cat([torch.cos(args), torch.sin(args)], -1))))
            h = self.inp(tnn.functional.silu(x))
            for b in self.blocks:
                h = b(h, emb)
            return self.out(tnn.functional.silu(self.no(h)))

    torch.manual_seed(0)
    tm = TLFDN().eval()
    for p in tm.parameters():  # non-zero everywhere, GN affine included
        tnn.init.normal_(p, std=0.3)
    model = LFDN(in_dim=d, width=w, emb_dim=e, num_blocks=nb)

    def dense(lin):
        return {"kernel": jnp.asarray(lin.weight.detach().numpy().T), "bias": jnp.asarray(lin.bias.detach().numpy())}

    def gn(n):
        return {"scale": jnp.asarray(n.weight.detach().numpy()), "bias": jnp.asarray(n.bias.detach().numpy())}

    params = {"input_proj": dense(tm.inp), "time_dense_0": dense(tm.t0), "time_dense_1": dense(tm.t1),
              "norm_out": gn(tm.no), "output": dense(tm.out)}
    for i, b in enumerate(tm.blocks):
        params[f"block_{i}"] = {"norm_in": gn(b.n1), "dense_in": dense(b.l1), "dense_emb": dense(b.le),
                                "norm_out": gn(b.n2), "dense_out": dense(b.l2)}
    ref_tree = jax.tree_util.tree_structure(_init(model, d))
    assert jax.tree_util.tree_structure(params) == ref_tree
    x = np.random.default_rng(0).normal(size=(6, d)).astype(np.float32)
    t = np.array([1, 3, 10, 50, 99, 100])
    with torch.no_grad():
        ref = tm(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    got = jax.jit(model.apply)({"params": params}, jnp.asarray(x), jnp.asarray(t))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4)


def test_dropout_needs_rng_only_in_training_and_bad_shape_errors():
    model = LFDN(in_dim=6, num_blocks=1, dropout=0.5)
    params = _init(model, 6)
    x = jnp.ones((2, 6))
    model.apply({"params": params}, x, jnp.ones((2,), jnp.int32))  # eval: deterministic, no rng
    model.apply({"params": params}, x, jnp.ones((2,), jnp.int32), train=True,
                rngs={"dropout": jax.random.PRNGKey(0)})
    with pytest.raises(ValueError, match=r"\[B, 6\]"):
        model.apply({"params": params}, jnp.ones((2, 5)), jnp.ones((2,), jnp.int32))
