"""Paper 000's embedding-diffusion denoiser (papers.md §1): a Flax module and the readers of its params.

* **Noising space.** x_0 = s E[w] with ``s = embedding_scale(E, x0_std)`` = ``x0_std / std(E)``
  (stop-gradient; ``x0_std = 0``: s = 1, the paper's raw embeddings). Pretrained word embeddings
  are small (MiniLM: per-element std 0.056, token norm ~1.1) against eps ~ N(0, I) (norm sqrt(D)):
  at the raw scale nearest-embedding rounding of x_t keeps 95% of tokens at t = 50 and none from
  t = 500, so most of 1..T would be pure noise. Diffusion-LM / CDCD / Plaid scale x_0 to a known
  per-dimension variance first; ``x0_std = 1`` makes x_0 unit-variance per dimension.
* ``TextDenoiser``: a BERT-family encoder (``diffjax.models.bert.BertEncoder``) reads
  ``x_t / s [B, L, D]`` through ``inputs_embeds`` (at t = 0 exactly the pretrained E[w]; position /
  token-type embeddings kept) plus a timestep conditioning ``time_proj(time_mlp(t))`` added to every
  token before the embedding LayerNorm: ``sinusoidal(t, D) -> Dense(mult D) -> SiLU -> Dense(D)``
  then a **zero-initialised** ``Dense(D)`` (adaLN-zero practice: at init t contributes nothing, so
  the timestep cannot drown the token signal; it grows only as training finds it useful). The x0
  head ``Dense(D)`` reads the LayerNormed hidden states (per-element ~1) and predicts x0_hat directly
  in the noising space (per-element std x0_std): no factor s on the output. (Predicting x0_hat / s
  and multiplying by s ~ 18 made the random head's output ~8x the data at init, L_d 3109 against
  388 for the mean embedding; the first updates then shrank the head to the mean, cos(x0_hat, x0)
  0.22 at every t after 25 steps: the collapse measured in issue 23.)
  Params: ``{"encoder", "time_mlp", "time_proj", "x0_head", "rounding_log_scale"}``; the word
  embeddings ``E`` (``encoder/embeddings/word_embeddings/embedding [V, D]``) give x_0 and the tied
  rounding logits.
* ``predict_x0``: x0_hat from the network's output read as an x0 / v / eps prediction;
  ``pooled_features``: mean-pooled hidden states of a BERT encoder (the feature baselines).

The losses and OOD scores built on it are ``diffjax.ood.text_scores``; the task is ``tasks/text_ood.py``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.diffusion import gaussian
from diffjax.models.bert import BertConfig, BertEncoder, mean_pool
from diffjax.models.embeddings import TimestepMLP


class TextDenoiser(nn.Module):
    """``(x_t [B, L, D], t [B] int32, mask [B, L] bool, scale) -> x0_hat [B, L, D]`` (module docstring).

    ``x_t`` and the output are in the noising space (x_0 = scale * E[w]); ``scale``: a scalar. ``dtype``:
    the encoder's and x0 head's compute dtype (the output is float32), ``param_dtype`` their params'.
    """

    config: BertConfig
    time_mult: int = 4
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        d, dt, pdt = self.config.hidden_size, self.dtype, self.param_dtype
        self.time_mlp = TimestepMLP(embed_dim=d, hidden_dim=self.time_mult * d, out_dim=d, param_dtype=pdt)
        self.time_proj = nn.Dense(d, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros,
                                  param_dtype=pdt)
        self.encoder = BertEncoder(self.config, dtype=dt, param_dtype=pdt)
        self.x0_head = nn.Dense(d, kernel_init=nn.initializers.normal(0.02), dtype=dt, param_dtype=pdt)
        self.rounding_log_scale = self.param("rounding_log_scale", nn.initializers.zeros, ())

    def time_cond(self, t) -> jax.Array:
        """t [B] -> [B, D]: the conditioning added to every token's input (0 at init)."""
        return self.time_proj(self.time_mlp(t))

    def __call__(self, x_t, t, mask, scale=1.0, deterministic: bool = True):
        if self.is_initializing():  # create E (only read through params afterwards: x_0 = E[w], tied logits)
            self.encoder.embed_tokens(jnp.zeros((1, 1), jnp.int32))
        h = self.encoder(attention_mask=mask, inputs_embeds=x_t / scale, cond=self.time_cond(t),
                         deterministic=deterministic)["last_hidden_state"]
        return self.x0_head(h).astype(jnp.float32)



def embedding_matrix(params) -> jax.Array:
    """The (tied) word-embedding matrix ``E: [V, D]`` of the denoiser's params."""
    return params["encoder"]["embeddings"]["word_embeddings"]["embedding"]



def embedding_scale(emb: jax.Array, x0_std: float) -> jax.Array:
    """The scalar s of x_0 = s E[w]: ``x0_std / std(E)`` (stop-gradient), or 1 when ``x0_std == 0``."""
    if not x0_std:
        return jnp.float32(1.0)
    return jax.lax.stop_gradient(jnp.float32(x0_std) / jnp.std(emb.astype(jnp.float32)))



def rounding_logit_scale(params, learnt: bool = True) -> jax.Array:
    """k = exp(``rounding_log_scale``) of the rounding logits (1 when not ``learnt``: the paper's tied logits)."""
    if not learnt or "rounding_log_scale" not in params:
        return jnp.float32(1.0)
    return jnp.exp(params["rounding_log_scale"].astype(jnp.float32))



def predict_x0(model: TextDenoiser, params, schedule, x_t, t, mask, scale, prediction: str = "x0",
               **kwargs) -> jax.Array:
    """x0_hat [B, L, D] from x_t [B, L, D] at t [B] (>= 1): the denoiser's output read as ``prediction``
    ("x0": x0_hat itself, paper 000; "v": x0_hat = sqrt(abar) x_t - sqrt(1 - abar) v_hat, or "eps")."""
    pred = model.apply({"params": params}, x_t, t, mask, scale, **kwargs)
    return gaussian.x0_eps_from_prediction(schedule, x_t, t, pred, prediction)[0]



def pooled_features(encoder: BertEncoder, enc_params, tokens, mask, cond=None) -> jax.Array:
    """Mean-pooled last hidden states of a BERT encoder on clean tokens: [B, L] -> [B, D] float32."""
    h = encoder.apply({"params": enc_params}, tokens, mask, cond=cond)["last_hidden_state"]
    return mean_pool(h.astype(jnp.float32), mask.astype(bool))
