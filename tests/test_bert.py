"""diffjax.models.bert: parity with transformers' PyTorch BERT / RoBERTa / XLM-R, and properties.

Tiny random models are built here with transformers, saved with save_pretrained and loaded with
diffjax.checkpoints.hf.load_hf_checkpoint (the mapping itself is tested in test_hf_checkpoint.py).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffjax.checkpoints.hf import load_hf_checkpoint
from diffjax.models import bert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# (family, hidden, layers, heads, intermediate, type_vocab, use_token_types, hidden_act, vocab)
CONFIGS = [
    ("bert", 16, 2, 2, 32, 2, True, "gelu", 64),
    ("bert", 24, 1, 3, 40, 1, False, "gelu_new", 48),
    ("roberta", 16, 2, 4, 24, 1, False, "gelu", 64),
    ("xlm-roberta", 32, 2, 8, 48, 2, True, "gelu", 56),
]
_CLASSES = {
    "bert": ("BertConfig", "BertForMaskedLM", "BertForSequenceClassification"),
    "roberta": ("RobertaConfig", "RobertaForMaskedLM", "RobertaForSequenceClassification"),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaForMaskedLM", "XLMRobertaForSequenceClassification"),
}


def make_hf(family, hidden, layers, heads, inter, type_vocab, act, vocab, head="mlm", seed=0, **kw):
    cfg_cls, mlm_cls, cls_cls = (getattr(transformers, n) for n in _CLASSES[family])
    cfg = cfg_cls(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=inter, max_position_embeddings=40, type_vocab_size=type_vocab, hidden_act=act, **kw,
    )
    torch.manual_seed(seed)
    model = (mlm_cls if head == "mlm" else cls_cls)(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases (HF initialises them to 1 / 0)
        for n, p in model.named_parameters():
            if "LayerNorm" in n or "layer_norm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def batch(vocab, pad, b=3, l=9, type_vocab=2, seed=0):
    """Ids with right padding of different lengths (row 0 unpadded, last row a single token)."""
    rs = np.random.RandomState(seed)
    ids = rs.randint(3, vocab, (b, l)).astype(np.int32)
    lens = np.linspace(l, 1, b).astype(int)
    mask = (np.arange(l)[None] < lens[:, None]).astype(np.int32)
    ids = np.where(mask == 1, ids, pad).astype(np.int32)
    tt = (rs.randint(0, type_vocab, (b, l)) * mask).astype(np.int32)
    return ids, mask, tt


def torch_out(model, ids, mask, tt=None, **kw):
    with torch.no_grad():
        args = dict(attention_mask=torch.tensor(mask), output_hidden_states=True, **kw)
        if ids is not None:
            args["input_ids"] = torch.tensor(ids, dtype=torch.long)
        if tt is not None:
            args["token_type_ids"] = torch.tensor(tt, dtype=torch.long)
        return model(**args)


def assert_close_valid(a, b, mask, atol=1e-4):
    """Compares [B, L, ...] arrays at non-padding positions only."""
    a, b, m = np.asarray(a), np.asarray(b), np.asarray(mask).astype(bool)
    np.testing.assert_allclose(a[m], b[m], atol=atol, rtol=1e-4)


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"{c[0]}-d{c[1]}-L{c[2]}-h{c[3]}-tt{int(c[6])}")
def tiny(request, tmp_path_factory):
    fam, hidden, layers, heads, inter, tv, use_tt, act, vocab = request.param
    hf = make_hf(fam, hidden, layers, heads, inter, tv, act, vocab)
    d = tmp_path_factory.mktemp(fam)
    hf.save_pretrained(d)
    model, params = load_hf_checkpoint(str(d))
    return dict(hf=hf, model=model, params=params, use_tt=use_tt, vocab=vocab, tv=tv, fam=fam)


def test_mlm_parity_with_padding(tiny):
    """Every layer's hidden states and the MLM logits match transformers at real tokens (fp32, 1e-4)."""
    hf, model, params = tiny["hf"], tiny["model"], tiny["params"]
    ids, mask, tt = batch(tiny["vocab"], hf.config.pad_token_id, type_vocab=tiny["tv"])
    tt = tt if tiny["use_tt"] else None
    ref = torch_out(hf, ids, mask, tt)
    out = jax.jit(lambda p, i, m, t: model.apply({"params": p}, i, m, t, output_hidden_states=True))(params, ids, mask, tt)
    assert len(out["hidden_states"]) == len(ref.hidden_states) == model.config.num_layers + 1
    for ours, theirs in zip(out["hidden_states"], ref.hidden_states):
        assert_close_valid(ours, theirs.numpy(), mask)
    assert out["logits"].shape == (*ids.shape, tiny["vocab"])
    assert_close_valid(out["logits"], ref.logits.numpy(), mask)


