"""Paper 000's losses and OOD scores of text under embedding diffusion (papers.md §1).

The denoiser and the noising space x_0 = s E[w] are ``diffjax.models.text_denoiser``.

* ``l_d``: ``||x0_hat - x_0||^2`` summed over D (noising space), averaged over the masked-in tokens
  (``gaussian.per_example_error(..., "sum_last_mean_tokens")``).
* ``l_c``: the rounding cross-entropy ``-(1/n) sum_i log softmax(k x0_hat_i (s E)^T)[w_i]``: tied logits
  taken in the noising space, where x_0 = s E[w] lives (= ``k s^2 (x0_hat_i / s) E^T``; at ``x0_std = 0``,
  s = 1, the paper's tied logits). k = exp(``rounding_log_scale``), a learnt scalar initialised at 0;
  ``lc_learnt_scale=False`` keeps k = 1. (At the raw scale even a perfect x0_hat gets ~9 nats on MiniLM
  against log V = 10.3: the logits E[w] E^T are too flat to identify the token, so L_c is mostly a token
  prior; at x0_std = 1 (s ~ 18) a perfect x0_hat rounds with near-zero loss.)
* ``make_score_fn``: the score ``score_fn(params, {"tokens", "mask"}, t [B], keys [B]) ->
  {"ld", "lc", "ld_lc"}``, with the score's L_d in the paper's units: on x_0 = E[w] (= the noising-space
  L_d / s^2), so that S_t = L_d + L_c weighs the two terms as paper 000 defines them whatever the noising
  scale (training's L_d stays in the noising space: ``diffusion_loss``). At x0_std = 1 on MiniLM
  (s^2 ~ 330) the noising-space sum is L_d alone to within 1-2%; (+ ``"cos_x0"``, ``"rounding_acc"`` with ``diagnostics=True``) for
  ``diffjax.ood.sweep.make_score_sweep``. The noise of token position l of a row is
  ``normal(fold_in(key, l), [D])``: a row's score depends neither on the other rows nor on how far
  it is padded (the attention mask hides the pads).
* Model-free controls (no denoiser): ``token_norm_score`` (mean ||E[w]||^2) and ``UnigramModel``
  (mean negative log unigram probability under the ID train counts).

* ``rounding_curve``: the model-free rounding accuracy of x_t per t (how much of the input survives),
  ``pick_score_t`` (``choose_score_t_by_rounding`` / ``choose_score_t``): the held-out-ID rules that pick
  the score's t; ``by_t_rows``: the per-t diagnostics of results.json.

Pure functions of params and arrays; the task (``tasks/text_ood.py``) binds them to data and config.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion import gaussian
from diffjax.models.text_denoiser import (TextDenoiser, embedding_matrix, embedding_scale, predict_x0,  # noqa: F401
                                          rounding_logit_scale)
from diffjax.runtime import example_keys

SCORE_NAMES = ("ld", "lc", "ld_lc")
DIAGNOSTIC_NAMES = ("cos_x0", "rounding_acc")


def l_d(x0_hat: jax.Array, x0: jax.Array, mask: jax.Array) -> jax.Array:
    """[B, L, D] x2, mask [B, L] -> [B]: sum over D of the squared error, mean over masked-in tokens."""
    return gaussian.per_example_error(jnp.square(x0_hat - x0), mask, "sum_last_mean_tokens")


def _per_row(one, args, row_batch):
    """``one`` over the rows of ``args`` (a tuple of [B, ...]): a vmap, or a ``lax.map`` of row_batch rows."""
    if row_batch:
        return jax.lax.map(lambda a: one(*a), args, batch_size=int(row_batch))
    return jax.vmap(one)(*args)


def l_c(x0_hat: jax.Array, emb: jax.Array, tokens: jax.Array, mask: jax.Array, *,
        row_batch: int | None = None, logit_scale=1.0) -> jax.Array:
    """Rounding CE: x0_hat [B, L, D] (embedding scale), emb [V, D], tokens [B, L], mask [B, L] -> [B].

    ``-(1/n) sum_i log softmax(k x0_hat_i E^T)[w_i]`` over the n masked-in tokens; k = ``logit_scale``.
    ``row_batch`` bounds the ``[rows, L, V]`` logits with a ``lax.map``.
    """

    def one(x, w, m):  # [L, D], [L], [L] -> scalar
        logits = logit_scale * (x @ emb.T).astype(jnp.float32)
        nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, w[:, None], axis=-1)[:, 0]
        m = m.astype(jnp.float32)
        return jnp.sum(nll * m) / jnp.maximum(jnp.sum(m), 1.0)

    return _per_row(one, (x0_hat, tokens, mask), row_batch)


def rounding_accuracy(x: jax.Array, emb: jax.Array, tokens: jax.Array, mask: jax.Array, *,
                      row_batch: int | None = None) -> jax.Array:
    """Nearest-embedding rounding: x [B, L, D] (embedding scale), emb [V, D] -> [B] fraction of the
    masked-in tokens whose nearest row of E (Euclidean) is the token itself."""
    half_sq = 0.5 * jnp.sum(jnp.square(emb.astype(jnp.float32)), axis=-1)  # [V]

    def one(xr, w, m):  # argmin_v ||x - e_v||^2 = argmax_v (x . e_v - ||e_v||^2 / 2)
        nearest = jnp.argmax((xr @ emb.T).astype(jnp.float32) - half_sq, axis=-1)
        m = m.astype(jnp.float32)
        return jnp.sum((nearest == w) * m) / jnp.maximum(jnp.sum(m), 1.0)

    return _per_row(one, (x, tokens, mask), row_batch)


def token_cosine(x0_hat: jax.Array, x0: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over masked-in tokens of cos(x0_hat_i, x0_i): [B, L, D] x2, [B, L] -> [B]."""
    a, b = x0_hat.astype(jnp.float32), x0.astype(jnp.float32)
    cos = jnp.sum(a * b, -1) / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), 1e-12)
    m = mask.astype(jnp.float32)
    return jnp.sum(cos * m, -1) / jnp.maximum(jnp.sum(m, -1), 1.0)


