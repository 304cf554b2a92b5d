"""The denoiser of AR2Diff (paper 001, ``tasks/ar2diff.py``): the decoder-only model (Llama family) or T5
built from ``config.task`` (or a pretrained model's architecture), and the pieces the stages change
around it: the diffusion attention mask (full, or DiffuLLaMA's annealing from the prefix-LM mask),
the logit shift, the target region, and T5's encoder / decoder views of a packed row.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.models import llama as llama_lib
from diffjax.models import t5 as t5_lib
from diffjax.models.options import ModelOptions

# The tensor-parallel rule table of each arch (Task.sharding_rules).
SHARDING_RULES = {"decoder": llama_lib.SHARDING_RULES, "encoder_decoder": t5_lib.SHARDING_RULES}


def anneal_ratio(step, anneal_steps: int):
    """DiffuLLaMA's attention-annealing ratio: min(1, (step + 1) / anneal_steps); 1 when anneal_steps <= 0."""
    if anneal_steps <= 0:
        return jnp.ones((), jnp.float32)
    return jnp.minimum(1.0, (jnp.asarray(step, jnp.float32) + 1.0) / float(anneal_steps))


def diffusion_attention_mask(prompt_length: jax.Array, length: int, ratio=None, rng=None) -> jax.Array:
    """Visibility mask [B, 1, L, L] bool of the diffusion stages (True = query row may see key column).

    ``ratio`` None (or 1): fully bidirectional over every slot (prompt and target region).
    Otherwise (annealing): the prefix-LM mask (every slot sees the prompt; the target causally) OR an
    [L, L] Bernoulli(ratio) draw shared by the batch (ratio 0 = the prefix-LM mask, 1 = full).
    """
    prompt_length = jnp.asarray(prompt_length, jnp.int32)
    B = prompt_length.shape[0]
    slots = jnp.arange(length, dtype=jnp.int32)
    if ratio is None:
        return jnp.ones((B, 1, length, length), bool)
    base = llama_lib.make_attention_mask("prefix", slots, slots, None, prompt_length)
    extra = jax.random.uniform(rng, (length, length)) < ratio
    return base | extra[None, None]


def shift_logits(logits: jax.Array) -> jax.Array:
    """Logit shift (DiffuLLaMA): slot i gets the logits computed at slot i - 1 ([B, L, V]; slot 0 keeps its own)."""
    return jnp.concatenate([logits[:, :1], logits[:, :-1]], axis=1)


def target_region(prompt_length: jax.Array, length: int) -> jax.Array:
    """[B, L] bool: slots >= prompt_length (the generated part, PAD after the end included)."""
    return jnp.arange(length)[None, :] >= jnp.asarray(prompt_length)[:, None]


def model_options(cfg, options: ModelOptions | None) -> ModelOptions:
    """The run's ``ModelOptions`` (default: fp32, unrolled, no remat), where the older ``task.remat=True``
    still means ``remat="full"`` when the top-level ``config.remat`` is "none"."""
    options = options or ModelOptions()
    if cfg.remat and options.remat == "none":
        options = dataclasses.replace(options, remat="full")
    return options


def build_model(cfg, arch: str, diffusion: bool, source=None, source_name: str = "", options=None):
    """The model of ``arch`` ("decoder" | "encoder_decoder"): ``source`` (a pretrained model read from
    ``source_name``; its weights come through init_from) or one built from ``cfg.model``, laid out and
    computed as ``model_options(cfg, options)``; T5's decoder attention bidirectional in the diffusion
    stages, causal in stage 1."""
    if source is not None:
        model = source
    else:
        fields = dict(cfg.model.items()) if cfg.model is not None else {}
        model = llama_lib.Llama(llama_lib.LlamaConfig(**fields)) if arch == "decoder" else t5_lib.T5(t5_lib.T5Config(**fields))
    if arch == "decoder":
        if not isinstance(model, llama_lib.Llama):
            raise ValueError(f"arch='decoder' needs a Llama/Qwen2/Mistral model; {source_name} is {type(model).__name__}")
        return model.with_options(model_options(cfg, options))
    if not isinstance(model, t5_lib.T5):
        raise ValueError(f"arch='encoder_decoder' needs a T5 model; {source_name} is {type(model).__name__}")
    model = model.with_options(model_options(cfg, options))
    return t5_lib.with_decoder_attention(model, "bidirectional" if diffusion else "causal")


def t5_views(batch, target_length: int, pad_id: int):
    """Encoder ids / mask [B, L] (prompt only) and the target region y [B, T], y_valid [B, T] of packed rows."""
    tokens, pl = jnp.asarray(batch["tokens"]), jnp.asarray(batch["prompt_length"])
    L, T = tokens.shape[1], int(target_length)
    enc_mask = jnp.arange(L)[None] < pl[:, None]
    enc_ids = jnp.where(enc_mask, tokens, pad_id)
    idx = pl[:, None] + jnp.arange(T)[None]
    y = jnp.where(idx < L, jnp.take_along_axis(tokens, jnp.clip(idx, 0, L - 1), axis=1), pad_id)
    y_valid = idx < (pl + jnp.asarray(batch["target_length"]))[:, None]
    return enc_ids, enc_mask, y.astype(jnp.int32), y_valid


def t5_logits_fn(model, params, enc_ids, enc_mask):
    """T5's denoiser over the target region: the encoder run once on the prompt, then
    ``logits_fn(x [B', T] int, t) -> [B', T, V]`` (encoder output broadcast to B')."""
    enc = model.apply({"params": params}, enc_ids, enc_mask, method=t5_lib.T5.encode)

    def logits_fn(x, t):
        del t
        e = jnp.broadcast_to(enc, (x.shape[0],) + enc.shape[1:])
        m = jnp.broadcast_to(enc_mask, (x.shape[0],) + enc_mask.shape[1:])
        return model.apply({"params": params}, x, e, m, method=t5_lib.T5.decode)

    return logits_fn