def test_inputs_embeds_path_matches_transformers(tiny):
    """inputs_embeds replaces the word embeddings (RoBERTa: sequential positions, as HF)."""
    hf, model, params = tiny["hf"], tiny["model"], tiny["params"]
    ids, mask, _ = batch(tiny["vocab"], hf.config.pad_token_id, seed=1)
    emb = np.asarray(model.apply({"params": params}, ids, method=model.embed_tokens))
    np.testing.assert_allclose(emb, hf.get_input_embeddings().weight.detach().numpy()[ids], atol=0)
    emb = emb + np.random.RandomState(2).normal(0, 0.5, emb.shape).astype(np.float32)  # noised x_t
    ref = torch_out(hf, None, mask, inputs_embeds=torch.tensor(emb))
    out = model.apply({"params": params}, None, mask, inputs_embeds=emb)
    assert_close_valid(out["last_hidden_state"], ref.hidden_states[-1].numpy(), mask)
    assert_close_valid(out["logits"], ref.logits.numpy(), mask)


def test_cond_is_added_before_embedding_layernorm(tiny):
    """cond [B, D] (e.g. a timestep embedding) == adding it to every token's input embedding."""
    model, params = tiny["model"], tiny["params"]
    ids, mask, _ = batch(tiny["vocab"], model.config.pad_token_id)
    emb = model.apply({"params": params}, ids, method=model.embed_tokens)
    cond = jnp.asarray(np.random.RandomState(3).normal(size=(ids.shape[0], model.config.hidden_size)), jnp.float32)
    a = model.apply({"params": params}, None, mask, inputs_embeds=emb, cond=cond)["last_hidden_state"]
    b = model.apply({"params": params}, None, mask, inputs_embeds=emb + cond[:, None])["last_hidden_state"]
    c = model.apply({"params": params}, None, mask, inputs_embeds=emb)["last_hidden_state"]
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(np.asarray(a - c)).max() > 1e-2


def test_padding_content_does_not_leak(tiny):
    model, params = tiny["model"], tiny["params"]
    ids, mask, _ = batch(tiny["vocab"], model.config.pad_token_id)
    other = np.where(mask == 1, ids, 5)
    a = model.apply({"params": params}, ids, mask)["logits"]
    b = model.apply({"params": params}, other, mask)["logits"]
    assert_close_valid(a, b, mask, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_sequence_classification_parity(family, tmp_path):
    hf = make_hf(family, 16, 2, 2, 32, 2, "gelu", 40, head="cls", num_labels=3)
    hf.save_pretrained(tmp_path)
    model, params = load_hf_checkpoint(str(tmp_path))
    assert model.config.num_labels == 3 and model.config.use_pooler == (family == "bert")
    ids, mask, tt = batch(40, hf.config.pad_token_id)
    ref = torch_out(hf, ids, mask, tt)
    out = model.apply({"params": params}, ids, mask, tt)
    np.testing.assert_allclose(out["cls_logits"], ref.logits.numpy(), atol=1e-4, rtol=1e-4)


def test_length_head_and_mean_pool():
    cfg = bert.BertConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=16,
                          max_position_embeddings=16, length_max=10)
    model = bert.BertEncoder(cfg)
    ids, mask, _ = batch(32, 0, b=4, l=8)
    params = jax.jit(model.init)(jax.random.key(0), ids, mask)["params"]
    apply = jax.jit(lambda p, i, m, lm: model.apply({"params": p}, i, m, length_mask=lm))
    out = apply(params, ids, mask, mask)
    assert out["length_logits"].shape == (4, 11)
    h = np.asarray(out["last_hidden_state"])
    pooled = np.stack([h[i, mask[i] == 1].mean(0) for i in range(4)])
    w, b = params["length_head"]["kernel"], params["length_head"]["bias"]
    np.testing.assert_allclose(out["length_logits"], pooled @ w + b, atol=1e-5)
    # a separate length_mask (e.g. source positions only) is honoured
    src = mask.copy()
    src[:, 1:] = 0
    out2 = apply(params, ids, mask, src)
    np.testing.assert_allclose(out2["length_logits"], h[:, 0] @ w + b, atol=1e-5)


