"""T5 / mT5 parity with transformers' PyTorch models (tiny random configs) and checkpoint mapping."""

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.checkpoints import hf_t5
from diffjax.models import t5 as t5_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

B, S, T = 3, 9, 6

# name -> (config class, kwargs, untie): several sizes, head counts, d_kv != d_model / heads,
# uneven encoder / decoder depth, T5 v1.0 (relu, tied, scaled), v1.1 (gated-gelu, untied), mT5.
CONFIGS = {
    "v1_0_relu_tied": ("T5Config", dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                        relative_attention_num_buckets=8, relative_attention_max_distance=12,
                                        feed_forward_proj="relu"), False),
    "v1_1_gated_untied": ("T5Config", dict(d_model=24, d_kv=6, d_ff=40, num_layers=2, num_decoder_layers=3,
                                           num_heads=3, relative_attention_num_buckets=16,
                                           relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
                                           tie_word_embeddings=False), True),
    "v1_0_deep_decoder": ("T5Config", dict(d_model=16, d_kv=16, d_ff=24, num_layers=1, num_decoder_layers=2,
                                           num_heads=2, relative_attention_num_buckets=32,
                                           relative_attention_max_distance=128, feed_forward_proj="relu"), False),
    "mt5_untied": ("MT5Config", dict(d_model=20, d_kv=5, d_ff=36, num_layers=2, num_decoder_layers=1,
                                     num_heads=4, relative_attention_num_buckets=6,
                                     relative_attention_max_distance=8), True),
    "mt5_tied_no_head_in_file": ("MT5Config", dict(d_model=16, d_kv=4, d_ff=24, num_layers=1, num_heads=4,
                                                   relative_attention_num_buckets=8), False),
    "umt5_per_layer_bias": ("UMT5Config", dict(d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=2,
                                               num_heads=2, relative_attention_num_buckets=8,
                                               relative_attention_max_distance=16, tie_word_embeddings=False), True),
}

MODEL_CLASSES = {"T5Config": "T5ForConditionalGeneration", "MT5Config": "MT5ForConditionalGeneration",
                 "UMT5Config": "UMT5ForConditionalGeneration"}


def make_hf_model(name, seed=0):
    cls_name, kw, untie = CONFIGS[name]
    config = getattr(transformers, cls_name)(vocab_size=50, dropout_rate=0.0, **kw)
    model_cls = getattr(transformers, MODEL_CLASSES[cls_name])
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    if untie:  # transformers >= 5 builds every T5 tied; a v1.1 / mT5 checkpoint has its own lm_head.
        model.lm_head.weight = torch.nn.Parameter(torch.randn(config.vocab_size, config.d_model))
    with torch.no_grad():  # break the init's symmetries (norm scales of 1) so every weight matters
        for pname, p in model.named_parameters():
            if "layer_norm" in pname:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "relative_attention_bias" in pname:
                p.copy_(torch.randn_like(p))
    return model


def make_inputs(seed=0, vocab=50):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab, size=(B, S))
    dec = rng.integers(2, vocab, size=(B, T))
    enc_mask = np.ones((B, S), np.int64)
    enc_mask[1, 6:] = 0  # right padding
    enc_mask[2, :3] = 0  # left padding (relative positions allow it)
    dec_mask = np.ones((B, T), np.int64)
    dec_mask[0, 4:] = 0
    dec_mask[2, 2:] = 0
    ids = np.where(enc_mask == 1, ids, 0)
    dec = np.where(dec_mask == 1, dec, 0)
    return ids, enc_mask, dec, dec_mask


def torch_outputs(model, ids, enc_mask, dec, dec_mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(enc_mask),
                    decoder_input_ids=torch.tensor(dec), decoder_attention_mask=torch.tensor(dec_mask))
    return out.logits.numpy(), out.encoder_last_hidden_state.numpy()