def position_noise(key: jax.Array, length: int, dim: int) -> jax.Array:
    """[length, dim] standard normal noise; position l from ``fold_in(key, l)`` (padding-independent)."""
    return jax.vmap(lambda l: jax.random.normal(jax.random.fold_in(key, l), (dim,)))(jnp.arange(length))


def diffusion_loss(model: TextDenoiser, params, tokens, mask, rng, *, schedule, ld_weight: float = 1.0,
                   lc_weight: float = 1.0, x0_std: float = 0.0, lc_learnt_scale: bool = True,
                   prediction: str = "x0", dropout: bool = False):
    """Training loss ``ld_weight * L_d + lc_weight * L_c`` with t ~ U{1..T} (papers.md 000), L_d on the
    x0_hat of the network's ``prediction`` (module docstring).

    tokens, mask: [B, L]. Returns ``(loss, {"loss", "l_d", "l_c", "rounding_scale"})``.
    """
    drop_rng, loss_rng = jax.random.split(rng)
    emb = embedding_matrix(params)
    scale = embedding_scale(emb, x0_std)
    x0 = emb[tokens] * scale

    def denoise(x_t, t):
        return model.apply({"params": params}, x_t, t, mask, scale, deterministic=not dropout,
                           rngs={"dropout": drop_rng} if dropout else None)

    _, aux = gaussian.x0_loss(denoise, x0, loss_rng, schedule=schedule, prediction=prediction, mask=mask,
                              reduction="sum_last_mean_tokens")
    ld = jnp.mean(aux["per_example"])
    k = rounding_logit_scale(params, lc_learnt_scale)
    lc = jnp.mean(l_c(aux["x0_hat"] / scale, emb, tokens, mask, logit_scale=k * scale ** 2))
    loss = ld_weight * ld + lc_weight * lc
    return loss, {"loss": loss, "l_d": ld, "l_c": lc, "rounding_scale": k}