def test_dropout_needs_rng_and_is_off_when_deterministic():
    cfg = bert.BertConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=16,
                          max_position_embeddings=16, hidden_dropout=0.3, attention_dropout=0.3)
    model = bert.BertEncoder(cfg)
    ids, mask, _ = batch(32, 0, b=2, l=6)
    params = jax.jit(model.init)(jax.random.key(0), ids, mask)["params"]
    apply = jax.jit(lambda p, det, key: model.apply({"params": p}, ids, mask, deterministic=det, rngs={"dropout": key})["logits"],
                    static_argnums=1)
    a = apply(params, True, jax.random.key(1))
    b = apply(params, True, jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    c = apply(params, False, jax.random.key(1))
    np.testing.assert_array_equal(c, apply(params, False, jax.random.key(1)))
    assert np.abs(np.asarray(a - c)).max() > 1e-3


def test_errors_are_actionable():
    with pytest.raises(ValueError, match="not divisible"):
        bert.BertConfig(hidden_size=10, num_heads=3)
    with pytest.raises(ValueError, match="hidden_act"):
        bert.BertConfig(hidden_act="mish")
    cfg = bert.BertConfig(vocab_size=8, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=8,
                          max_position_embeddings=4)
    model = bert.BertEncoder(cfg)
    with pytest.raises(ValueError, match="exceeds"):
        model.init(jax.random.key(0), jnp.zeros((1, 5), jnp.int32))
    with pytest.raises(ValueError, match="exactly one"):
        model.init(jax.random.key(0))


def _spec_for(path, rules):
    for pat, spec in rules:
        if re.fullmatch(pat, path):
            return P(*spec)
    return P()


def test_sharding_rules_megatron_layout_and_sharded_forward():
    """Rules hit q/k/v/intermediate (column) and output (row) kernels of every layer; a forward pass
    on a 2x2 (data, model) mesh with params placed by the rules equals the unsharded one."""
    cfg = bert.BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=4, intermediate_size=32,
                          max_position_embeddings=16, family="roberta", position_offset=2, pad_token_id=1)
    model = bert.BertEncoder(cfg)
    ids, mask, _ = batch(50, 1, b=4, l=8)
    params = model.init(jax.random.key(0), ids, mask)["params"]
    flat = {"/".join(k.key for k in path): v for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    specs = {k: _spec_for(k, bert.SHARDING_RULES) for k in flat}
    # same result with re.search semantics and with a leading "params/"
    for k, s in specs.items():
        first = next((P(*sp) for pat, sp in bert.SHARDING_RULES if re.search(pat, "params/" + k)), P())
        assert first == s, k
    for i in range(2):
        lp = f"encoder/layer_{i}/"
        for n in ("query", "key", "value"):
            assert specs[lp + f"attention/{n}/kernel"] == P(None, "model")
        assert specs[lp + "intermediate/kernel"] == P(None, "model")
        assert specs[lp + "attention/output/kernel"] == P("model", None)
        assert specs[lp + "output/kernel"] == P("model", None)
        assert specs[lp + "output_ln/scale"] == P()
    mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("data", "model"))
    sharding = pytest.importorskip("diffjax.train.sharding")  # the trainer's own rule matching
    shardings = sharding.param_shardings(params, bert.SHARDING_RULES, mesh)
    for path, s in jax.tree_util.tree_flatten_with_path(shardings)[0]:
        assert s.spec == specs["/".join(k.key for k in path)]
    sharded = jax.device_put(params, shardings)
    fwd = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m)["logits"])
    ids_s = jax.device_put(ids, NamedSharding(mesh, P("data", None)))
    np.testing.assert_allclose(fwd(sharded, ids_s, mask), fwd(params, ids, mask), atol=1e-5)


def test_bf16_forward_close_to_fp32(tiny, tmp_path):
    if tiny["fam"] != "bert" or tiny["model"].config.hidden_size != 16:
        pytest.skip("one config is enough")
    tiny["hf"].save_pretrained(tmp_path)
    model, params = load_hf_checkpoint(str(tmp_path), dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    ids, mask, tt = batch(tiny["vocab"], 0)
    out = model.apply({"params": params}, ids, mask, tt)
    ref = tiny["model"].apply({"params": tiny["params"]}, ids, mask, tt)
    assert out["last_hidden_state"].dtype == jnp.bfloat16 and out["logits"].dtype == jnp.float32
    err = np.abs(np.asarray(out["logits"]) - np.asarray(ref["logits"])).max()
    assert err < 0.1 * np.abs(np.asarray(ref["logits"])).max()


def test_mlm_loss_gradient_finite(tiny):
    if tiny["fam"] != "xlm-roberta":
        pytest.skip("one config is enough")
    model, params = tiny["model"], tiny["params"]
    ids, mask, _ = batch(tiny["vocab"], model.config.pad_token_id)

    def loss(p):
        logits = model.apply({"params": p}, ids, mask)["logits"]
        ll = jnp.take_along_axis(jax.nn.log_softmax(logits), ids[..., None], -1)[..., 0]
        return -(ll * mask).sum() / mask.sum()

    g = jax.grad(loss)(params)
    leaves = jax.tree_util.tree_leaves(g)
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
    assert np.abs(np.asarray(g["embeddings"]["word_embeddings"]["embedding"])).sum() > 0
