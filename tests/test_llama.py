"""Llama / Qwen2 / Mistral parity with transformers' PyTorch models (tiny random configs), attention masks,
KV-cache decoding, HF checkpoint load / save round trip."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.checkpoints import hf as hf_lib
from diffjax.checkpoints import hf_llama
from diffjax.models import llama as llama_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V, B, L = 97, 3, 9

# name -> (config class, model class, kwargs, weight format): GQA ratios 1/2/4, tied / untied, q/k/v bias
# (Qwen2), Llama attention_bias (q/k/v/o), llama3 rope scaling, explicit head_dim, Mistral sliding window.
CONFIGS = {
    "llama_mha_untied": ("LlamaConfig", "LlamaForCausalLM",
                         dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=4, tie_word_embeddings=False), "safetensors"),
    "llama_gqa2_tied_bias_llama3": ("LlamaConfig", "LlamaForCausalLM",
                                    dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                         attention_bias=True, mlp_bias=True,
                                         rope_parameters=dict(rope_type="llama3", rope_theta=500.0, factor=4.0,
                                                              low_freq_factor=1.0, high_freq_factor=2.0,
                                                              original_max_position_embeddings=16)), "bin"),
    "qwen2_gqa4_untied": ("Qwen2Config", "Qwen2ForCausalLM",
                          dict(hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                               num_key_value_heads=1, tie_word_embeddings=False), "bin"),
    "qwen2_gqa2_tied": ("Qwen2Config", "Qwen2ForCausalLM",
                        dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                             num_key_value_heads=1, tie_word_embeddings=True), "safetensors"),
    "mistral_window3_headdim": ("MistralConfig", "MistralForCausalLM",
                                dict(hidden_size=24, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, head_dim=10, sliding_window=3,
                                     tie_word_embeddings=False), "safetensors"),
}


def make_hf_model(name, seed=0):
    cfg_name, model_name, kw, _ = CONFIGS[name]
    config = getattr(transformers, cfg_name)(vocab_size=V, rms_norm_eps=1e-5, attn_implementation="eager", **kw)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():  # break the init's symmetries (norm scales of 1, zero biases) so every weight matters
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model


_DIRS = {}


def saved_dir(name, tmp_path_factory):
    """The HF model saved with save_pretrained (safetensors) or as pytorch_model.bin (torch.save)."""
    if name not in _DIRS:
        model = make_hf_model(name)
        d = str(tmp_path_factory.mktemp(name))
        model.save_pretrained(d)
        if CONFIGS[name][3] == "bin":
            os.remove(os.path.join(d, "model.safetensors"))
            torch.save(model.state_dict(), os.path.join(d, "pytorch_model.bin"))
        _DIRS[name] = (model, d)
    return _DIRS[name]


def batch(padding, seed=1):
    rs = np.random.RandomState(seed)
    ids = rs.randint(0, V, (B, L))
    mask = np.ones((B, L), np.int64)
    lengths = [L, L - 3, 4]
    for b, n in enumerate(lengths):
        if padding == "right":
            mask[b, n:] = 0
        else:
            mask[b, : L - n] = 0
    return ids, mask


def hf_logits(model, ids, mask, positions, mask4d=None):
    with torch.no_grad():
        am = torch.tensor(mask) if mask4d is None else torch.tensor(mask4d)
        return model(torch.tensor(ids), attention_mask=am, position_ids=torch.tensor(np.asarray(positions))).logits.numpy()


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("padding", ["right", "left"])
def test_causal_logits_match_transformers(name, padding, tmp_path_factory):
    hf_model, d = saved_dir(name, tmp_path_factory)
    model, params, report = hf_lib.load_hf_checkpoint(d, return_report=True)
    assert report.weights_format == ("pytorch_model.bin" if CONFIGS[name][3] == "bin" else "safetensors")
    ids, mask = batch(padding)
    pos = np.asarray(llama_lib.positions_from_mask(mask))
    ref = hf_logits(hf_model, ids, mask, pos)
    out = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                                 positions=jnp.asarray(pos)))
    valid = mask.astype(bool)
    np.testing.assert_allclose(out[valid], ref[valid], atol=1e-4, rtol=1e-4)
    # Padding does not change a real token's logits: the first example is unpadded in both layouts.
    alone = model.apply({"params": params}, jnp.asarray(ids[1:2][:, valid[1]]))
    np.testing.assert_allclose(np.asarray(alone)[0], out[1][valid[1]], atol=1e-4, rtol=1e-4)


def _float_mask(vis):
    return np.where(vis, 0.0, np.finfo(np.float32).min).astype(np.float32)


@pytest.mark.parametrize("name", ["llama_mha_untied", "qwen2_gqa4_untied", "mistral_window3_headdim"])
@pytest.mark.parametrize("mode", ["prefix", "bidirectional"])
def test_prefix_and_bidirectional_match_transformers_with_4d_mask(name, mode, tmp_path_factory):
    hf_model, d = saved_dir(name, tmp_path_factory)
    model, params = hf_lib.load_hf_checkpoint(d)
    ids, mask = batch("right", seed=2)
    prefix = np.array([5, 2, 3], np.int32)
    # Brute-force visibility (independent of make_attention_mask), incl. the sliding window if any.
    window = model.config.sliding_window
    vis = np.zeros((B, 1, L, L), bool)
    for b in range(B):
        for i in range(L):
            for j in range(L):
                ok = j <= i or (mode == "prefix" and j < prefix[b]) or mode == "bidirectional"
                if window is not None:
                    ok = ok and abs(i - j) < window
                vis[b, 0, i, j] = ok and mask[b, j]
    pos = np.broadcast_to(np.arange(L), (B, L))
    ref = hf_logits(hf_model, ids, mask, pos, mask4d=_float_mask(vis))
    out = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                                 attention=mode, prefix_length=jnp.asarray(prefix)))
    valid = mask.astype(bool)
    np.testing.assert_allclose(out[valid], ref[valid], atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(
        np.asarray(llama_lib.make_attention_mask(mode, np.arange(L), np.arange(L), mask.astype(bool), prefix, window)),
        vis)
    # The pattern matters: the prefix / bidirectional logits differ from the causal ones.
    causal = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    assert np.abs(causal[valid] - out[valid]).max() > 1e-3


def test_prefix_lm_semantics():
    """Prefix LM: target logits do not depend on later target tokens; prefix logits do not depend on any target
    token; every prefix position sees the whole prefix (changing the last prefix token changes position 0)."""
    cfg = llama_lib.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=1, attention="prefix")
    model = llama_lib.Llama(cfg)
    params = hf_llama.init_params(model, jax.random.key(0))
    ids = jnp.asarray(np.random.RandomState(0).randint(0, V, (1, 8)))
    f = lambda x: model.apply({"params": params}, x, prefix_length=jnp.array([4]))
    base = f(ids)
    changed_target = f(ids.at[0, 6].set((ids[0, 6] + 1) % V))
    np.testing.assert_allclose(base[0, :6], changed_target[0, :6], atol=1e-6)
    assert np.abs(base[0, 6:] - changed_target[0, 6:]).max() > 1e-4
    changed_prefix = f(ids.at[0, 3].set((ids[0, 3] + 1) % V))
    assert np.abs(base[0, 0] - changed_prefix[0, 0]).max() > 1e-4  # bidirectional inside the prefix
    causal = model.apply({"params": params}, ids, attention="causal")
    assert np.abs(base[0, 0] - causal[0, 0]).max() > 1e-4
    # An explicit visibility mask reproduces the named pattern.
    vis = np.tril(np.ones((8, 8), bool))
    vis[:, :4] = True
    explicit = model.apply({"params": params}, ids, mask=jnp.asarray(vis)[None, None])
    np.testing.assert_allclose(explicit, base, atol=1e-6)


@pytest.mark.parametrize("name", ["llama_gqa2_tied_bias_llama3", "qwen2_gqa4_untied", "mistral_window3_headdim"])
@pytest.mark.parametrize("mode", ["causal", "prefix"])
def test_kv_cache_decode_equals_full_forward(name, mode, tmp_path_factory):
    _, d = saved_dir(name, tmp_path_factory)
    model, params = hf_lib.load_hf_checkpoint(d)
    ids, mask = batch("left", seed=3)
    P = 5  # prefill P slots (the prompt, left-padded), then one token per step
    pos = llama_lib.positions_from_mask(mask)
    kw = dict(attention=mode, prefix_length=jnp.full((B,), P, jnp.int32))
    full = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask), positions=pos, **kw)
    cache = llama_lib.init_cache(model.config, B, L)
    apply = jax.jit(lambda c, x, m, p, i: model.apply({"params": params}, x, attention_mask=m, positions=p,
                                                      cache=c, cache_index=i, **kw))
    logits, cache = apply(cache, ids[:, :P], mask[:, :P], pos[:, :P], 0)
    steps = [logits]
    for i in range(P, L):
        logits, cache = apply(cache, ids[:, i:i + 1], mask[:, i:i + 1], pos[:, i:i + 1], i)
        steps.append(logits)
    dec = np.concatenate([np.asarray(s) for s in steps], axis=1)
    valid = mask.astype(bool)
    np.testing.assert_allclose(dec[valid], np.asarray(full)[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["llama_mha_untied", "qwen2_gqa2_tied"])
def test_greedy_generate_matches_transformers(name, tmp_path_factory):
    hf_model, d = saved_dir(name, tmp_path_factory)
    model, params = hf_lib.load_hf_checkpoint(d)
    ids, mask = batch("left", seed=4)
    N = 6
    with torch.no_grad():
        ref = hf_model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=N,
                                min_new_tokens=N, do_sample=False, pad_token_id=0, eos_token_id=None).numpy()[:, L:]
    out = llama_lib.generate(model, params, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=N)
    np.testing.assert_array_equal(np.asarray(out), ref)
    # Right padding gives the same continuation (positions and validity follow the mask, not the layout).
    right = np.zeros_like(ids)
    right_mask = np.zeros_like(mask)
    for b in range(B):
        n = mask[b].sum()
        right[b, :n], right_mask[b, :n] = ids[b][mask[b] == 1], 1
    out_r = llama_lib.generate(model, params, jnp.asarray(right), jnp.asarray(right_mask), max_new_tokens=N)
    np.testing.assert_array_equal(np.asarray(out_r), ref)
    # eos stops an example: everything after its first eos is pad.
    eos = int(ref[0, 1])
    out_e = np.asarray(llama_lib.generate(model, params, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=N,
                                          eos_token_id=eos, pad_token_id=-1))
    first = int(np.argmax(ref[0] == eos))
    np.testing.assert_array_equal(out_e[0, : first + 1], ref[0, : first + 1])
    assert (out_e[0, first + 1:] == -1).all()


@pytest.mark.parametrize("name", ["llama_gqa2_tied_bias_llama3", "qwen2_gqa4_untied", "mistral_window3_headdim"])
def test_save_round_trip_reopens_in_transformers(name, tmp_path_factory, tmp_path):
    hf_model, d = saved_dir(name, tmp_path_factory)
    model, params = hf_lib.load_hf_checkpoint(d)
    hf_lib.save_hf_checkpoint(model, params, str(tmp_path))
    reopened = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    assert type(reopened).__name__ == CONFIGS[name][1]
    ids, mask = batch("right", seed=5)
    pos = np.broadcast_to(np.arange(L), (B, L))
    valid = mask.astype(bool)
    np.testing.assert_allclose(hf_logits(reopened, ids, mask, pos)[valid], hf_logits(hf_model, ids, mask, pos)[valid],
                               atol=1e-5, rtol=1e-5)
    model2, params2 = hf_lib.load_hf_checkpoint(str(tmp_path))
    assert model2.config == model.config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)


def test_bf16_load_close_to_fp32(tmp_path_factory):
    _, d = saved_dir("llama_mha_untied", tmp_path_factory)
    model, params = hf_lib.load_hf_checkpoint(d)
    model16, params16 = hf_lib.load_hf_checkpoint(d, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(params16))
    ids, mask = batch("right")
    a = model.apply({"params": params}, jnp.asarray(ids))
    b = model16.apply({"params": params16}, jnp.asarray(ids))
    assert b.dtype == jnp.float32
    assert np.abs(np.asarray(a) - np.asarray(b)).max() < 0.1 * np.abs(np.asarray(a)).max()


def test_strict_load_errors(tmp_path_factory, tmp_path):
    hf_model, _ = saved_dir("qwen2_gqa4_untied", tmp_path_factory)
    sd = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    sd["model.layers.0.mlp.up_proj.weightX"] = sd.pop("model.layers.0.mlp.up_proj.weight")
    sd["model.layers.1.self_attn.k_proj.weight"] = sd["model.layers.1.self_attn.k_proj.weight"][:, :-1]
    hf_model.config.save_pretrained(str(tmp_path))
    hf_lib.write_safetensors(sd, os.path.join(str(tmp_path), "model.safetensors"))
    with pytest.raises(hf_lib.CheckpointMismatchError) as e:
        hf_lib.load_hf_checkpoint(str(tmp_path))
    msg = str(e.value)
    for expected in ["model.layers.0.mlp.up_proj.weight [40, 32]", "model.layers.0.mlp.up_proj.weightX",
                     "model.layers.1.self_attn.k_proj.weight: expected [8, 32], found [8, 31]"]:
        assert expected in msg, msg
    # A tied model handed a different lm_head is refused with the fix in the message.
    cfg = dict(hf_model.config.to_dict(), tie_word_embeddings=True)
    tied = hf_llama.model_from_hf_config(cfg)
    sd = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    with pytest.raises(ValueError, match="tie_word_embeddings=False"):
        hf_llama.canonicalize_keys(sd, tied)
    with pytest.raises(TypeError, match="valid"):
        hf_llama.model_from_hf_config(cfg, no_such_field=1)


def test_bare_llamamodel_keys_are_accepted(tmp_path_factory):
    hf_model, _ = saved_dir("qwen2_gqa2_tied", tmp_path_factory)
    sd = {k: v.numpy() for k, v in hf_model.model.state_dict().items()}  # no "model." prefix, no lm_head
    model = hf_llama.model_from_hf_config(hf_model.config.to_dict())
    params = hf_llama.hf_to_params(hf_llama.canonicalize_keys(sd, model), model)
    ids, mask = batch("right")
    pos = np.broadcast_to(np.arange(L), (B, L))
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=mask))[valid],
                               hf_logits(hf_model, ids, mask, pos)[valid], atol=1e-4, rtol=1e-4)


def test_sharding_rules_cover_params_and_ranks():
    cfg = llama_lib.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, qkv_bias=True)
    params = jax.eval_shape(lambda: llama_lib.Llama(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
    flat = jax.tree_util.tree_flatten_with_path(params["params"])[0]
    for path, leaf in flat:
        name = "/".join(p.key for p in path)
        spec = next((s for r, s in llama_lib.SHARDING_RULES if re.search(r, name)), None)
        if "proj" in name or "embed" in name or "lm_head" in name:
            assert spec is not None, name
        if spec is not None:
            assert len(spec) == leaf.ndim, (name, spec, leaf.shape)


def test_remat_and_grad_agree():
    kw = dict(vocab_size=V, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
              attention="bidirectional")
    m1, m2 = llama_lib.Llama(llama_lib.LlamaConfig(**kw)), llama_lib.Llama(llama_lib.LlamaConfig(remat=True, **kw))
    params = m1.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    ids = jnp.asarray(np.random.RandomState(0).randint(0, V, (2, 6)))
    loss = lambda m: jax.jit(jax.grad(lambda p: jnp.mean(jax.nn.log_softmax(m.apply({"params": p}, ids))[..., 0])))
    g1, g2 = loss(m1)(params), loss(m2)(params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, g2)
    assert float(jnp.abs(g1["layers_0"]["self_attn"]["q_proj"]["kernel"]).max()) > 0


def test_prefix_lm_generate_equals_brute_force_loop(tmp_path_factory):
    """Cached prefix-LM decoding (bidirectional prompt, causal continuation) == re-running the full forward with
    attention="prefix", prefix_length=P on the growing sequence at every step."""
    _, d = saved_dir("qwen2_gqa4_untied", tmp_path_factory)
    model, params = hf_lib.load_hf_checkpoint(d)
    ids = jnp.asarray(np.random.RandomState(6).randint(0, V, (2, 5)))
    N, P = 4, ids.shape[1]
    out = llama_lib.generate(model, params, ids, max_new_tokens=N, prefix_lm=True)
    seq = ids
    for _ in range(N):
        logits = model.apply({"params": params}, seq, attention="prefix", prefix_length=jnp.full((2,), P))
        seq = jnp.concatenate([seq, jnp.argmax(logits[:, -1], -1)[:, None].astype(seq.dtype)], axis=1)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(seq[:, P:]))


def test_sharded_forward_on_2x2_mesh_matches_single_device():
    sharding = pytest.importorskip("diffjax.train.sharding")
    if jax.device_count() < 4:
        pytest.skip("needs 4 (fake) devices")
    cfg = llama_lib.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, qkv_bias=True, attention="bidirectional")
    model = llama_lib.Llama(cfg)
    params = hf_llama.init_params(model, jax.random.key(1))
    mesh = sharding.make_mesh((2, 2))
    shardings = sharding.param_shardings(params, llama_lib.SHARDING_RULES, mesh)
    assert shardings["layers_0"]["self_attn"]["k_proj"]["kernel"].spec == jax.sharding.PartitionSpec(None, "model")
    sharded = jax.device_put(params, shardings)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 64, (4, 6)))
    ids_s = jax.device_put(ids, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    f = jax.jit(lambda p, x: model.apply({"params": p}, x))
    np.testing.assert_allclose(np.asarray(f(sharded, ids_s)), np.asarray(f(params, ids)), atol=1e-5)


def test_sampling_temperature():
    cfg = llama_lib.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                num_attention_heads=2, initializer_range=0.5)
    model = llama_lib.Llama(cfg)
    params = hf_llama.init_params(model, jax.random.key(2))
    ids = jnp.asarray(np.random.RandomState(7).randint(0, V, (2, 3)))
    greedy = llama_lib.generate(model, params, ids, max_new_tokens=5)
    cold = llama_lib.generate(model, params, ids, max_new_tokens=5, temperature=1e-6, rng=jax.random.key(1))
    np.testing.assert_array_equal(cold, greedy)
    hot = [np.asarray(llama_lib.generate(model, params, ids, max_new_tokens=5, temperature=5.0, rng=jax.random.key(s)))
           for s in range(3)]
    assert not (np.array_equal(hot[0], hot[1]) and np.array_equal(hot[1], hot[2]))


def test_generate_top_k_top_p_use_the_shared_picker():
    """top_k=1 (or a tiny nucleus) makes hot sampling greedy; generate's picker is diffusion.tokens.choose_tokens."""
    cfg = llama_lib.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                num_attention_heads=2, initializer_range=0.5)
    model = llama_lib.Llama(cfg)
    params = hf_llama.init_params(model, jax.random.key(2))
    ids = jnp.asarray(np.random.RandomState(7).randint(0, V, (2, 3)))
    greedy = np.asarray(llama_lib.generate(model, params, ids, max_new_tokens=5))
    for kw in (dict(top_k=1), dict(top_p=1e-6)):
        hot = llama_lib.generate(model, params, ids, max_new_tokens=5, temperature=5.0, rng=jax.random.key(3), **kw)
        np.testing.assert_array_equal(hot, greedy)
    assert llama_lib.choose_tokens is __import__("diffjax.diffusion.tokens", fromlist=["x"]).choose_tokens
