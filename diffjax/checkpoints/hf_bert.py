"""HF BERT / RoBERTa / XLM-R checkpoints <-> ``diffjax.models.bert.BertEncoder`` params.

Implements the family-module contract of ``diffjax.checkpoints.hf``. Canonical HF key names are
those of transformers' PyTorch classes: with an MLM or classification head, the
``*ForMaskedLM`` / ``*ForSequenceClassification`` layout (encoder under ``bert.`` / ``roberta.``,
heads ``cls.predictions.*`` / ``lm_head.*`` / ``classifier.*``); without a head, the bare
``BertModel`` layout (no prefix, ``pooler.*``). ``canonicalize_keys`` adds or strips the prefix so
either layout loads into either model, and renames old ``LayerNorm.gamma/beta``.

Defaults taken from ``config.json``'s ``architectures``: ``mlm_head`` for ``*ForMaskedLM`` /
``*ForPreTraining``, ``use_pooler`` for ``*Model`` and BERT ``*ForSequenceClassification``,
``num_labels`` for ``*ForSequenceClassification``. Any ``BertConfig`` field can be overridden,
e.g. ``load_hf_checkpoint(minilm_dir, mlm_head=True, init_missing=[r"cls\\.predictions\\."])``
gives MiniLM a tied MLM head whose transform is initialised fresh (and reported).
The length head (paper 002) has no HF counterpart: it is saved as ``length_head.{weight,bias}``
with ``diffjax_length_max`` in ``config.json`` (transformers ignores both).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax.numpy as jnp

from diffjax.checkpoints._keytable import params_to_table, table_to_params
from diffjax.models.bert import BertConfig, BertEncoder
from diffjax.models.scan import stack_layers, unstack_layers

MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
MODEL_CLASSES = (BertEncoder,)

# Present in files, never parameters: non-persistent buffers, the decoder bias (a second name of
# the head's ``bias``), the NSP head of *ForPreTraining, and the tied decoder weight (a copy of the
# word embeddings). An expected key is never ignored, so an untied decoder weight still loads.
IGNORED_KEYS = (
    r"(^|\.)embeddings\.position_ids$",
    r"(^|\.)embeddings\.token_type_ids$",
    r"^(cls\.predictions|lm_head)\.decoder\.bias$",
    r"^(cls\.predictions|lm_head)\.decoder\.weight$",
    r"^cls\.seq_relationship\.",
)

# config.json fields read below -> kind (diffjax.checkpoints.hf.CONFIG_KINDS; "!" = required), checked by
# load_hf_checkpoint before model_from_hf_config runs.
CONFIG_FIELDS = {
    "vocab_size": "size!", "hidden_size": "size!", "num_hidden_layers": "size!", "num_attention_heads": "size!",
    "intermediate_size": "size!", "max_position_embeddings": "size!", "type_vocab_size": "count",
    "layer_norm_eps": "number", "pad_token_id": "count", "hidden_act": "str", "hidden_dropout_prob": "number",
    "attention_probs_dropout_prob": "number", "tie_word_embeddings": "bool", "architectures": "strs?",
    "id2label": "dict?", "num_labels": "count", "position_embedding_type": "str?", "is_decoder": "bool",
    "add_cross_attention": "bool", "diffjax_length_max": "count",
}

_ARCH_PREFIX = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta"}
_BASE_PREFIX = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta"}


def model_from_hf_config(hf_config: dict, dtype=jnp.float32, **overrides) -> BertEncoder:
    """config.json dict -> ``BertEncoder``. ``overrides``: any ``BertConfig`` field."""
    mt = hf_config.get("model_type")
    if mt not in MODEL_TYPES:
        raise ValueError(f"hf_bert serves model_type {MODEL_TYPES}, got {mt!r}")
    pet = hf_config.get("position_embedding_type", "absolute")
    if pet != "absolute":
        raise ValueError(f"position_embedding_type={pet!r} is not supported (only 'absolute')")
    if hf_config.get("is_decoder") or hf_config.get("add_cross_attention"):
        raise ValueError("decoder / cross-attention BERT configs are not supported: diffjax's BertEncoder is bidirectional")
    archs = hf_config.get("architectures") or []
    is_cls = any(a.endswith("ForSequenceClassification") for a in archs)
    pad = hf_config.get("pad_token_id", 0 if mt == "bert" else 1)
    num_labels = 0
    if is_cls:
        num_labels = len(hf_config["id2label"]) if "id2label" in hf_config else int(hf_config.get("num_labels", 2))
    fields = dict(
        vocab_size=hf_config["vocab_size"],
        hidden_size=hf_config["hidden_size"],
        num_layers=hf_config["num_hidden_layers"],
        num_heads=hf_config["num_attention_heads"],
        intermediate_size=hf_config["intermediate_size"],
        max_position_embeddings=hf_config["max_position_embeddings"],
        type_vocab_size=hf_config.get("type_vocab_size", 2),
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
        pad_token_id=pad,
        position_offset=0 if mt == "bert" else pad + 1,
        hidden_act=hf_config.get("hidden_act", "gelu"),
        hidden_dropout=hf_config.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf_config.get("attention_probs_dropout_prob", 0.1),
        family=mt,
        use_pooler=(not archs) or any(a.endswith("Model") for a in archs) or (is_cls and mt == "bert"),
        mlm_head=any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in archs),
        tie_word_embeddings=hf_config.get("tie_word_embeddings", True),
        num_labels=num_labels,
        length_max=hf_config.get("diffjax_length_max", 0),
    )
    names = {f.name for f in dataclasses.fields(BertConfig)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise TypeError(f"unknown BERT overrides {bad}; accepted: {sorted(names)}")
    fields.update(overrides)
    return BertEncoder(BertConfig(**fields), dtype=dtype, param_dtype=dtype)


def init_params(model: BertEncoder, rng) -> Any:
    return model.init(rng, jnp.zeros((1, 1), jnp.int32))["params"]


def _prefix(cfg: BertConfig) -> str:
    return _BASE_PREFIX[cfg.family] + "." if (cfg.mlm_head or cfg.num_labels) else ""


def _key_table(cfg: BertConfig) -> list[tuple[str, tuple[str, ...], bool]]:
    """[(HF key, param path, transpose)] for every parameter of the model."""
    rows: list[tuple[str, tuple[str, ...], bool]] = []

    def linear(hf, path, bias=True):
        rows.append((hf + ".weight", (*path, "kernel"), True))
        if bias:
            rows.append((hf + ".bias", (*path, "bias"), False))

    def norm(hf, path):
        rows.append((hf + ".weight", (*path, "scale"), False))
        rows.append((hf + ".bias", (*path, "bias"), False))

    p = _prefix(cfg)
    emb = ["word", "position"] + (["token_type"] if cfg.type_vocab_size else [])
    for e in emb:
        rows.append((f"{p}embeddings.{e}_embeddings.weight", ("embeddings", f"{e}_embeddings", "embedding"), False))
    norm(f"{p}embeddings.LayerNorm", ("embeddings", "LayerNorm"))
    for i in range(cfg.num_layers):
        hf, fx = f"{p}encoder.layer.{i}", ("encoder", f"layer_{i}")
        for n in ("query", "key", "value"):
            linear(f"{hf}.attention.self.{n}", (*fx, "attention", n))
        linear(f"{hf}.attention.output.dense", (*fx, "attention", "output"))
        norm(f"{hf}.attention.output.LayerNorm", (*fx, "attention_ln"))
        linear(f"{hf}.intermediate.dense", (*fx, "intermediate"))
        linear(f"{hf}.output.dense", (*fx, "output"))
        norm(f"{hf}.output.LayerNorm", (*fx, "output_ln"))
    if cfg.use_pooler:
        linear(f"{p}pooler.dense", ("pooler", "dense"))
    if cfg.mlm_head:
        if cfg.head_style == "bert":
            linear("cls.predictions.transform.dense", ("mlm_head", "dense"))
            norm("cls.predictions.transform.LayerNorm", ("mlm_head", "layer_norm"))
            head = "cls.predictions"
        else:
            linear("lm_head.dense", ("mlm_head", "dense"))
            norm("lm_head.layer_norm", ("mlm_head", "layer_norm"))
            head = "lm_head"
        rows.append((f"{head}.bias", ("mlm_head", "bias"), False))
        if not cfg.tie_word_embeddings:
            linear(f"{head}.decoder", ("mlm_head", "decoder"), bias=False)
    if cfg.num_labels:
        if cfg.head_style == "bert":
            linear("classifier", ("classifier", "dense"))
        else:
            linear("classifier.dense", ("classifier", "dense"))
            linear("classifier.out_proj", ("classifier", "out_proj"))
    if cfg.length_max:
        linear("length_head", ("length_head",))
    return rows


_LAYERS = "encoder/layer_"  # the unrolled layers; a scanned model (config.scan_layers) stacks them


def hf_to_params(tensors: dict, model: BertEncoder) -> dict:
    params = table_to_params(tensors, _key_table(model.config))
    return stack_layers(params, _LAYERS) if model.config.scan_layers else params


def params_to_hf(params, model: BertEncoder) -> dict:
    if model.config.scan_layers:
        params = unstack_layers(params, _LAYERS)
    return params_to_table(params, _key_table(model.config))


def canonicalize_keys(tensors: dict, model: BertEncoder) -> dict:
    """Renames a file's keys to ``params_to_hf``'s names: base-model prefix added or stripped,
    ``LayerNorm.gamma/beta`` -> ``weight/bias``. Head keys (``cls.*``, ``lm_head.*``) are untouched."""
    cfg = model.config
    base = _BASE_PREFIX[cfg.family] + "."
    want = _prefix(cfg)
    body = re.compile(r"^(embeddings|encoder|pooler)\.")
    out = {}
    for k, v in tensors.items():
        k = re.sub(r"(LayerNorm|layer_norm)\.gamma$", r"\1.weight", k)
        k = re.sub(r"(LayerNorm|layer_norm)\.beta$", r"\1.bias", k)
        if want and body.match(k):
            k = want + k
        elif not want and k.startswith(base) and body.match(k[len(base):]):
            k = k[len(base):]
        out[k] = v
    return out


def hf_config_from_model(model: BertEncoder) -> dict:
    cfg = model.config
    arch = _ARCH_PREFIX[cfg.family]
    if cfg.mlm_head:
        arch += "ForMaskedLM"
    elif cfg.num_labels:
        arch += "ForSequenceClassification"
    else:
        arch += "Model"
    out = {
        "model_type": cfg.family,
        "architectures": [arch],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "pad_token_id": cfg.pad_token_id,
        "hidden_act": cfg.hidden_act,
        "hidden_dropout_prob": cfg.hidden_dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "is_decoder": False,
        "add_cross_attention": False,
    }
    if cfg.family != "bert":
        out.update(bos_token_id=0, eos_token_id=2)
    if cfg.num_labels:
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
    if cfg.length_max:
        out["diffjax_length_max"] = cfg.length_max
    return out
