"""AR2Diff (papers.md 001): masks as attention patterns, the SUNDAE loss on a hand-computed case,
refinement keeps the prompt and returns the best-log-prob chain, the T5 bidirectional decoder vs a
hand-built mask, and the task's decoders on a tiny random Llama / T5 (configs/ar2diff_smollm2_demo.py:tiny)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion.discrete_sampling import iterative_refinement_sample
from diffjax.diffusion.uniform import unrolled_denoising_loss
from diffjax.models import llama as llama_lib
from diffjax.models import t5 as t5_lib
from diffjax.runtime import RuntimeContext
from tests._config_util import REPO, set_fields

CONFIG = os.path.join(REPO, "configs", "ar2diff_smollm2_demo.py")


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


# ----------------------------------------------------------------------------- masks


def test_prefix_and_diffusion_masks_are_the_stated_patterns():
    from diffjax.tasks.ar2diff_model import diffusion_attention_mask

    L, pl = 6, np.array([2, 4])
    got = np.asarray(llama_lib.make_attention_mask("prefix", jnp.arange(L), jnp.arange(L), None, jnp.asarray(pl)))
    for b in range(2):
        want = np.array([[j <= i or j < pl[b] for j in range(L)] for i in range(L)])
        np.testing.assert_array_equal(got[b, 0], want)
    full = np.asarray(diffusion_attention_mask(jnp.asarray(pl), L))
    assert full.shape == (2, 1, L, L) and full.all()
    rng = jax.random.key(0)
    zero = np.asarray(diffusion_attention_mask(jnp.asarray(pl), L, 0.0, rng))
    np.testing.assert_array_equal(zero, got)  # annealing ratio 0 = the prefix-LM mask
    one = np.asarray(diffusion_attention_mask(jnp.asarray(pl), L, 1.0, rng))
    assert one.all()  # ratio 1 = full
    half = np.asarray(diffusion_attention_mask(jnp.asarray(pl), L, 0.5, rng))
    assert (half >= got).all() and 0 < (half & ~got).sum() < (~got).sum()  # only adds visibility
    np.testing.assert_array_equal(half[0] | got[1, 0], half[1] | got[0, 0])  # one [L, L] draw shared by the batch


def test_llama_attention_patterns_seen_in_the_logits():
    """Changing the token at slot k changes the logits at slot i < k iff the pattern lets i see k."""
    cfg = llama_lib.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=1)
    model = llama_lib.Llama(cfg)
    x = jnp.array([[3, 7, 9, 11, 13, 17]])
    params = model.init(jax.random.key(0), x)["params"]
    pl = jnp.array([3])
    k = 4  # a target slot
    y = x.at[0, k].set(42)
    for mode, sees in (("causal", lambda i: i >= k), ("prefix", lambda i: i >= k),
                       ("bidirectional", lambda i: True)):
        a = model.apply({"params": params}, x, attention=mode, prefix_length=pl)
        b = model.apply({"params": params}, y, attention=mode, prefix_length=pl)
        changed = np.abs(np.asarray(a - b)).max(-1)[0] > 1e-6
        np.testing.assert_array_equal(changed, [sees(i) for i in range(6)], err_msg=mode)
    # prefix: a prompt slot sees a later prompt slot (bidirectional prefix), causal does not
    y = x.at[0, 2].set(42)
    for mode, want in (("causal", False), ("prefix", True)):
        a = model.apply({"params": params}, x, attention=mode, prefix_length=pl)
        b = model.apply({"params": params}, y, attention=mode, prefix_length=pl)
        assert (np.abs(np.asarray(a - b))[0, 0].max() > 1e-6) == want, mode


# ----------------------------------------------------------------------------- SUNDAE loss


def test_sundae_loss_hand_computed():
    """V = 3, x0 = [0, 1, 2], prompt = slot 0, rate 0 (nothing corrupted), logits = TABLE[input token].
    Step 1: L1 = -(log p(1 | TABLE[1]) + log p(2 | TABLE[2])). TABLE[1], TABLE[2] are peaked, so the
    step-2 sample is y' = [0, argmax TABLE[1] = 2, argmax TABLE[2] = 0] whatever the key:
    L2 = -(log p(1 | TABLE[2]) + log p(2 | TABLE[0])); loss = (L1 + L2) / 2 ("sequence")."""
    table = np.array([[0.3, -0.2, 0.5], [0.0, 1.0, 60.0], [60.0, 0.5, -1.0]], np.float32)
    seen = []

    def logits_fn(x, t):
        seen.append(x)
        return jnp.asarray(table)[x]

    x0 = jnp.array([[0, 1, 2]])
    corr = jnp.array([[False, True, True]])
    loss, aux = unrolled_denoising_loss(logits_fn, x0, jax.random.key(3), vocab_size=3, corruptible=corr,
                                        rate=jnp.zeros((1,)), normalize="sequence")
    ls = _log_softmax(table)
    l1 = -(ls[1, 1] + ls[2, 2])
    l2 = -(ls[2, 1] + ls[0, 2])
    np.testing.assert_allclose(float(aux["loss_step1"]), l1, rtol=1e-5)
    np.testing.assert_allclose(float(aux["loss_step2"]), l2, rtol=1e-5)
    np.testing.assert_allclose(float(loss), (l1 + l2) / 2, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(seen[1]), [[0, 2, 0]])  # the step-2 input, prompt kept


# ----------------------------------------------------------------------------- refinement


def test_refinement_keeps_prompt_and_returns_best_chain():
    V, L = 7, 6

    def logits_fn(x, t):  # input-dependent: favours (x + position) % V, mildly
        pos = jnp.arange(L)[None]
        return 2.0 * jax.nn.one_hot((x + pos) % V, V) + 0.1 * jax.nn.one_hot((3 * x) % V, V)

    x_init = jnp.array([[5, 1, 0, 0, 0, 0], [2, 2, 2, 0, 0, 0]])
    corr = jnp.arange(L)[None] >= jnp.array([[2], [3]])
    tok, score, all_tok, all_score = iterative_refinement_sample(
        logits_fn, x_init, jax.random.key(1), vocab_size=V, num_steps=3, temperature=1.0, num_samples=5,
        corruptible=corr, return_all=True)
    tok, all_tok = np.asarray(tok), np.asarray(all_tok)
    np.testing.assert_array_equal(np.where(corr, 0, tok), np.where(corr, 0, x_init))  # prompt kept
    assert (all_tok[np.broadcast_to(~np.asarray(corr)[:, None], all_tok.shape)]
            == np.repeat(np.asarray(x_init)[:, None], 5, 1)[np.broadcast_to(~np.asarray(corr)[:, None], all_tok.shape)]).all()
    best = np.argmax(np.asarray(all_score), 1)
    np.testing.assert_array_equal(tok, all_tok[np.arange(2), best])
    np.testing.assert_allclose(np.asarray(score), np.asarray(all_score).max(1))
    assert len({tuple(r) for r in all_tok[0]}) > 1  # the chains differ, so the choice is a real one


# ----------------------------------------------------------------------------- T5


def _tiny_t5(mode):
    cfg = t5_lib.T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2, dropout_rate=0.0,
                          decoder_attention=mode, relative_attention_num_buckets=8, relative_attention_max_distance=16)
    return t5_lib.T5(cfg)


def test_t5_bidirectional_decoder_equals_hand_built_mask():
    model = _tiny_t5("bidirectional")
    enc = jnp.array([[5, 6, 7, 8], [9, 10, 0, 0]])
    enc_m = enc > 0
    dec = jnp.array([[3, 4, 5, 6, 7], [8, 9, 10, 0, 0]])
    dec_m = dec > 0
    params = model.init(jax.random.key(0), enc, dec)["params"]
    got = model.apply({"params": params}, enc, dec, enc_m, dec_m)
    # reference: the causal-configured module with bidirectional buckets and an explicit all-visible mask
    ref_model = t5_lib.with_decoder_attention(model, "causal", bidirectional_buckets=True)
    hand = np.ones((1, 1, 5, 5), bool)
    ref = ref_model.apply({"params": params}, enc, dec, enc_m, dec_m, method=lambda m, e, d, em, dm: m.decode(
        d, m.encode(e, em), em, dm, decoder_self_mask=jnp.asarray(hand)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-6)
    # and the causal decoder equals the same module with a hand-built lower-triangular mask
    causal = t5_lib.with_decoder_attention(model, "causal")
    tri = jnp.asarray(np.tril(np.ones((5, 5), bool))[None, None])
    a = causal.apply({"params": params}, enc, dec, enc_m, dec_m)
    ref_c = t5_lib.with_decoder_attention(model, "bidirectional", bidirectional_buckets=False).apply(
        {"params": params}, enc, dec, enc_m, dec_m,
        method=lambda m, e, d, em, dm: m.decode(d, m.encode(e, em), em, dm, decoder_self_mask=tri))
    np.testing.assert_allclose(np.asarray(a), np.asarray(ref_c), atol=1e-6)
    # bidirectional really looks ahead: changing the last decoder token moves the first slot's logits
    dec2 = dec.at[0, 4].set(33)
    moved = model.apply({"params": params}, enc, dec2, enc_m, dec_m)[0, 0] - got[0, 0]
    assert float(jnp.abs(moved).max()) > 1e-6
    still = causal.apply({"params": params}, enc, dec2, enc_m, dec_m)[0, 0] - a[0, 0]
    assert float(jnp.abs(still).max()) < 1e-6


# ----------------------------------------------------------------------------- the task (tiny)


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    from diffjax.cli import _load_config_file

    c = _load_config_file(CONFIG + ":tiny")
    with c.unlocked():
        set_fields(c, {"task.cache_dir": str(tmp_path_factory.mktemp("ar2diff_cache")), "task.eval_examples": 8,
                       "task.num_generate": 2})
    return c


def _task(task_cfg, **fields):
    from diffjax.tasks.base import build_task

    c = task_cfg.copy_and_resolve_references()
    set_fields(c, fields)
    return build_task(c)


@pytest.mark.slow  # ~20 s on 2 idle cores (several compiles); 130 s measured under a load of 14
def test_task_losses_and_decoders_tiny(tiny_cfg):
    ctx = RuntimeContext.local()
    rng = jax.random.key(0)
    t3 = _task(tiny_cfg.task, stage=3)
    params = t3.init_params(rng)
    batch = next(t3.train_batches(0, global_batch_size=4))
    assert batch["step"].tolist() == [0] * 4
    loss, aux = jax.jit(t3.loss_fn)(params, batch, rng)
    assert np.isfinite(float(loss)) and 0.0 <= float(aux["corrupt_rate"]) <= 1.0
    out = t3.generate(params, rng, "", context=ctx, prompts=["Stocks fall again\nLast 3 words:"], show_steps=True)
    s = out["samples"][0]
    assert out["decoder"] == "refine" and len(s["chains"]) == int(tiny_cfg.task.num_samples)
    assert s["log_prob"] == pytest.approx(max(c["log_prob"] for c in s["chains"]), rel=1e-5)
    # the decoded rows keep the prompt exactly
    ids = t3._encode_prompts(["Stocks fall again\nLast 3 words:"])
    inputs = t3._host_inputs(ids)
    toks = t3._decode(params, rng, inputs, ctx)["tokens"]
    np.testing.assert_array_equal(toks[0, :len(ids[0])], ids[0])
    # stage 1 (AR prefix LM) and its KV-cache decoder; the masked objective with the top-k decoder
    t1 = _task(tiny_cfg.task, stage=1)
    l1, _ = jax.jit(t1.loss_fn)(params, batch, rng)
    assert np.isfinite(float(l1))
    res = t1.evaluate(params, rng, "", context=ctx)
    assert res["decoder"] == "ar" and {"exact_match", "bleu", "squad_f1", "heldout_loss"} <= set(res)
    tm = _task(tiny_cfg.task, stage=3, objective="masked", mask_id=0, anneal_steps=3)
    lm, aux = jax.jit(tm.loss_fn)(params, batch, rng)
    assert np.isfinite(float(lm)) and float(aux["anneal_ratio"]) == pytest.approx(1 / 3)
    g = tm.generate(params, rng, "", context=ctx, show_steps=True)
    assert g["decoder"] == "topk" and len(g["samples"][0]["steps"]) == int(tiny_cfg.task.num_steps)


@pytest.mark.slow
def test_task_encoder_decoder_tiny(tiny_cfg):
    ctx = RuntimeContext.local()
    rng = jax.random.key(0)
    model = dict(vocab_size=49152, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, dropout_rate=0.0,
                 tie_word_embeddings=True, pad_token_id=2, eos_token_id=2, decoder_start_token_id=2)
    import ml_collections

    c = tiny_cfg.task.copy_and_resolve_references()
    with c.unlocked():
        c.model = ml_collections.ConfigDict(model)
    for stage, decoder in ((1, "ar"), (3, "refine")):
        t = _task(c, arch="encoder_decoder", stage=stage, target_length=8)
        assert t.model.config.decoder_attention == ("causal" if stage == 1 else "bidirectional")
        params = t.init_params(rng)
        batch = next(t.train_batches(0, global_batch_size=4))
        loss, _ = jax.jit(t.loss_fn)(params, batch, rng)
        assert np.isfinite(float(loss))
        out = t.generate(params, rng, "", context=ctx)
        assert out["decoder"] == decoder and len(out["samples"]) == 2
