"""BERT / RoBERTa / XLM-R encoder in Flax linen (post-LN Transformer, absolute positions).

One module, ``BertEncoder``, covers the three families; they differ only in config:

* positions: BERT uses ``position_ids = arange(L)``; RoBERTa / XLM-R (``position_offset =
  pad_token_id + 1``) number non-pad tokens ``pad+1, pad+2, ...`` and give pads ``pad`` (as HF's
  ``create_position_ids_from_input_ids``); with ``inputs_embeds`` positions are sequential
  ``pad+1 .. pad+L`` (as HF).
* token types (``type_vocab_size`` 0 disables them), GELU exact (``hidden_act="gelu"``), post-LN.
* MLM head (``mlm_head=True``): ``dense -> act -> LayerNorm -> h @ E^T + bias``, the decoder tied to
  the word embeddings (or an untied ``decoder`` kernel when ``tie_word_embeddings=False``).
  ``head_style="bert"`` uses ``hidden_act`` in the head, ``"roberta"`` exact GELU (as HF).
* optional heads: pooler (first token -> dense -> tanh), sequence classification (BERT style:
  pooler -> dense; RoBERTa style: first token -> dense -> tanh -> out_proj) and a length predictor
  (paper 002: logits over lengths 0..L_max from mean-pooled states, a diffjax-only head).

Paper 000's denoiser feeds noised embeddings in place of the word embeddings (``inputs_embeds``:
``[B, L, D]``) and adds a per-token conditioning vector (``cond``: ``[B, D]`` or ``[B, L, D]``,
e.g. a timestep embedding) to the input sum *before* the embedding LayerNorm:
``h0 = LN(word_or_inputs_embeds + pos + type + cond)``.

Param paths (for ``SHARDING_RULES``): ``embeddings/{word_embeddings,position_embeddings,
token_type_embeddings}/embedding``, ``embeddings/LayerNorm``, ``encoder/layer_{i}/attention/
{query,key,value,output}``, ``encoder/layer_{i}/{attention_ln,intermediate,output,output_ln}`` (with
``scan_layers``: one ``encoder/layers/...``, params with a leading layer axis, ``diffjax.models.scan``),
``pooler/dense``, ``mlm_head/{dense,layer_norm,bias}``, ``classifier/...``, ``length_head``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.diffusion.cached_decoding import slice_rows, splice_rows
from diffjax.models.layers import ACTIVATIONS, add_bias, softmax_attention
from diffjax.models.inputs import check_token_ids
from diffjax.models.scan import layer_class, remat_name

Dtype = Any

# Megatron-style tensor parallelism on the "model" mesh axis: q/k/v and intermediate kernels are
# column-split (their output features), the attention-output and FFN-output kernels row-split
# (their input features), so each layer needs one all-reduce after attention and one after the
# FFN. Word embeddings are split over the vocabulary. Patterns are written so both re.fullmatch
# and re.search on the '/'-joined param path (with or without a leading "params/") work.
SHARDING_RULES = (
    (r"(.*/)?embeddings/word_embeddings/embedding", ("model", None)),
    (r"(.*/)?attention/(query|key|value)/kernel", (None, "model")),
    (r"(.*/)?attention/(query|key|value)/bias", ("model",)),
    (r"(.*/)?attention/output/kernel", ("model", None)),
    (r"(.*/)?intermediate/kernel", (None, "model")),
    (r"(.*/)?intermediate/bias", ("model",)),
    (r"(.*/)?(layer_\d+|layers)/output/kernel", ("model", None)),
)


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture of a BERT-family encoder (hashable: safe as a static jit argument)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # 0: no token-type embeddings
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_offset: int = 0  # RoBERTa / XLM-R: pad_token_id + 1
    hidden_act: str = "gelu"  # "gelu" (exact), "gelu_new"/"gelu_pytorch_tanh" (tanh approx), "relu", "silu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    family: str = "bert"  # "bert" | "roberta" | "xlm-roberta": head naming/style
    use_pooler: bool = False
    mlm_head: bool = True
    tie_word_embeddings: bool = True
    num_labels: int = 0  # >0: sequence-classification head
    length_max: int = 0  # >0: length head with classes 0..length_max (paper 002)
    scan_layers: bool = False  # layout, not architecture: one nn.scan over the layers (diffjax.models.scan)
    remat: str = "none"  # "none" | "full" | "dots_saveable" (a bool: True = "full")

    @property
    def head_style(self) -> str:
        return "bert" if self.family == "bert" else "roberta"

    def __post_init__(self):
        object.__setattr__(self, "remat", remat_name(self.remat))
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.family not in ("bert", "roberta", "xlm-roberta"):
            raise ValueError(f"family must be bert/roberta/xlm-roberta, got {self.family!r}")
        _activation(self.hidden_act)
        if self.num_labels and self.head_style == "bert" and not self.use_pooler:
            raise ValueError("a BERT-style classification head needs use_pooler=True")


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act {name!r} not supported; use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _dense(features, cfg, dtype, param_dtype, name):
    return nn.Dense(
        features, dtype=dtype, param_dtype=param_dtype, kernel_init=nn.initializers.normal(0.02), name=name
    )


def _ln(cfg, dtype, param_dtype, name):
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, name=name)


class BertSelfAttention(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, bias, deterministic: bool, kv_cache=None, start=None):
        """h: [B, W, D]; bias: [B, 1, 1, S] additive key mask -> ([B, W, D] before residual, (k, v) [B, W, H, hd]
        of these rows). Without ``kv_cache`` the rows are the whole sequence (W = S). With ``kv_cache`` (keys,
        values [B, S, H, hd]) the rows are the window ``[start_b, start_b + W)`` of row b (``start`` [B] int32,
        clamped to [0, S - W] as ``lax.dynamic_update_slice`` does): their fresh k / v replace the cached ones
        there and the queries attend over all S keys (the cached ones elsewhere)."""
        cfg = self.config
        b, l, d = h.shape
        nh, hd = cfg.num_heads, d // cfg.num_heads
        rows = h.reshape(b * l, d)  # projections on [B*L, D] rows: 2-d dots and weight gradients
        q, k, v = (
            _dense(d, cfg, self.dtype, self.param_dtype, n)(rows).reshape(b, l, nh, hd) for n in ("query", "key", "value")
        )
        keys, values = (k, v) if kv_cache is None else (splice_rows(kv_cache[0], k, start),
                                                        splice_rows(kv_cache[1], v, start))
        drop = nn.Dropout(cfg.attention_dropout)
        ctx = softmax_attention(q, keys, values, bias, scale=hd ** -0.5,
                                weights_dropout=lambda e: drop(e, deterministic=deterministic)).reshape(b * l, d)
        return _dense(d, cfg, self.dtype, self.param_dtype, "output")(ctx).reshape(b, l, d), (k, v)


class BertLayer(nn.Module):
    """Post-LN layer: ``(h [B, L, D], bias [B, 1, 1, L], deterministic, collect, kv_cache, start, return_kv) ->
    (h', y)`` (the scan body's ``(carry, y)``; unrolled stacks take ``[0]``), y = h' if ``collect``, this
    layer's (k, v) [B, L, H, hd] if ``return_kv``, else None. ``kv_cache`` / ``start``: the rows are a window
    attending over cached keys (``BertSelfAttention``)."""

    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, bias, deterministic: bool, collect: bool = False, kv_cache=None, start=None,
                 return_kv: bool = False):
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        a, kv = BertSelfAttention(cfg, dt, pdt, name="attention")(h, bias, deterministic, kv_cache, start)
        a = nn.Dropout(cfg.hidden_dropout)(a, deterministic=deterministic)
        h = _ln(cfg, dt, pdt, "attention_ln")(h + a)
        shape = h.shape
        r = h.reshape(-1, shape[-1])  # the feed-forward on [B*L, D] rows: 2-d dots and weight gradients
        f = _activation(cfg.hidden_act)(_dense(cfg.intermediate_size, cfg, dt, pdt, "intermediate")(r))
        f = nn.Dropout(cfg.hidden_dropout)(_dense(cfg.hidden_size, cfg, dt, pdt, "output")(f), deterministic=deterministic)
        h = _ln(cfg, dt, pdt, "output_ln")(h + f.reshape(shape))
        return h, (h if collect else kv if return_kv else None)


class BertEmbeddings(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg, init = self.config, nn.initializers.normal(0.02)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, embedding_init=init)
        self.word_embeddings = nn.Embed(cfg.vocab_size, cfg.hidden_size, **kw)
        self.position_embeddings = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, **kw)
        if cfg.type_vocab_size:
            self.token_type_embeddings = nn.Embed(cfg.type_vocab_size, cfg.hidden_size, **kw)
        self.LayerNorm = _ln(cfg, self.dtype, self.param_dtype, None)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def words(self, input_ids):
        return self.word_embeddings(input_ids)

    def attend(self, x):
        return self.word_embeddings.attend(x)

    def __call__(self, input_ids, inputs_embeds, token_type_ids, position_ids, cond, deterministic):
        cfg = self.config
        e = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
        b, l = e.shape[:2]
        if position_ids is None:
            position_ids = default_position_ids(cfg, input_ids, (b, l))
        e = e + self.position_embeddings(position_ids)
        if cfg.type_vocab_size:
            if token_type_ids is None:
                token_type_ids = jnp.zeros((b, l), jnp.int32)
            e = e + self.token_type_embeddings(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given but the model has type_vocab_size=0")
        if cond is not None:
            e = e + (cond[:, None, :] if cond.ndim == 2 else cond).astype(e.dtype)
        return self.dropout(self.LayerNorm(e), deterministic=deterministic)


def default_position_ids(cfg: BertConfig, input_ids, shape) -> jax.Array:
    """[B, L] int32 position ids as transformers computes them (see module docstring)."""
    b, l = shape
    if cfg.position_offset == 0:
        return jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    pad = cfg.pad_token_id
    if input_ids is None:  # HF: sequential for inputs_embeds
        return jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32) + pad + 1, (b, l))
    mask = (input_ids != pad).astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask + pad


def _key_bias(attention_mask):
    """attention_mask [B, L] (True / 1 = real token) -> additive key mask [B, 1, 1, L] float32."""
    return jnp.where(attention_mask.astype(bool), 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]


def mean_pool(h, mask):
    """h: [B, L, D], mask: [B, L] bool -> [B, D] mean over masked-in positions (0 if none)."""
    m = mask.astype(h.dtype)[..., None]
    return (h * m).sum(1) / jnp.maximum(m.sum(1), 1)


class BertEncoder(nn.Module):
    """BERT / RoBERTa / XLM-R encoder with optional pooler, MLM, classification and length heads.

    ``__call__(input_ids [B, L] int32 | None, attention_mask [B, L] (1/True = real token) | None,
    token_type_ids, position_ids, *, inputs_embeds [B, L, D] | None, cond [B, D] | [B, L, D] | None,
    length_mask [B, L] | None, deterministic=True, output_hidden_states=False) -> dict`` with
    ``last_hidden_state`` [B, L, D]; ``hidden_states`` (tuple of num_layers+1 [B, L, D], embeddings
    first, if asked); ``pooler_output`` [B, D]; ``logits`` [B, L, V] (MLM); ``cls_logits``
    [B, num_labels]; ``length_logits`` [B, length_max + 1] (mean pool over ``length_mask``, default
    ``attention_mask``). Dropout needs ``rngs={"dropout": key}`` when ``deterministic=False``.
    """

    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        self.embeddings = BertEmbeddings(cfg, dt, pdt)
        self.encoder = BertStack(cfg, dt, pdt)
        if cfg.use_pooler:
            self.pooler = BertPooler(cfg, dt, pdt)
        if cfg.mlm_head:
            self.mlm_head = BertMLMHead(cfg, dt, pdt)
        if cfg.num_labels:
            self.classifier = BertClassifier(cfg, dt, pdt)
        if cfg.length_max:
            self.length_head = _dense(cfg.length_max + 1, cfg, dt, pdt, None)

    def with_options(self, options) -> "BertEncoder":
        """This encoder laid out and computed as ``options`` (``models.options.ModelOptions``): scanned or
        unrolled layers, their remat policy, compute and param dtypes."""
        cfg = dataclasses.replace(self.config, scan_layers=options.scan_layers, remat=options.remat)
        return self.clone(config=cfg, dtype=options.compute_dtype, param_dtype=options.param_dtype)

    # -- pieces a task may call with model.apply(params, ..., method=...)
    def embed_tokens(self, input_ids):
        """input_ids [B, L] -> word embeddings [B, L, D] (paper 000's x_0 = EMB(w))."""
        return self.embeddings.words(input_ids)

    def attend_embeddings(self, x):
        """x [..., D] -> x @ E^T [..., V] (tied rounding logits, paper 000)."""
        return self.embeddings.attend(x)

    def mlm_logits(self, hidden):
        """hidden [B, L, D] -> MLM logits [B, L, V]."""
        return self.mlm_head(hidden, self.embeddings.word_embeddings)

    def length_logits(self, hidden, mask):
        """hidden [B, L, D], mask [B, L] -> [B, length_max + 1] (paper 002 length classifier)."""
        return self.length_head(mean_pool(hidden, mask)).astype(jnp.float32)

    def kv_cache(self, input_ids, attention_mask, token_type_ids=None):
        """Every layer's keys and values over the whole row (deterministic): input_ids [B, L], attention_mask
        [B, L] -> (keys, values) [num_layers, B, L, H, hd], the cache ``window_logits`` reads."""
        bias = _key_bias(attention_mask)
        h = self.embeddings(input_ids, None, token_type_ids, None, None, True)
        return self.encoder(h, bias, True, False, return_kv=True)[1]

    def window_logits(self, input_ids, attention_mask, token_type_ids, kv_cache, start, width: int):
        """MLM logits [B, W, V] of the rows ``[start_b, start_b + W)`` (W = ``width``; ``start`` [B] int32 clamped
        to [0, L - W]) of the full rows input_ids [B, L], computing only those rows: at every layer their fresh
        k / v replace the cached ones (``kv_cache`` from ``kv_cache``) and they attend over all L keys, the
        cached ones elsewhere. With a cache made from the same input_ids this equals the full forward's logits
        there (deterministic); with an older one it is Fast-dLLM's approximate cache (Wu et al. 2025).
        Positions / token types are the full row's, sliced."""
        cfg = self.config
        b, l = input_ids.shape
        start = jnp.clip(jnp.asarray(start, jnp.int32), 0, l - width)
        pos = default_position_ids(cfg, input_ids, (b, l))
        cut = lambda a: slice_rows(a, start, width)
        tti = None if token_type_ids is None else cut(token_type_ids)
        h = self.embeddings(cut(input_ids), None, tti, cut(pos), None, True)
        h = self.encoder(h, _key_bias(attention_mask), True, False, kv_cache=kv_cache, start=start)[0]
        return self.mlm_logits(h)

    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        *,
        inputs_embeds=None,
        cond=None,
        length_mask=None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
    ):
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids [B, L] and inputs_embeds [B, L, D]")
        if input_ids is not None:
            check_token_ids(input_ids, cfg.vocab_size)  # values: eager calls only (models/inputs.py)
        b, l = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        if l > cfg.max_position_embeddings - cfg.position_offset:
            raise ValueError(
                f"sequence length {l} exceeds the model's {cfg.max_position_embeddings - cfg.position_offset} positions"
            )
        if attention_mask is None:
            attention_mask = jnp.ones((b, l), bool)
        bias = _key_bias(attention_mask)
        h = self.embeddings(input_ids, inputs_embeds, token_type_ids, position_ids, cond, deterministic)
        h, hidden = self.encoder(h, bias, deterministic, output_hidden_states)
        out = {"last_hidden_state": h}
        if output_hidden_states:
            out["hidden_states"] = hidden
        if cfg.use_pooler:
            out["pooler_output"] = self.pooler(h)
        if cfg.mlm_head:
            out["logits"] = self.mlm_logits(h)
        if cfg.num_labels:
            pooled = out["pooler_output"] if cfg.head_style == "bert" else None
            out["cls_logits"] = self.classifier(h, pooled, deterministic)
        if cfg.length_max:
            pool_mask = attention_mask.astype(bool) if length_mask is None else length_mask
            out["length_logits"] = self.length_logits(h, pool_mask)
        return out