def make_score_fn(model: TextDenoiser, schedule, *, x0_std: float = 0.0, lc_learnt_scale: bool = True,
                  prediction: str = "x0", row_batch: int | None = None, diagnostics: bool = False):
    """``score_fn(params, {"tokens": [B, L] int32, "mask": [B, L] bool}, t [B], keys [B]) ->
    {"ld", "lc", "ld_lc": [B]}`` (one x0 prediction from x_t; see module docstring). With
    ``diagnostics``: also ``"cos_x0"`` (``token_cosine(x0_hat, x0)``) and ``"rounding_acc"``
    (nearest-embedding rounding of ``x_t / sqrt(abar_t)``, model-free: how much of the input
    survives at t)."""

    def score_fn(params, inputs, t, keys):
        tokens, mask = inputs["tokens"], inputs["mask"].astype(bool)
        emb = embedding_matrix(params)
        scale = embedding_scale(emb, x0_std)
        x0 = emb[tokens] * scale
        noise = jax.vmap(lambda k: position_noise(k, x0.shape[1], x0.shape[2]))(keys).astype(x0.dtype)
        x_t = gaussian.q_sample(schedule, x0, t, noise)
        x0_hat = predict_x0(model, params, schedule, x_t, t, mask, scale, prediction)
        k = rounding_logit_scale(params, lc_learnt_scale)
        ld = l_d(x0_hat / scale, x0 / scale, mask)  # in the units of x_0 = E[w] (paper 000's L_d)
        lc = l_c(x0_hat / scale, emb, tokens, mask, row_batch=row_batch, logit_scale=k * scale ** 2)
        out = {"ld": ld, "lc": lc, "ld_lc": ld + lc}
        if diagnostics:
            abar = gaussian.coef_at(schedule.alpha_bars, t, x_t)
            out["cos_x0"] = token_cosine(x0_hat, x0, mask)
            out["rounding_acc"] = rounding_accuracy(x_t / (jnp.sqrt(abar) * scale), emb, tokens, mask,
                                                    row_batch=row_batch)
        return out

    return score_fn


def rounding_curve(emb, tokens, mask, ids, ts, schedule, *, x0_std: float, seed: int,
                   row_batch: int | None = None) -> list[float]:
    """Nearest-embedding rounding accuracy of x_t / sqrt(abar_t) per t of ``ts``: model-free, how much of the
    input survives at t. emb [V, D] (the pretrained E), tokens / mask [N, L], ids [N] int32 (the noise of row
    i is keyed by ``fold_in(PRNGKey(seed), ids[i])``, one draw) -> [n_t] mean accuracies."""
    emb = jnp.asarray(emb)
    scale = embedding_scale(emb, x0_std)
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask, bool)
    keys = example_keys(jax.random.PRNGKey(int(seed)), jnp.asarray(ids, jnp.int32))
    noise = jax.vmap(lambda k: position_noise(k, tokens.shape[1], emb.shape[1]))(keys)

    @jax.jit
    def acc_at(t):
        x0 = emb[tokens] * scale
        tt = jnp.full((tokens.shape[0],), t, jnp.int32)
        x_t = gaussian.q_sample(schedule, x0, tt, noise)
        abar = schedule.alpha_bars[t]
        r = rounding_accuracy(x_t / (jnp.sqrt(abar) * scale), emb, tokens, mask, row_batch=row_batch)
        return jnp.mean(r)

    return [float(acc_at(int(t))) for t in ts]


# ----------------------------------------------------------------------------------------------
# The score's timestep: chosen on held-out ID only


def choose_score_t(ts, id_loss, rise: float) -> int:
    """The first t of the grid ``ts`` at which the held-out ID loss ``id_loss [n_t]`` has risen by
    ``rise`` (a fraction) of its total rise over the grid: where ID denoising starts to fail.
    Uses ID data only. A flat or falling curve gives the smallest t."""
    ts, y = [int(t) for t in ts], np.asarray(id_loss, np.float64)
    total = float(np.max(y) - y[0])
    if not np.isfinite(total) or total <= 0:
        return ts[0]
    return ts[int(np.argmax(y - y[0] >= float(rise) * total))]