def state_dict_numpy(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@jax.jit(static_argnums=0)
def _encode_decode(model, params, ids, enc_mask, dec, dec_mask):
    variables = {"params": params}
    enc = model.apply(variables, ids, enc_mask, method=model.encode)
    logits = model.apply(variables, dec, enc, enc_mask, dec_mask, method=model.decode)
    return logits, enc


def jax_outputs(model, params, ids, enc_mask, dec, dec_mask):
    """(logits [B, T, V], encoder states [B, S, D]) through the public encode / decode methods, jitted."""
    logits, enc = _encode_decode(model, params, *(jnp.asarray(x) for x in (ids, enc_mask, dec, dec_mask)))
    return np.asarray(logits), np.asarray(enc)


def assert_parity(jl, je, tl, te, enc_mask, dec_mask, atol=1e-4):
    em, dm = enc_mask.astype(bool), dec_mask.astype(bool)
    assert np.all(np.isfinite(jl)) and np.all(np.isfinite(je))
    np.testing.assert_allclose(je[em], te[em], atol=atol, rtol=1e-4)
    np.testing.assert_allclose(jl[dm], tl[dm], atol=atol, rtol=1e-4)


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity_and_checkpoint_files(name, tmp_path):
    """state_dict mapping, safetensors dir, pytorch_model.bin dir -> same params and transformers' numbers;
    save_hf_checkpoint -> transformers from_pretrained -> same logits."""
    hf_io = pytest.importorskip("diffjax.checkpoints.hf")
    hf = make_hf_model(name)
    sd = state_dict_numpy(hf)
    model = hf_t5.model_from_hf_config(hf.config.to_dict(), jnp.float32)
    params = hf_t5.hf_to_params(sd, model)
    inputs = make_inputs()
    tl, te = torch_outputs(hf, *inputs)
    jl, je = jax_outputs(model, params, *inputs)
    assert_parity(jl, je, tl, te, inputs[1], inputs[3])
    # The mapping is a bijection on the model's params.
    for k, v in hf_t5.params_to_hf(params, model).items():
        np.testing.assert_array_equal(np.asarray(v), sd[k])

    st_dir, bin_dir, out_dir = (str(tmp_path / d) for d in ("st", "bin", "out"))
    hf.save_pretrained(st_dir)  # model.safetensors (tied copies dropped)
    hf.config.save_pretrained(bin_dir)  # transformers 5 only writes safetensors: .bin the classic way
    torch.save(hf.state_dict(), f"{bin_dir}/pytorch_model.bin")
    for d in (st_dir, bin_dir):
        m2, p2 = hf_io.load_hf_checkpoint(d)
        assert m2.config == model.config
        assert_trees_equal(p2, params)

    hf_io.save_hf_checkpoint(model, params, out_dir)
    reopened = getattr(transformers, type(hf).__name__).from_pretrained(out_dir).eval()
    rl, re_ = torch_outputs(reopened, *inputs)
    assert_parity(jl, je, rl, re_, inputs[1], inputs[3])
    m3, p3 = hf_io.load_hf_checkpoint(out_dir)
    assert_trees_equal(p3, params)
    assert m3.config == model.config


def test_relative_position_bucket_matches_torch():
    rel = np.arange(-300, 301)[None, :] - np.zeros((1, 1), np.int64)
    attn_cls = transformers.models.t5.modeling_t5.T5Attention
    for bidirectional in (True, False):
        for nb, md in ((32, 128), (8, 12), (16, 20), (6, 8), (64, 256)):
            ours = t5_lib.relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=nb, max_distance=md)
            ref = attn_cls._relative_position_bucket(torch.tensor(rel), bidirectional=bidirectional,
                                                     num_buckets=nb, max_distance=md).numpy()
            np.testing.assert_array_equal(ours, ref)
            assert ours.min() >= 0 and ours.max() < nb


def _decoder_logits(model, params, ids, enc_mask, dec, dec_mask):
    return jax_outputs(model, params, ids, enc_mask, dec, dec_mask)[0]


def test_bidirectional_decoder_sees_future_causal_does_not():
    hf = make_hf_model("v1_0_relu_tied")
    causal = hf_t5.model_from_hf_config(hf.config.to_dict(), jnp.float32)
    params = hf_t5.hf_to_params(state_dict_numpy(hf), causal)
    bidir = t5_lib.with_decoder_attention(causal, "bidirectional")
    ids, enc_mask, dec, dec_mask = make_inputs()
    dec_mask = np.ones_like(dec_mask)
    dec2 = dec.copy()
    dec2[:, -1] = (dec2[:, -1] + 7) % 50  # change only the last target token
    c1, c2 = (_decoder_logits(causal, params, ids, enc_mask, d, dec_mask) for d in (dec, dec2))
    b1, b2 = (_decoder_logits(bidir, params, ids, enc_mask, d, dec_mask) for d in (dec, dec2))
    np.testing.assert_allclose(c1[:, :-1], c2[:, :-1], atol=1e-6)  # causal: the past ignores the future
    assert np.abs(b1[:, :-1] - b2[:, :-1]).max() > 1e-3  # bidirectional: earlier positions see it
    assert np.abs(b1 - c1).max() > 1e-3
    tl, _ = torch_outputs(hf, ids, enc_mask, dec, dec_mask)  # causal is the transformers decoder
    np.testing.assert_allclose(c1, tl, atol=1e-4, rtol=1e-4)
    # With causal buckets kept, bidirectional attention still differs from causal.
    bidir_cb = t5_lib.with_decoder_attention(causal, "bidirectional", bidirectional_buckets=False)
    d1 = _decoder_logits(bidir_cb, params, ids, enc_mask, dec, dec_mask)
    assert np.abs(d1 - c1).max() > 1e-3 and np.abs(d1 - b1).max() > 1e-3
    # Decoder padding keys are ignored in bidirectional mode too: changing a padded token changes nothing
    # at real positions.
    dm = np.ones_like(dec_mask)
    dm[:, -2:] = 0
    dec3 = dec.copy()
    dec3[:, -1] = (dec3[:, -1] + 3) % 50
    e1, e3 = (_decoder_logits(bidir, params, ids, enc_mask, d, dm) for d in (dec, dec3))
    np.testing.assert_allclose(e1[:, :-2], e3[:, :-2], atol=1e-6)