class BertStack(nn.Module):
    """The layers: ``(h [B, L, D], bias, deterministic, output_hidden_states, kv_cache=None, start=None,
    return_kv=False) -> (h, hidden or None)``, unrolled (``layer_{i}``) or, with ``config.scan_layers``, one
    scanned ``layers`` whose per-layer outputs are the hidden states; each layer rematerialised by
    ``config.remat``. ``return_kv``: the second output is every layer's (keys, values) [num_layers, B, L, H, hd]
    instead; ``kv_cache`` (that pair) with ``start`` [B]: h is a window of rows attending over the cache."""

    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, bias, deterministic, output_hidden_states, kv_cache=None, start=None, return_kv=False):
        cfg = self.config
        block = layer_class(BertLayer, remat=cfg.remat, scan=cfg.scan_layers, length=cfg.num_layers,
                            in_axes=(nn.broadcast,) * 3 + (0, nn.broadcast, nn.broadcast), static_argnums=(3, 4, 7))
        if cfg.scan_layers:
            out, ys = block(cfg, self.dtype, self.param_dtype, name="layers")(h, bias, deterministic,
                                                                              output_hidden_states, kv_cache, start,
                                                                              return_kv)
            if return_kv:
                return out, ys
            return out, (h, *(ys[i] for i in range(cfg.num_layers))) if output_hidden_states else None
        hidden, kvs = [h], []
        for i in range(cfg.num_layers):
            kv_i = None if kv_cache is None else (kv_cache[0][i], kv_cache[1][i])
            h, kv = block(cfg, self.dtype, self.param_dtype, name=f"layer_{i}")(h, bias, deterministic, False, kv_i,
                                                                                 start, return_kv)
            hidden.append(h)
            kvs.append(kv)
        if return_kv:
            return h, (jnp.stack([k for k, _ in kvs]), jnp.stack([v for _, v in kvs]))
        return h, tuple(hidden) if output_hidden_states else None


