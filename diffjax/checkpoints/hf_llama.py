"""Hugging Face Llama / Qwen2 / Mistral checkpoints <-> ``diffjax.models.llama.Llama`` parameters.

Family module for ``diffjax.checkpoints.hf`` (contract in its docstring). Pure numpy / jnp; no torch.

HF key (LlamaForCausalLM layout)                       diffjax param path
model.embed_tokens.weight [V, D]                      embed_tokens/embedding
model.layers.i.self_attn.{q,k,v,o}_proj.weight        layers_i/self_attn/{q,k,v,o}_proj/kernel (transposed)
model.layers.i.self_attn.{q,k,v,o}_proj.bias          layers_i/self_attn/{...}_proj/bias (if the model has it)
model.layers.i.mlp.{gate,up,down}_proj.weight         layers_i/mlp/{...}_proj/kernel (transposed)
model.layers.i.{input,post_attention}_layernorm.weight  layers_i/{...}_layernorm/scale
model.norm.weight                                     norm/scale
lm_head.weight [V, D]                                 lm_head/kernel [D, V] (untied only)

A bare ``LlamaModel`` checkpoint (keys without ``model.``) is accepted (``canonicalize_keys`` adds the
prefix). With tied embeddings an ``lm_head.weight`` in the file is ignored only if it equals the
embedding; otherwise the error says to load with ``tie_word_embeddings=False``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from diffjax.checkpoints._keytable import params_to_table, table_to_params
from diffjax.models.llama import Llama, LlamaConfig
from diffjax.models.scan import stack_layers, unstack_layers

MODEL_TYPES = ("llama", "qwen2", "mistral")
MODEL_CLASSES = (Llama,)

IGNORED_KEYS = (
    r"rotary_emb\.(inv_freq|original_inv_freq|cos_cached|sin_cached)$",
    r"self_attn\.rotary_emb\.",
    r"^lm_head\.weight$",  # only reached when the model is tied (an expected key is never ignored)
)

# config.json fields read below -> kind (diffjax.checkpoints.hf.CONFIG_KINDS; null falls back to the
# model type's default), checked by load_hf_checkpoint / load_gguf_checkpoint before model_from_hf_config.
CONFIG_FIELDS = {
    "vocab_size": "size?", "hidden_size": "size?", "intermediate_size": "size?", "num_hidden_layers": "size?",
    "num_attention_heads": "size?", "num_key_value_heads": "size?", "head_dim": "size?",
    "max_position_embeddings": "size?", "rms_norm_eps": "number?", "rope_theta": "number?",
    "rope_scaling": "dict?", "rope_parameters": "dict?", "attention_bias": "bool?", "mlp_bias": "bool?",
    "tie_word_embeddings": "bool?", "sliding_window": "count?", "use_sliding_window": "bool?",
    "layer_types": "strs?", "initializer_range": "number?", "bos_token_id": "id?", "eos_token_id": "id?",
    "pad_token_id": "id?", "hidden_act": "str?",
}

_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
_DEFAULTS = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6, bos_token_id=1,
                  eos_token_id=2, tie_word_embeddings=False),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, max_position_embeddings=32768, rms_norm_eps=1e-6, bos_token_id=None,
                  eos_token_id=None, tie_word_embeddings=False),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                    rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                    sliding_window=4096),
}


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x


def model_from_hf_config(hf_config: dict, dtype=jnp.float32, **overrides) -> Llama:
    """config.json dict -> ``Llama`` (computation and parameter dtype = ``dtype``).

    Reads transformers >= 5 ``rope_parameters`` as well as the older ``rope_theta`` / ``rope_scaling``.
    ``overrides`` replace ``LlamaConfig`` fields (e.g. ``attention="prefix"``, ``remat="full"``, ``scan_layers=True``,
    ``param_dtype=jnp.float32``); unknown names raise ``TypeError``.
    """
    mt = hf_config.get("model_type", "llama")
    if mt not in MODEL_TYPES:
        raise ValueError(f"hf_llama serves model_type in {MODEL_TYPES}, got {mt!r}; use "
                         "diffjax.checkpoints.hf.load_hf_checkpoint, which picks the family.")
    d = dict(_DEFAULTS[mt])
    d.update({k: v for k, v in hf_config.items() if v is not None or k in ("sliding_window", "head_dim")})
    rope = dict(hf_config.get("rope_parameters") or {})
    if "full_attention" in rope and isinstance(rope["full_attention"], dict):  # per-layer-type form
        rope = dict(rope["full_attention"])
    theta = rope.get("rope_theta", hf_config.get("rope_theta", 10000.0))
    scaling = hf_config.get("rope_scaling") or {k: v for k, v in rope.items() if k != "rope_theta"}
    rt = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    scaling = None if rt == "default" else tuple(sorted({**scaling, "rope_type": rt}.items()))
    if mt == "qwen2":
        qkv_bias, o_bias = True, False
        window = d.get("sliding_window") if d.get("use_sliding_window", False) else None
        layer_types = d.get("layer_types") if window is not None else None
    else:
        qkv_bias = o_bias = bool(d.get("attention_bias", False))
        window = d.get("sliding_window") if mt == "mistral" else None
        layer_types = None
    kw: dict[str, Any] = dict(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_hidden_layers=d["num_hidden_layers"], num_attention_heads=d["num_attention_heads"],
        num_key_value_heads=d.get("num_key_value_heads"), head_dim=d.get("head_dim"),
        hidden_act=d.get("hidden_act", "silu"), max_position_embeddings=d["max_position_embeddings"],
        rms_norm_eps=d["rms_norm_eps"], rope_theta=float(theta), rope_scaling=scaling, qkv_bias=qkv_bias,
        o_bias=o_bias, mlp_bias=bool(d.get("mlp_bias", False)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)), sliding_window=window,
        layer_types=tuple(layer_types) if layer_types else None,
        initializer_range=d.get("initializer_range", 0.02), bos_token_id=_first(d.get("bos_token_id")),
        eos_token_id=_first(d.get("eos_token_id")), pad_token_id=_first(d.get("pad_token_id")),
        model_type=mt, dtype=dtype, param_dtype=dtype,
    )
    if "diffjax_attention" in hf_config:
        kw["attention"] = hf_config["diffjax_attention"]
    fields = [f.name for f in dataclasses.fields(LlamaConfig)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise TypeError(f"Unknown LlamaConfig override(s) {unknown}; valid: {fields}.")
    kw.update(overrides)
    return Llama(LlamaConfig(**kw))


def init_params(model: Llama, rng) -> dict:
    """Fresh params (works under ``jax.eval_shape``)."""
    return model.init(rng, jnp.zeros((1, 1), jnp.int32), attention="causal")["params"]


def _key_table(cfg: LlamaConfig) -> list[tuple[str, tuple[str, ...], bool]]:
    """[(hf_key, flax_path, transpose)] for every parameter."""
    table = [("model.embed_tokens.weight", ("embed_tokens", "embedding"), False),
             ("model.norm.weight", ("norm", "scale"), False)]
    if not cfg.tie_word_embeddings:
        table.append(("lm_head.weight", ("lm_head", "kernel"), True))
    for i in range(cfg.num_hidden_layers):
        hf, fx = f"model.layers.{i}", f"layers_{i}"
        for p in ("q", "k", "v", "o"):
            table.append((f"{hf}.self_attn.{p}_proj.weight", (fx, "self_attn", f"{p}_proj", "kernel"), True))
            if (cfg.o_bias if p == "o" else cfg.qkv_bias):
                table.append((f"{hf}.self_attn.{p}_proj.bias", (fx, "self_attn", f"{p}_proj", "bias"), False))
        for p in ("gate", "up", "down"):
            table.append((f"{hf}.mlp.{p}_proj.weight", (fx, "mlp", f"{p}_proj", "kernel"), True))
            if cfg.mlp_bias:
                table.append((f"{hf}.mlp.{p}_proj.bias", (fx, "mlp", f"{p}_proj", "bias"), False))
        for n in ("input_layernorm", "post_attention_layernorm"):
            table.append((f"{hf}.{n}.weight", (fx, n, "scale"), False))
    return table


def canonicalize_keys(tensors: dict, model: Llama) -> dict:
    """Adds the ``model.`` prefix of a bare ``LlamaModel`` checkpoint; rejects a tied model given a
    different ``lm_head.weight``."""
    if not any(k.startswith("model.") for k in tensors) and any(k.startswith("layers.") for k in tensors):
        tensors = {(k if k.startswith("lm_head.") else f"model.{k}"): v for k, v in tensors.items()}
    cfg = model.config
    if cfg.tie_word_embeddings and "lm_head.weight" in tensors and "model.embed_tokens.weight" in tensors:
        head, emb = np.asarray(tensors["lm_head.weight"]), np.asarray(tensors["model.embed_tokens.weight"])
        if head.shape != emb.shape or not np.array_equal(head, emb):
            raise ValueError(
                "The checkpoint has an lm_head.weight that differs from model.embed_tokens.weight, but "
                "config.json says tie_word_embeddings=true. Load it with tie_word_embeddings=False.")
    return tensors


def hf_to_params(tensors: dict[str, np.ndarray], model: Llama) -> dict:
    """HF state dict (numpy, PyTorch layout, canonical names) -> params tree (layers stacked for a scanned
    model). Extra keys are ignored; a missing key raises ``KeyError`` naming it (``hf.load_hf_checkpoint``
    checks everything first)."""
    params = table_to_params(tensors, _key_table(model.config), model.config.param_dtype)
    return stack_layers(params, "layers_") if model.config.scan_layers else params


def params_to_hf(params: dict, model: Llama) -> dict:
    """params tree (or ``{"params": tree}``) -> {HF key: array} in PyTorch layout (traceable: jnp only)."""
    if "params" in params and "embed_tokens" not in params:
        params = params["params"]
    if model.config.scan_layers:
        params = unstack_layers(params, "layers_")
    return params_to_table(params, _key_table(model.config))


def hf_config_from_model(model: Llama) -> dict:
    """config.json dict for LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM.

    The model_type is the model's own when transformers can express its biases and windows
    (Qwen2: q/k/v bias only; Llama: ``attention_bias`` on q/k/v/o; Mistral: none), else the one that can.
    A non-causal default mask is recorded as ``diffjax_attention`` (transformers ignores it).
    """
    cfg = model.config
    mt = cfg.model_type
    if cfg.qkv_bias and not cfg.o_bias:
        mt = "qwen2"
    elif cfg.qkv_bias and cfg.o_bias or cfg.mlp_bias:
        mt = "llama"
    elif mt == "qwen2":  # Qwen2 always has q/k/v biases
        mt = "mistral" if cfg.sliding_window is not None else "llama"
    if cfg.o_bias and not cfg.qkv_bias:
        raise ValueError("An o_proj bias without q/k/v biases has no transformers equivalent; cannot save.")
    if cfg.mlp_bias and cfg.qkv_bias != cfg.o_bias:
        raise ValueError("mlp_bias with Qwen2-style q/k/v-only biases has no transformers equivalent.")
    if cfg.sliding_window is not None and mt == "llama":
        raise ValueError("A sliding window with Llama-style biases has no transformers equivalent; cannot save.")
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        rope.update(dict(cfg.rope_scaling))
    out = {
        "architectures": [_ARCH[mt]],
        "model_type": mt,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": cfg.hidden_act,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": rope,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "initializer_range": cfg.initializer_range,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "attention_dropout": 0.0,
    }
    if mt == "llama":
        out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    if mt == "mistral":
        out["sliding_window"] = cfg.sliding_window
    if mt == "qwen2":
        out["use_sliding_window"] = cfg.sliding_window is not None
        out["sliding_window"] = cfg.sliding_window
        if cfg.sliding_window is not None:
            out["layer_types"] = list(cfg.layer_types or ["sliding_attention"] * cfg.num_hidden_layers)
            out["max_window_layers"] = 0
    if cfg.attention != "causal":
        out["diffjax_attention"] = cfg.attention
    return out
