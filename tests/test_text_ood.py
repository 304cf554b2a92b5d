"""Paper 000's text OOD pieces (diffjax/tasks/text_ood_model.py): L_d / L_c against a hand-computed
example, a sentence's score independent of its batch and of its padding, the vmapped sweep equal to
a per-t loop; on a tiny random BERT (fast). The task end to end: tests/test_user_data.py."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion.schedules import gaussian_schedule
from diffjax.models.bert import BertConfig
from diffjax.ood import sweep as sweep_lib
from diffjax.tasks import text_ood_data as tdata
from diffjax.tasks import text_ood_model as tm

SCHED = gaussian_schedule("linear", 1000)
V, D, L = 40, 16, 12


def test_ld_lc_hand_computed():
    x0 = jnp.asarray([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # [1, 3, 2]; the third token is padding
    x0_hat = jnp.asarray([[[0.5, 0.5], [0.0, 0.0], [0.0, 0.0]]])
    mask = jnp.asarray([[True, True, False]])
    emb = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # V = 3
    tokens = jnp.asarray([[0, 1, 2]])
    # L_d: token 0: 0.5^2 + 0.5^2 = 0.5; token 1: 0 + 1 = 1; padding ignored -> mean 0.75
    np.testing.assert_allclose(tm.l_d(x0_hat, x0, mask), [0.75], rtol=1e-6)
    # L_c: token 0 logits x0_hat E^T = [0.5, 0.5, 1.0], target 0; token 1 logits [0, 0, 0], target 1
    ce0 = math.log(2 * math.exp(0.5) + math.exp(1.0)) - 0.5
    ce1 = math.log(3.0)
    np.testing.assert_allclose(tm.l_c(x0_hat, emb, tokens, mask), [(ce0 + ce1) / 2], rtol=1e-6)
    np.testing.assert_allclose(tm.l_c(x0_hat, emb, tokens, mask, row_batch=1), [(ce0 + ce1) / 2], rtol=1e-6)
    # only token 0 in the mask
    np.testing.assert_allclose(tm.l_c(x0_hat, emb, tokens, jnp.asarray([[True, False, False]])), [ce0], rtol=1e-6)


def _tiny():
    cfg = BertConfig(vocab_size=V, hidden_size=D, num_layers=2, num_heads=2, intermediate_size=32,
                     max_position_embeddings=64, mlm_head=False, hidden_dropout=0.0, attention_dropout=0.0)
    model = tm.TextDenoiser(cfg, time_mult=2)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, L, D)), jnp.ones((1,), jnp.int32),
                        jnp.ones((1, L), bool))["params"]
    # non-trivial x0 head and embeddings so that every score depends on its input
    params = jax.tree_util.tree_map(lambda x: x, params)
    params["x0_head"]["kernel"] = params["x0_head"]["kernel"] * 20
    return model, params


def _data(n=6, seed=0, length=L):
    rng = np.random.default_rng(seed)
    lens = rng.integers(3, L + 1, size=n)
    mask = np.arange(length)[None] < lens[:, None]
    tokens = np.where(mask, rng.integers(3, V, size=(n, length)), 0).astype(np.int32)
    return {"tokens": tokens, "mask": mask}


@pytest.fixture(scope="module")
def tiny():
    model, params = _tiny()
    return model, params, tm.make_score_fn(model, SCHED)


def test_loss_runs_and_depends_on_weights(tiny):
    model, params, _ = tiny
    x = _data()
    rng = jax.random.PRNGKey(3)
    l11, m = tm.diffusion_loss(model, params, x["tokens"], x["mask"], rng, schedule=SCHED)
    l10, m10 = tm.diffusion_loss(model, params, x["tokens"], x["mask"], rng, schedule=SCHED, lc_weight=0.0)
    np.testing.assert_allclose(float(l11), float(m["l_d"] + m["l_c"]), rtol=1e-6)
    np.testing.assert_allclose(float(l10), float(m["l_d"]), rtol=1e-6)
    g = jax.grad(lambda p: tm.diffusion_loss(model, p, x["tokens"], x["mask"], rng, schedule=SCHED)[0])(params)
    assert float(jnp.abs(g["time_mlp"]["dense_0"]["kernel"]).sum()) > 0  # t reaches the encoder


def test_score_independent_of_batch_and_padding(tiny):
    model, params, score_fn = tiny
    x = _data()
    ids = tdata.content_ids(x["tokens"], x["mask"])
    fn = sweep_lib.make_score_sweep(score_fn)
    keys = sweep_lib.seed_keys(0, 2)
    ts = [100, 600]
    whole = sweep_lib.sweep_chunked(fn, params, x, ts, keys, ids=ids)
    assert whole["ld"].shape == (2, 2, 6)
    # alone (a batch of one), in other company, and padded to a longer length: the same score
    alone = sweep_lib.sweep_chunked(fn, params, jax.tree_util.tree_map(lambda a: a[2:3], x), ts, keys, ids=ids[2:3])
    other = _data(seed=4)
    mix = jax.tree_util.tree_map(lambda a, b: np.concatenate([b[:3], a[2:3], b[3:]]), x, other)
    mix_ids = np.concatenate([tdata.content_ids(other["tokens"][:3], other["mask"][:3]), ids[2:3],
                              tdata.content_ids(other["tokens"][3:], other["mask"][3:])])
    in_mix = sweep_lib.sweep_chunked(fn, params, mix, ts, keys, ids=mix_ids)
    pad = 2 * L
    padded = {"tokens": np.pad(x["tokens"], ((0, 0), (0, pad - L))), "mask": np.pad(x["mask"], ((0, 0), (0, pad - L)))}
    padded["tokens"][:, L:] = 7  # junk beyond the mask
    longer = sweep_lib.sweep_chunked(fn, params, padded, ts, keys, ids=ids)
    for k in tm.SCORE_NAMES:
        np.testing.assert_allclose(alone[k][..., 0], whole[k][..., 2], rtol=2e-5, err_msg=k)
        np.testing.assert_allclose(in_mix[k][..., 3], whole[k][..., 2], rtol=2e-5, err_msg=k)
        np.testing.assert_allclose(longer[k], whole[k], rtol=2e-5, err_msg=k)
    np.testing.assert_allclose(whole["ld_lc"], whole["ld"] + whole["lc"], rtol=1e-6)
    assert not np.allclose(whole["ld"][:, 0], whole["ld"][:, 1])  # the K draws differ
    assert not np.allclose(whole["ld"][0], whole["ld"][1])  # t matters
    # content ids: the same sentence at another position gets the same noise, hence the same score
    assert tdata.content_ids(x["tokens"][2:3], x["mask"][2:3])[0] == ids[2]


def test_sweep_equals_per_t_loop(tiny):
    model, params, score_fn = tiny
    x = _data(n=5, seed=2)
    ids = tdata.content_ids(x["tokens"], x["mask"])
    keys = sweep_lib.seed_keys(1, 3)
    ts = [10, 300, 1000]
    got = sweep_lib.sweep_chunked(sweep_lib.make_score_sweep(score_fn, t_batch_size=1), params, x, ts, keys,
                                  chunk=2, ids=ids)
    single = jax.jit(score_fn)
    for i, t in enumerate(ts):
        for s in range(3):
            ks = jax.vmap(lambda j: jax.random.fold_in(keys[s], j))(jnp.asarray(ids))
            ref = single(params, jax.tree_util.tree_map(jnp.asarray, x), jnp.full((5,), t, jnp.int32), ks)
            for k in ref:
                np.testing.assert_allclose(got[k][i, s], np.asarray(ref[k]), rtol=1e-5, atol=1e-6, err_msg=k)


def test_set_specs_and_user_inputs(tmp_path):
    assert tdata.parse_spec("tfds:glue/mnli#split=validation_matched,field=premise") == (
        "tfds:glue/mnli", {"split": "validation_matched", "field": "premise"})
    assert tdata.parse_spec("tfds:imdb_reviews")[1]["split"] == "test"
    assert tdata.parse_spec("my.txt")[1]["split"] == "train"
    assert tdata.set_name("embedded:hamlet") == "hamlet" and tdata.set_name("/x/my_texts.txt") == "my_texts"
    with pytest.raises(ValueError, match="unknown option"):
        tdata.parse_spec("a.txt#bogus=1")
    p = tmp_path / "in.txt"
    p.write_text("first line\n\n  \nthird line\n")
    assert tdata.read_inputs(str(p)) == ([1, 4], ["first line", "third line"])
    j = tmp_path / "in.jsonl"
    j.write_text('{"id": "a", "text": "x y"}\n{"sentence": "z"}\n')
    assert tdata.read_inputs(str(j)) == (["a", 2], ["x y", "z"])