class BertPooler(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        return jnp.tanh(_dense(self.config.hidden_size, self.config, self.dtype, self.param_dtype, "dense")(h[:, 0]))


class BertMLMHead(nn.Module):
    """dense -> act -> LayerNorm -> decoder (tied: h @ E^T) + bias. Logits in float32."""

    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, word_embeddings: nn.Embed):
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        act = _activation(cfg.hidden_act if cfg.head_style == "bert" else "gelu")
        lead = h.shape[:-1]
        h = h.reshape(-1, h.shape[-1])  # [rows, D]: 2-d dots, the bias add fuses into the decoder dot
        h = _ln(cfg, dt, pdt, "layer_norm")(act(_dense(cfg.hidden_size, cfg, dt, pdt, "dense")(h)))
        if cfg.tie_word_embeddings:
            logits = word_embeddings.attend(h)
        else:
            logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=dt, param_dtype=pdt, name="decoder")(h)
        bias = self.param("bias", nn.initializers.zeros, (cfg.vocab_size,), pdt)
        return add_bias(logits, bias).astype(jnp.float32).reshape(*lead, cfg.vocab_size)


class BertClassifier(nn.Module):
    """BERT: dropout(pooler_output) -> dense. RoBERTa: first token -> dense -> tanh -> out_proj."""

    config: BertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, pooled, deterministic):
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        drop = nn.Dropout(cfg.hidden_dropout)
        if cfg.head_style == "bert":
            return _dense(cfg.num_labels, cfg, dt, pdt, "dense")(drop(pooled, deterministic=deterministic)).astype(jnp.float32)
        x = drop(h[:, 0], deterministic=deterministic)
        x = drop(jnp.tanh(_dense(cfg.hidden_size, cfg, dt, pdt, "dense")(x)), deterministic=deterministic)
        return _dense(cfg.num_labels, cfg, dt, pdt, "out_proj")(x).astype(jnp.float32)
