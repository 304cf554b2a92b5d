"""Mixed precision (``config.precision``): bf16 compute close to fp32 for BERT (the masked_lm tiny config),
Llama and T5, params (and Adam's state) fp32 under "bf16", bf16 under "bf16_params"; the trainer runs the
masked_lm tiny config end to end with ``scan_layers=True, remat="dots_saveable", precision="bf16"``.

Tolerances (measured on CPU, stated here): the loss within 2e-2 relative of fp32, the gradient's cosine
with fp32's above 0.99 (flattened over every param)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import llama as llama_lib
from diffjax.models import t5 as t5_lib
from diffjax.models.options import ModelOptions
from tests._config_util import REPO, set_fields

LOSS_RTOL, GRAD_COS = 2e-2, 0.99


def _flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(tree)])


def assert_close_to_fp32(loss32, grads32, loss16, grads16):
    assert abs(float(loss16) - float(loss32)) <= LOSS_RTOL * abs(float(loss32)), (float(loss16), float(loss32))
    a, b = _flat(grads32), _flat(grads16)
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert cos > GRAD_COS, cos


def dtypes(tree):
    return {jnp.dtype(x.dtype) for x in jax.tree_util.tree_leaves(tree)}


def _config(name, arg):
    from diffjax.cli import _load_config_file

    return _load_config_file(os.path.join(REPO, "configs", name) + ":" + arg)


def test_masked_lm_bf16_close_to_fp32_with_fp32_params():
    from diffjax.tasks.base import build_task

    c = _config("rdm_minilm_demo.py", "tiny")
    fp32 = build_task(c.task, init_from=c.init_from)
    bf16 = build_task(c.task, init_from=c.init_from, model_options=ModelOptions(precision="bf16"))
    assert bf16.model.dtype == jnp.bfloat16 and bf16.model.param_dtype == jnp.float32
    params = fp32.init_params(jax.random.key(0))
    assert dtypes(jax.eval_shape(bf16.init_params, jax.random.key(0))) == {jnp.dtype(jnp.float32)}
    bf16_params = build_task(c.task, init_from=c.init_from, model_options=ModelOptions(precision="bf16_params"))
    assert dtypes(jax.eval_shape(bf16_params.init_params, jax.random.key(0))) == {jnp.dtype(jnp.bfloat16)}
    batch = next(fp32.train_batches(0, global_batch_size=4))

    def run(task):
        return jax.jit(jax.value_and_grad(lambda p: task.loss_fn(p, batch, jax.random.key(3))[0]))(params)

    (l32, g32), (l16, g16) = run(fp32), run(bf16)
    assert dtypes(g16) == {jnp.dtype(jnp.float32)}  # gradients of fp32 params are fp32
    assert_close_to_fp32(l32, g32, l16, g16)


def _lm_loss(model, params, ids):
    logits = model.apply({"params": params}, ids)
    assert logits.dtype == jnp.float32
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), ids[:, 1:, None], -1))


def test_llama_bf16_close_to_fp32():
    cfg = llama_lib.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2)
    model = llama_lib.Llama(cfg)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 64, (4, 12)))
    params = jax.jit(model.init)(jax.random.key(0), ids)["params"]
    bf16 = model.with_options(ModelOptions(scan_layers=True, precision="bf16"))
    assert dtypes(jax.eval_shape(lambda: bf16.init(jax.random.key(0), ids)["params"])) == {jnp.dtype(jnp.float32)}
    from diffjax.models.scan import stack_layers, unstack_layers

    l32, g32 = jax.jit(jax.value_and_grad(lambda p: _lm_loss(model, p, ids)))(params)
    l16, g16 = jax.jit(jax.value_and_grad(lambda p: _lm_loss(bf16, p, ids)))(stack_layers(params, "layers_"))
    assert_close_to_fp32(l32, g32, l16, unstack_layers(g16, "layers_"))


def test_t5_bf16_close_to_fp32():
    cfg = t5_lib.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                          feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)
    model = t5_lib.T5(cfg)
    rs = np.random.RandomState(0)
    ids, dec = jnp.asarray(rs.randint(2, 64, (4, 10))), jnp.asarray(rs.randint(2, 64, (4, 8)))
    params = jax.jit(model.init)(jax.random.key(0), ids, dec)["params"]
    bf16 = model.with_options(ModelOptions(precision="bf16"))

    def loss(m, p):
        logits = m.apply({"params": p}, ids, dec)
        assert logits.dtype == jnp.float32
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), dec[..., None], -1))

    l32, g32 = jax.jit(jax.value_and_grad(lambda p: loss(model, p)))(params)
    l16, g16 = jax.jit(jax.value_and_grad(lambda p: loss(bf16, p)))(params)
    assert_close_to_fp32(l32, g32, l16, g16)


@pytest.mark.slow  # ~25 s on 2 idle cores (MiniLM init_from, one train-step compile); 115 s under a load of 13
def test_trainer_masked_lm_scanned_dots_saveable_bf16_end_to_end(tmp_path):
    from diffjax.train import trainer

    c = _config("rdm_minilm_demo.py", "tiny")
    with c.unlocked():
        set_fields(c, {"scan_layers": True, "remat": "dots_saveable", "precision": "bf16", "train.num_steps": 2,
                       "train.eval_at_end": False, "train.checkpoint_every": 0})
    state = trainer.train(c, str(tmp_path))
    assert int(state.step) == 2
    assert state.params["encoder"]["layers"]["attention"]["query"]["kernel"].shape == (2, 384, 384)
    assert dtypes(state.params) == {jnp.dtype(jnp.float32)}
    floats = [x for x in jax.tree_util.tree_leaves(state.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and {jnp.dtype(x.dtype) for x in floats} == {jnp.dtype(jnp.float32)}  # Adam's moments
    report = json.load(open(tmp_path / "init_from.json"))
    assert report["loaded"] and not any("encoder/" in p for p in report["fresh"])  # MiniLM's layers, stacked
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows and all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