def test_loader_errors_name_keys(tmp_path):
    hf_io = pytest.importorskip("diffjax.checkpoints.hf")
    from safetensors.numpy import load_file, save_file

    hf = make_hf_model("v1_0_relu_tied")
    hf.save_pretrained(str(tmp_path))
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["decoder.block.1.layer.1.EncDecAttention.kk.weight"] = tensors.pop(
        "decoder.block.1.layer.1.EncDecAttention.k.weight")
    tensors["encoder.final_layer_norm.weight"] = np.ones(33, np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError) as e:
        hf_io.load_hf_checkpoint(str(tmp_path))
    msg = str(e.value)
    for key in ("decoder.block.1.layer.1.EncDecAttention.k.weight", "decoder.block.1.layer.1.EncDecAttention.kk.weight",
                "encoder.final_layer_norm.weight"):
        assert key in msg
    assert "33" in msg


def test_strict_mapping_errors_name_keys_and_shapes():
    hf = make_hf_model("v1_1_gated_untied")
    model = hf_t5.model_from_hf_config(hf.config.to_dict(), jnp.float32)
    sd = state_dict_numpy(hf)
    bad = dict(sd)
    bad["encoder.block.1.layer.0.SelfAttention.qq.weight"] = bad.pop("encoder.block.1.layer.0.SelfAttention.q.weight")
    bad["decoder.block.0.layer.2.DenseReluDense.wo.weight"] = np.zeros((24, 41), np.float32)
    with pytest.raises(ValueError) as e:
        hf_t5.hf_to_params(bad, model)
    msg = str(e.value)
    assert "encoder.block.1.layer.0.SelfAttention.q.weight" in msg  # missing
    assert "encoder.block.1.layer.0.SelfAttention.qq.weight" in msg  # unexpected
    assert "decoder.block.0.layer.2.DenseReluDense.wo.weight" in msg and "(24, 41)" in msg and "(24, 40)" in msg
    # A v1.1 checkpoint (own lm_head) forced onto a tied model is refused, not silently re-tied.
    tied = hf_t5.model_from_hf_config(hf.config.to_dict(), jnp.float32, tie_word_embeddings=True)
    with pytest.raises(ValueError, match="tie_word_embeddings=False"):
        hf_t5.hf_to_params(sd, tied)
    # A relu config given gated weights: the wi_0/wi_1 vs wi difference is reported.
    relu = hf_t5.model_from_hf_config(dict(hf.config.to_dict(), feed_forward_proj="relu"), jnp.float32)
    with pytest.raises(ValueError, match=r"DenseReluDense\.wi\.weight"):
        hf_t5.hf_to_params(sd, relu)
    with pytest.raises(ValueError, match="model_type"):
        hf_t5.model_from_hf_config({"model_type": "bert"})


def test_sharding_rules_shard_on_mesh():
    """SHARDING_RULES through the trainer's rule table (re.search) on a 2x2 mesh: Megatron specs, same logits."""
    sharding = pytest.importorskip("diffjax.train.sharding")
    hf = make_hf_model("v1_1_gated_untied")
    model = hf_t5.model_from_hf_config(hf.config.to_dict(), jnp.float32)
    params = hf_t5.hf_to_params(state_dict_numpy(hf), model)
    mesh = sharding.make_mesh((2, 2))
    shardings = sharding.param_shardings(params, t5_lib.SHARDING_RULES, mesh)
    specs = {sharding.path_str(p): tuple(s.spec) for p, s in jax.tree_util.tree_leaves_with_path(shardings)}
    assert specs["decoder/block_0/cross_attention/query/kernel"] == (None, "model")
    assert specs["encoder/block_1/self_attention/out/kernel"] == ("model", None)
    assert specs["decoder/block_2/mlp/wi_1/kernel"] == (None, "model")
    assert specs["encoder/block_1/mlp/wo/kernel"] == ("model", None)
    assert specs["shared/embedding"] == ("model", None)
    assert specs["lm_head/kernel"] == (None, "model")
    assert specs["encoder/final_norm/scale"] == () and specs["decoder/relative_attention_bias/embedding"] == ()
    for pattern, _ in t5_lib.SHARDING_RULES:  # the patterns also work under re.fullmatch
        assert any(re.fullmatch(pattern, name) for name in specs), pattern
    sharded = jax.device_put(params, shardings)
    inputs = make_inputs()
    np.testing.assert_allclose(jax_outputs(model, sharded, *inputs)[0], jax_outputs(model, params, *inputs)[0],
                               atol=1e-5)


