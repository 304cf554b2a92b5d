"""Paper 000's embedding-diffusion denoiser, its losses and its OOD score (papers.md §1).

* ``TextDenoiser``: a BERT-family encoder (``diffjax.models.bert.BertEncoder``) that takes the
  noised token embeddings ``x_t [B, L, D]`` through ``inputs_embeds`` (position / token-type
  embeddings kept), a timestep embedding ``sinusoidal(t, D) -> Dense(mult D) -> SiLU -> Dense(D)``
  added to every token's input (``cond``), and an x0 head ``Dense(D)`` on the last hidden state.
  Params: ``{"encoder": BertEncoder params, "time_mlp": ..., "x0_head": ...}``; the word-embedding
  matrix ``E`` (``encoder/embeddings/word_embeddings/embedding [V, D]``) gives x_0 = E[w] and the
  tied rounding logits.
* ``l_d``: ``||x0_hat - x_0||^2`` summed over D, averaged over the masked-in tokens
  (``gaussian.per_example_error(..., "sum_last_mean_tokens")``).
* ``l_c``: the rounding cross-entropy ``-(1/n) sum_i log softmax(x0_hat_i E^T)[w_i]`` over the
  masked-in tokens (``row_batch`` bounds the ``[rows, L, V]`` logits with a ``lax.map``).
* ``make_score_fn``: the score ``score_fn(params, {"tokens", "mask"}, t [B], keys [B]) ->
  {"ld", "lc", "ld_lc"}`` for ``diffjax.ood.sweep.make_score_sweep``. The noise of token position
  l of a row is ``normal(fold_in(key, l), [D])``: a row's score depends neither on the other rows
  nor on how far it is padded (the attention mask hides the pads).

Pure functions of params and arrays; the task (``text_ood.py``) binds them to data and config.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.diffusion import gaussian
from diffjax.models.bert import BertConfig, BertEncoder, mean_pool
from diffjax.models.embeddings import TimestepMLP

SCORE_NAMES = ("ld", "lc", "ld_lc")


class TextDenoiser(nn.Module):
    """``(x_t [B, L, D], t [B] int32, mask [B, L] bool) -> x0_hat [B, L, D]`` (see module docstring)."""

    config: BertConfig
    time_mult: int = 4

    @nn.compact
    def __call__(self, x_t, t, mask, deterministic: bool = True):
        d = self.config.hidden_size
        cond = TimestepMLP(embed_dim=d, hidden_dim=self.time_mult * d, out_dim=d, name="time_mlp")(t)
        enc = BertEncoder(self.config, name="encoder")
        if self.is_initializing():  # create E (only read through params afterwards: x_0 = E[w], tied logits)
            enc.embed_tokens(jnp.zeros((1, 1), jnp.int32))
        h = enc(attention_mask=mask, inputs_embeds=x_t, cond=cond, deterministic=deterministic)["last_hidden_state"]
        return nn.Dense(d, kernel_init=nn.initializers.normal(0.02), name="x0_head")(h)


def embedding_matrix(params) -> jax.Array:
    """The (tied) word-embedding matrix ``E: [V, D]`` of the denoiser's params."""
    return params["encoder"]["embeddings"]["word_embeddings"]["embedding"]


def l_d(x0_hat: jax.Array, x0: jax.Array, mask: jax.Array) -> jax.Array:
    """[B, L, D] x2, mask [B, L] -> [B]: sum over D of the squared error, mean over masked-in tokens."""
    return gaussian.per_example_error(jnp.square(x0_hat - x0), mask, "sum_last_mean_tokens")


def l_c(x0_hat: jax.Array, emb: jax.Array, tokens: jax.Array, mask: jax.Array, *,
        row_batch: int | None = None) -> jax.Array:
    """Rounding CE: x0_hat [B, L, D], emb [V, D], tokens [B, L] int, mask [B, L] -> [B] (mean over tokens)."""

    def one(args):  # [L, D], [L], [L] -> scalar
        x, w, m = args
        logits = (x @ emb.T).astype(jnp.float32)
        nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, w[:, None], axis=-1)[:, 0]
        m = m.astype(jnp.float32)
        return jnp.sum(nll * m) / jnp.maximum(jnp.sum(m), 1.0)

    if row_batch:
        return jax.lax.map(one, (x0_hat, tokens, mask), batch_size=int(row_batch))
    return jax.vmap(lambda *a: one(a))(x0_hat, tokens, mask)


def position_noise(key: jax.Array, length: int, dim: int) -> jax.Array:
    """[length, dim] standard normal noise; position l from ``fold_in(key, l)`` (padding-independent)."""
    return jax.vmap(lambda l: jax.random.normal(jax.random.fold_in(key, l), (dim,)))(jnp.arange(length))


def diffusion_loss(model: TextDenoiser, params, tokens, mask, rng, *, schedule, ld_weight: float = 1.0,
                   lc_weight: float = 1.0, dropout: bool = False):
    """Training loss ``ld_weight * L_d + lc_weight * L_c`` with t ~ U{1..T} (papers.md 000).

    tokens, mask: [B, L]. Returns ``(loss, {"loss", "l_d", "l_c"})``.
    """
    drop_rng, loss_rng = jax.random.split(rng)
    emb = embedding_matrix(params)
    x0 = emb[tokens]

    def denoise(x_t, t):
        return model.apply({"params": params}, x_t, t, mask, deterministic=not dropout,
                           rngs={"dropout": drop_rng} if dropout else None)

    _, aux = gaussian.x0_loss(denoise, x0, loss_rng, schedule=schedule, prediction="x0", mask=mask,
                              reduction="sum_last_mean_tokens")
    ld = jnp.mean(aux["per_example"])
    lc = jnp.mean(l_c(aux["x0_hat"], emb, tokens, mask))
    loss = ld_weight * ld + lc_weight * lc
    return loss, {"loss": loss, "l_d": ld, "l_c": lc}


def make_score_fn(model: TextDenoiser, schedule, *, row_batch: int | None = None):
    """``score_fn(params, {"tokens": [B, L] int32, "mask": [B, L] bool}, t [B], keys [B]) ->
    {"ld", "lc", "ld_lc": [B]}`` (one x0 prediction from x_t; see module docstring)."""

    def score_fn(params, inputs, t, keys):
        tokens, mask = inputs["tokens"], inputs["mask"].astype(bool)
        emb = embedding_matrix(params)
        x0 = emb[tokens]
        noise = jax.vmap(lambda k: position_noise(k, x0.shape[1], x0.shape[2]))(keys).astype(x0.dtype)
        x_t = gaussian.q_sample(schedule, x0, t, noise)
        x0_hat = model.apply({"params": params}, x_t, t, mask)
        ld, lc = l_d(x0_hat, x0, mask), l_c(x0_hat, emb, tokens, mask, row_batch=row_batch)
        return {"ld": ld, "lc": lc, "ld_lc": ld + lc}

    return score_fn


def pooled_features(encoder: BertEncoder, enc_params, tokens, mask, cond=None) -> jax.Array:
    """Mean-pooled last hidden states of a BERT encoder on clean tokens: [B, L] -> [B, D] float32."""
    h = encoder.apply({"params": enc_params}, tokens, mask, cond=cond)["last_hidden_state"]
    return mean_pool(h.astype(jnp.float32), mask.astype(bool))