def choose_score_t_by_rounding(ts, rounding_acc, min_acc: float) -> int:
    """The largest t of the grid ``ts`` at which the nearest-embedding rounding accuracy of x_t on
    held-out ID (``rounding_acc [n_t]``, model-free) is still >= ``min_acc``: the noisiest level at which
    x_t still identifies that fraction of its tokens. Paper 000's mechanism is that OOD loss rises faster
    with t than ID loss, so the score wants the largest t whose input still carries the sentence.
    Uses ID data only; if no t qualifies, the smallest t."""
    ts, acc = [int(t) for t in ts], np.asarray(rounding_acc, np.float64)
    ok = np.flatnonzero(acc >= float(min_acc))
    return ts[int(ok[-1])] if ok.size else ts[0]


def pick_score_t(c, ts, by_t: list[dict]) -> tuple[int, str]:
    """``(score_t, rule in words)`` for the text-OOD config ``c``: ``c.score_t`` when set, else the held-out
    ID rule ``c.score_t_by`` ("rounding": ``choose_score_t_by_rounding``; "rise": ``choose_score_t``) on the
    grid ``ts`` and its ``by_t`` rows (``by_t_rows``). Never reads OOD data."""
    if int(c.score_t):
        return int(c.score_t), "task.score_t (fixed in the config)"
    if c.score_t_by == "rounding":
        acc = float(c.score_t_min_rounding_acc)
        return (choose_score_t_by_rounding(ts, [r["rounding_acc"] for r in by_t], acc),
                f"largest grid t where nearest-embedding rounding of x_t still recovers >= {acc:g} of the "
                f"held-out ID tokens (held-out ID only)")
    rise = float(c.score_t_rise)
    return (choose_score_t(ts, [r["id_loss"] for r in by_t], rise),
            f"first grid t where the held-out ID {c.deploy_score} has risen by {rise:g} of its rise over the "
            f"grid (held-out ID only)")


def by_t_rows(ts, grids: dict, deploy_score: str) -> list[dict]:
    """``[{"t", "cos_x0", "rounding_acc", "id_loss", "ood_loss": {set: mean}}]`` from sweep grids
    ``{"heldout": {name: [n_t, n_s, N]} (with the diagnostics), "ood/<set>": {...}}``."""
    rows = []
    for i, t in enumerate(ts):
        h = grids["heldout"]
        rows.append({"t": int(t), "cos_x0": float(np.mean(h["cos_x0"][i])),
                     "rounding_acc": float(np.mean(h["rounding_acc"][i])),
                     "id_loss": float(np.mean(h[deploy_score][i])),
                     "ood_loss": {k[4:]: float(np.mean(g[deploy_score][i])) for k, g in grids.items()
                                  if k.startswith("ood/")}})
    return rows


# ----------------------------------------------------------------------------------------------
# Model-free controls: scores from the same tokens without the denoiser (higher = more OOD).


def token_norm_score(emb: np.ndarray, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean ||E[w]||^2 over a sentence's masked-in tokens: E [V, D], tokens / mask [N, L] -> [N]."""
    sq = np.sum(np.square(np.asarray(emb, np.float64)), axis=-1)[np.asarray(tokens)]
    m = np.asarray(mask, np.float64)
    return np.sum(sq * m, -1) / np.maximum(np.sum(m, -1), 1.0)


class UnigramModel:
    """Add-one unigram LM of the ID train tokens: ``score`` = mean -log p(w) over a sentence's tokens.

    ``tokens`` / ``mask``: [N, L] (the packed sets; special tokens count like any other token).
    """

    def __init__(self, tokens: np.ndarray, mask: np.ndarray, vocab_size: int):
        counts = np.bincount(np.asarray(tokens)[np.asarray(mask, bool)], minlength=vocab_size).astype(np.float64)
        self.log_p = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)

    def score(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        m = np.asarray(mask, np.float64)
        return -np.sum(self.log_p[np.asarray(tokens)] * m, -1) / np.maximum(np.sum(m, -1), 1.0)