def test_config_round_trip_and_overrides():
    hf = make_hf_model("mt5_untied")
    model = hf_t5.model_from_hf_config(hf.config.to_dict(), jnp.bfloat16, decoder_attention="bidirectional")
    cfg = model.config
    assert cfg.model_type == "mt5" and not cfg.tie_word_embeddings and not cfg.scale_decoder_outputs
    assert cfg.dtype == jnp.bfloat16 and cfg.decoder_attention == "bidirectional" and cfg.is_gated
    again = hf_t5.model_from_hf_config(json.loads(json.dumps(hf_t5.hf_config_from_model(model))), jnp.bfloat16)
    assert again.config == cfg
    with pytest.raises(TypeError, match="decoder_atention"):
        hf_t5.model_from_hf_config(hf.config.to_dict(), decoder_atention="causal")
    with pytest.raises(ValueError, match="decoder_attention"):
        dataclasses.replace(cfg, decoder_attention="prefix")


def test_bf16_close_to_fp32_and_dropout_needs_rng():
    hf = make_hf_model("v1_0_relu_tied")
    m32 = hf_t5.model_from_hf_config(hf.config.to_dict(), jnp.float32)
    m16 = hf_t5.model_from_hf_config(hf.config.to_dict(), jnp.bfloat16)
    sd = state_dict_numpy(hf)
    p32, p16 = hf_t5.hf_to_params(sd, m32), hf_t5.hf_to_params(sd, m16)
    assert jax.tree_util.tree_leaves(p16)[0].dtype == jnp.bfloat16
    inputs = make_inputs()
    l32, _ = jax_outputs(m32, p32, *inputs)
    l16, _ = jax_outputs(m16, p16, *inputs)
    assert l16.dtype == np.float32
    dm = inputs[3].astype(bool)
    assert np.abs(l16[dm] - l32[dm]).max() < 0.05 * np.abs(l32[dm]).max()
    # Training mode: dropout active (config dropout 0.1) and driven by the "dropout" rng.
    mtrain = hf_t5.model_from_hf_config(hf.config.to_dict(), jnp.float32, dropout_rate=0.1)
    args = tuple(jnp.asarray(x) for x in (inputs[0], inputs[2], inputs[1], inputs[3]))
    train_fn = jax.jit(lambda key: mtrain.apply({"params": p32}, *args, deterministic=False, rngs={"dropout": key}))
    a, b = train_fn(jax.random.key(0)), train_fn(jax.random.key(1))
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


def test_shift_right_matches_transformers():
    hf = make_hf_model("v1_0_relu_tied")
    hf.config.decoder_start_token_id = 0  # transformers 5 keeps it in generation_config only
    labels = np.array([[5, 6, 7, -100], [8, -100, -100, -100]])
    ref = hf._shift_right(torch.tensor(labels)).numpy()
    np.testing.assert_array_equal(np.asarray(t5_lib.shift_right(labels, 0, 0)), ref)
    np.testing.assert_array_equal(ref, [[0, 5, 6, 7], [0, 8, 0, 0]])


@pytest.mark.slow
def test_remat_same_params_outputs_and_grads():
    hf = make_hf_model("umt5_per_layer_bias")
    model = hf_t5.model_from_hf_config(hf.config.to_dict(), jnp.float32)
    remat = model.clone(config=dataclasses.replace(model.config, remat=True))
    params = hf_t5.hf_to_params(state_dict_numpy(hf), model)
    fresh = hf_t5.init_params(remat, jax.random.key(0))
    assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(params)
    ids, enc_mask, dec, dec_mask = (jnp.asarray(x) for x in make_inputs())

    def loss(m, p):
        logits = m.apply({"params": p}, ids, dec, enc_mask, dec_mask)
        return jnp.sum(jax.nn.log_softmax(logits)[..., 3] * dec_mask)

    g1 = jax.jit(jax.grad(lambda p: loss(model, p)))(params)
    g2 = jax.jit(jax.grad(lambda p: loss(remat, p)))(params)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
    # Every parameter gets gradient (nothing unused / detached), incl. each layer's own bias table.
    assert all(float(jnp.abs(a).max()) > 0 for a in jax.tree_util.tree_leaves(g1))
