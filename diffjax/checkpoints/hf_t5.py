"""Hugging Face T5 / T5 v1.1 / mT5 / UMT5 checkpoints <-> ``diffjax.models.t5.T5`` parameters.

Family module for ``diffjax.checkpoints.hf`` (which reads config.json and the weight files, checks
keys strictly and dispatches here on ``model_type``; see its docstring for the contract). No torch.

Tying and output scaling. transformers >= 5 always writes ``tie_word_embeddings: true`` for T5 and
stores the v1.0 behaviour as ``scale_decoder_outputs``; older configs say ``tie_word_embeddings: false``
for v1.1 / mT5 / UMT5. The config alone therefore cannot say whether ``lm_head.weight`` is a separate
matrix, so we decide as follows (override with ``tie_word_embeddings=...`` / ``scale_decoder_outputs=...``):
- t5, umt5: scale = ``scale_decoder_outputs`` if present, else ``tie_word_embeddings is not False``;
  tied head iff scaled (v1.0 = tied + scaled, v1.1 / UMT5 = untied, unscaled).
- mt5: never scaled (transformers' MT5 has no scaling) and untied.
An untied model loading a checkpoint without ``lm_head.weight`` copies ``shared.weight`` into the head
(what transformers does); a tied model given an ``lm_head.weight`` that differs from ``shared.weight``
is an error that tells the user to load with ``tie_word_embeddings=False`` (``canonicalize_keys``).

HF key                                                       diffjax param path
shared.weight [V, D]                                         shared/embedding
lm_head.weight [V, D]                                        lm_head/kernel [D, V] (untied only)
{s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight [NB, H]
                                                             {s}/relative_attention_bias/embedding
  (UMT5: every block i)                                      {s}/block_i/relative_attention_bias/embedding
{s}.block.i.layer.0.SelfAttention.{q,k,v,o}.weight           {s}/block_i/self_attention/{query,key,value,out}/kernel (transposed)
{s}.block.i.layer.0.layer_norm.weight                        {s}/block_i/self_attention_norm/scale
decoder.block.i.layer.1.EncDecAttention.{q,k,v,o}.weight     decoder/block_i/cross_attention/.../kernel (transposed)
decoder.block.i.layer.1.layer_norm.weight                    decoder/block_i/cross_attention_norm/scale
{s}.block.i.layer.{1|2}.DenseReluDense.{wi|wi_0,wi_1,wo}.weight  {s}/block_i/mlp/{...}/kernel (transposed)
{s}.block.i.layer.{1|2}.layer_norm.weight                    {s}/block_i/mlp_norm/scale
{s}.final_layer_norm.weight                                  {s}/final_norm/scale
with {s} in (encoder, decoder); layer.1 of an encoder block is its feed-forward, layer.2 of a decoder's.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax.numpy as jnp
import numpy as np

from diffjax.checkpoints._keytable import params_to_table, table_to_params
from diffjax.models.scan import stack_layers, unstack_layers
from diffjax.models.t5 import T5, T5Config

MODEL_TYPES = ("t5", "mt5", "umt5")
MODEL_CLASSES = (T5,)

# Keys present in many checkpoints that carry no information of their own (re.search): the stacks'
# embedding copies of shared.weight, a cross-attention relative bias that old T5 checkpoints saved but
# never used, and the tied head (an expected key is never ignored, so an untied lm_head is still loaded;
# canonicalize_keys refuses a tied model given a *different* lm_head).
IGNORED_KEYS = (
    r"^(encoder|decoder)\.embed_tokens\.weight$",
    r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$",
    r"^lm_head\.weight$",
)

_DEFAULTS = {
    "t5": dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
               feed_forward_proj="relu"),
    "mt5": dict(vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
                feed_forward_proj="gated-gelu"),
}
_DEFAULTS["umt5"] = _DEFAULTS["mt5"]
_COMMON = dict(num_decoder_layers=None, relative_attention_num_buckets=32, relative_attention_max_distance=128,
               dropout_rate=0.1, layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1,
               decoder_start_token_id=0, initializer_factor=1.0)
# config.json fields read below -> kind (diffjax.checkpoints.hf.CONFIG_KINDS; null falls back to the
# model type's default), checked by load_hf_checkpoint before model_from_hf_config runs.
CONFIG_FIELDS = {
    "vocab_size": "size?", "d_model": "size?", "d_kv": "size?", "d_ff": "size?", "num_layers": "size?",
    "num_heads": "size?", "num_decoder_layers": "size?", "relative_attention_num_buckets": "size?",
    "relative_attention_max_distance": "size?", "dropout_rate": "number?", "layer_norm_epsilon": "number?",
    "feed_forward_proj": "str?", "pad_token_id": "id?", "eos_token_id": "id?", "decoder_start_token_id": "id?",
    "initializer_factor": "number?", "tie_word_embeddings": "bool?", "scale_decoder_outputs": "bool?",
}
_ATTN = (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out"))


def _check_model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"hf_t5 handles model_type in {MODEL_TYPES}, got {model_type!r}; "
            "load this checkpoint through diffjax.checkpoints.hf.load_hf_checkpoint, which picks the family.")


def model_from_hf_config(hf_config: dict, dtype=jnp.float32, **overrides) -> T5:
    """HF config.json dict -> ``T5`` module (computation and parameter dtype = ``dtype``).

    ``overrides`` replace any ``T5Config`` field (e.g. ``decoder_attention="bidirectional"``,
    ``dropout_rate=0.0``, ``tie_word_embeddings=False``, ``param_dtype=jnp.float32``).
    """
    model_type = hf_config.get("model_type", "t5")
    _check_model_type(model_type)
    kw: dict[str, Any] = {}
    for name, default in {**_DEFAULTS[model_type], **_COMMON}.items():
        value = hf_config.get(name, default)
        kw[name] = default if value is None and name != "num_decoder_layers" else value
    if isinstance(kw["eos_token_id"], (list, tuple)):
        kw["eos_token_id"] = kw["eos_token_id"][0]
    if model_type in ("t5", "umt5"):
        scale = hf_config.get("scale_decoder_outputs", hf_config.get("tie_word_embeddings", True) is not False)
        kw.update(scale_decoder_outputs=bool(scale), tie_word_embeddings=bool(scale))
    else:
        kw.update(scale_decoder_outputs=False, tie_word_embeddings=False)
    if "diffjax_decoder_attention" in hf_config:
        kw["decoder_attention"] = hf_config["diffjax_decoder_attention"]
    if "diffjax_decoder_bidirectional_buckets" in hf_config:
        kw["decoder_bidirectional_buckets"] = hf_config["diffjax_decoder_bidirectional_buckets"]
    kw.update(model_type=model_type, dtype=dtype, param_dtype=dtype,
              relative_attention_bias_per_layer=model_type == "umt5")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(T5Config)})
    if unknown:
        raise TypeError(f"Unknown T5Config override(s) {unknown}; valid: {[f.name for f in dataclasses.fields(T5Config)]}.")
    kw.update(overrides)
    return T5(T5Config(**kw))


def _key_table(cfg: T5Config) -> list[tuple[str, tuple[str, ...], bool]]:
    """[(hf_key, flax_path, transpose)] for every parameter of the model."""
    table = [("shared.weight", ("shared", "embedding"), False)]
    if not cfg.tie_word_embeddings:
        table.append(("lm_head.weight", ("lm_head", "kernel"), True))
    mlp = ("wi_0", "wi_1", "wo") if cfg.is_gated else ("wi", "wo")
    for stack, n_layers in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
        if not cfg.relative_attention_bias_per_layer:
            table.append((f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                          (stack, "relative_attention_bias", "embedding"), False))
        table.append((f"{stack}.final_layer_norm.weight", (stack, "final_norm", "scale"), False))
        for i in range(n_layers):
            hf, fx = f"{stack}.block.{i}.layer", (stack, f"block_{i}")
            if cfg.relative_attention_bias_per_layer:
                table.append((f"{hf}.0.SelfAttention.relative_attention_bias.weight",
                              fx + ("relative_attention_bias", "embedding"), False))
            subs = [("0", "SelfAttention", "self_attention")]
            if stack == "decoder":
                subs.append(("1", "EncDecAttention", "cross_attention"))
            for idx, hf_name, fx_name in subs:
                for a, b in _ATTN:
                    table.append((f"{hf}.{idx}.{hf_name}.{a}.weight", fx + (fx_name, b, "kernel"), True))
                table.append((f"{hf}.{idx}.layer_norm.weight", fx + (f"{fx_name}_norm", "scale"), False))
            ff = "2" if stack == "decoder" else "1"
            for m in mlp:
                table.append((f"{hf}.{ff}.DenseReluDense.{m}.weight", fx + ("mlp", m, "kernel"), True))
            table.append((f"{hf}.{ff}.layer_norm.weight", fx + ("mlp_norm", "scale"), False))
    return table


def _expected_hf_shape(cfg: T5Config, hf_key: str) -> tuple[int, ...]:
    inner = cfg.num_heads * cfg.d_kv
    if hf_key in ("shared.weight", "lm_head.weight"):
        return (cfg.vocab_size, cfg.d_model)
    if hf_key.endswith("relative_attention_bias.weight"):
        return (cfg.relative_attention_num_buckets, cfg.num_heads)
    if hf_key.endswith("layer_norm.weight"):
        return (cfg.d_model,)
    m = re.search(r"\.(q|k|v|o|wi|wi_0|wi_1|wo)\.weight$", hf_key)
    name = m.group(1)
    return {"q": (inner, cfg.d_model), "k": (inner, cfg.d_model), "v": (inner, cfg.d_model),
            "o": (cfg.d_model, inner), "wi": (cfg.d_ff, cfg.d_model), "wi_0": (cfg.d_ff, cfg.d_model),
            "wi_1": (cfg.d_ff, cfg.d_model), "wo": (cfg.d_model, cfg.d_ff)}[name]


def init_params(model: T5, rng) -> dict:
    """Fresh params (the "params" collection's content) from the model's own init; eval_shape-safe."""
    ids = jnp.zeros((1, 1), jnp.int32)
    return model.init(rng, ids, ids)["params"]


def canonicalize_keys(tensors: dict, model: T5) -> dict:
    """Resolve the head before the strict key check (see the module docstring).

    Untied model, no ``lm_head.weight`` in the file: ``shared.weight`` is copied in. Tied model with an
    ``lm_head.weight`` different from ``shared.weight``: ``ValueError`` (load with tie_word_embeddings=False).
    """
    cfg = model.config
    has_head, has_shared = "lm_head.weight" in tensors, "shared.weight" in tensors
    if cfg.tie_word_embeddings and has_head and has_shared:
        head, shared = np.asarray(tensors["lm_head.weight"]), np.asarray(tensors["shared.weight"])
        if head.shape != shared.shape or not np.array_equal(head, shared):
            raise ValueError(
                "The checkpoint has an lm_head.weight that differs from shared.weight (an untied T5 v1.1-style "
                "head), but the model was built with tie_word_embeddings=True. Load it with "
                "tie_word_embeddings=False (and scale_decoder_outputs=False for v1.1).")
    if not cfg.tie_word_embeddings and not has_head and has_shared:
        tensors = dict(tensors, **{"lm_head.weight": tensors["shared.weight"]})
    return tensors


def hf_to_params(tensors: dict[str, np.ndarray], model: T5) -> dict:
    """HF state dict (numpy, PyTorch layout) -> the model's ``params`` tree (not wrapped in {"params": ...}).

    Usable on its own (e.g. on ``{k: v.numpy() for k, v in torch_model.state_dict().items()}``): applies
    ``canonicalize_keys``, skips ``IGNORED_KEYS`` and raises one ``ValueError`` listing every missing,
    unexpected and mis-shaped key. Arrays are cast to ``model.config.param_dtype``.
    """
    cfg = model.config
    dtype = cfg.param_dtype
    table = _key_table(cfg)
    expected = {k for k, _, _ in table}
    tensors = canonicalize_keys(tensors, model)
    tensors = {k: v for k, v in tensors.items()
               if k in expected or not any(re.search(p, k) for p in IGNORED_KEYS)}
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - expected)
    mismatched = []
    for hf_key, _, _ in table:
        if hf_key not in tensors:
            continue
        shape, want = tuple(np.shape(tensors[hf_key])), _expected_hf_shape(cfg, hf_key)
        if shape != want:
            mismatched.append(f"{hf_key}: checkpoint {shape}, model expects {want}")
    if missing or unexpected or mismatched:
        lines = [f"T5 checkpoint does not match the model built from its config "
                 f"(d_model={cfg.d_model}, heads={cfg.num_heads}x{cfg.d_kv}, d_ff={cfg.d_ff}, "
                 f"layers={cfg.num_layers}/{cfg.num_decoder_layers}, feed_forward_proj={cfg.feed_forward_proj!r}, "
                 f"tie_word_embeddings={cfg.tie_word_embeddings}):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {missing}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {mismatched}")
        lines.append("Check that config.json belongs to these weights (feed_forward_proj, num_layers, "
                     "num_decoder_layers, num_heads, d_kv, d_ff, vocab_size).")
        raise ValueError("\n".join(lines))
    params = table_to_params(tensors, table, dtype)
    if cfg.scan_layers:
        params = stack_layers(stack_layers(params, "encoder/block_"), "decoder/block_")
    return params


def params_to_hf(params: dict, model: T5) -> dict[str, np.ndarray]:
    """The model's params (tree or {"params": tree}) -> HF state dict (PyTorch layout; jax/numpy arrays).

    Writes ``shared.weight`` once (transformers ties the stacks' embed_tokens to it) and ``lm_head.weight``
    only for an untied head. Traceable (runs under ``jax.eval_shape`` for the strict check).
    """
    if "params" in params and "shared" not in params:
        params = params["params"]
    if model.config.scan_layers:
        params = unstack_layers(unstack_layers(params, "encoder/block_"), "decoder/block_")
    return params_to_table(params, _key_table(model.config), hint=f" (config {model.config})")


def hf_config_from_model(model: T5) -> dict:
    """config.json dict that transformers' (M|UM)T5ForConditionalGeneration reads back to the same function
    (a scaled mT5, which transformers' MT5 cannot express, is written as t5).
    A bidirectional decoder is recorded as ``diffjax_decoder_attention`` (transformers ignores it)."""
    cfg = model.config
    model_type = cfg.model_type
    if cfg.relative_attention_bias_per_layer:
        model_type = "umt5"  # the only HF T5 variant with a bias table per layer
    elif model_type == "umt5" or (model_type == "mt5" and cfg.scale_decoder_outputs):
        model_type = "t5"
    out = {
        "architectures": [{"t5": "T5", "mt5": "MT5", "umt5": "UMT5"}[model_type] + "ForConditionalGeneration"],
        "model_type": model_type,
        "is_encoder_decoder": True,
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_kv": cfg.d_kv,
        "d_ff": cfg.d_ff,
        "num_layers": cfg.num_layers,
        "num_decoder_layers": cfg.num_decoder_layers,
        "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "dropout_rate": cfg.dropout_rate,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "initializer_factor": cfg.initializer_factor,
        "feed_forward_proj": cfg.feed_forward_proj,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "pad_token_id": cfg.pad_token_id,
        "eos_token_id": cfg.eos_token_id,
        "decoder_start_token_id": cfg.decoder_start_token_id,
    }
    if model_type in ("t5", "umt5"):
        out["scale_decoder_outputs"] = cfg.scale_decoder_outputs
    if cfg.decoder_attention != "causal":
        out["diffjax_decoder_attention"] = cfg.decoder_attention
    if cfg.decoder_bidirectional_buckets is not None:
        out["diffjax_decoder_bidirectional_buckets"] = cfg.decoder_bidirectional_buckets
    return out
