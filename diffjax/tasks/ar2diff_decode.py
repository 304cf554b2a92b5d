"""Decoding for AR2Diff (paper 001, ``tasks/ar2diff.py``): the user's prompts packed into rows, and the one
jitted decoding program of the configured decoder (``diffusion/decoders.py``):

* ``"refine"``: paper 001's refinement from uniform random tokens (``num_steps`` K, ``temperature``,
  ``num_samples`` N in parallel, keep the highest log-prob; ``iterative_refinement_sample``);
* ``"topk"`` / ``"ancestral"`` / ``"threshold"`` / ``"block"``: the absorbing samplers, from ``mask_id``
  (objective ``"masked"``); ``"block"`` with ``cache`` "prefix" / "dual" runs the decoder-only model on a window
  over a K/V cache (``models/llama.kv_cache`` / ``window_logits``, ``diffusion/cached_decoding.py``);
* ``"ar"``: the model's own left-to-right decoding, KV-cached for the decoder-only model
  (``models/llama.generate``); T5: greedy without a cache.

Rows (decoder-only): ``BOS prompt | PAD ...``; the target region (every slot after the prompt) is
generated with full attention. Encoder-decoder: the prompt feeds the encoder, the ``target_length``
decoder slots are generated. Per-example keys ``runtime.example_keys(rng, example index)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion import decoders
from diffjax.diffusion.cached_decoding import CachedLogits
from diffjax.models import llama as llama_lib
from diffjax.models import t5 as t5_lib
from diffjax.runtime import example_keys
from diffjax.tasks import prompts as prompt_lib


def host_inputs(prompts_ids: list[list[int]], length: int, pad_id: int) -> dict:
    """Decoding inputs from prompt ids (BOS/SEP included): tokens [N, L] (prompt then PAD), prompt_length [N],
    target_length [N], and left-padded prompt_ids / prompt_mask [N, P] for AR decoding."""
    L, n = length, len(prompts_ids)
    tokens = np.full((n, L), pad_id, np.int32)
    pmax = max(len(p) for p in prompts_ids)
    prompt_ids = np.full((n, pmax), pad_id, np.int32)
    prompt_mask = np.zeros((n, pmax), bool)
    for i, p in enumerate(prompts_ids):
        tokens[i, :len(p)] = p
        prompt_ids[i, pmax - len(p):] = p
        prompt_mask[i, pmax - len(p):] = True
    pl = np.asarray([len(p) for p in prompts_ids], np.int32)
    return {"tokens": tokens, "prompt_length": pl, "target_length": (L - pl).astype(np.int32),
            "prompt_ids": prompt_ids, "prompt_mask": prompt_mask}


def fit_prompts(task, prompts: list[str]) -> tuple[list[list[int]], list[dict | None]]:
    """User prompts -> (row ids: start + the prompt's last tokens + sep, per prompt the cut record of
    ``tasks.prompts.truncation``). A prompt keeps at most ``buckets[-1] - min_target_slots`` slots (specials
    included), so ``min_target_slots`` are left for the output; a cut is reported, never silent, and a
    row that would leave the prompt no token is an error naming the prompt."""
    cfg, fmt = task.cfg, task.fmt
    slots = max(2, int(cfg.min_target_slots))
    budget = task.length - slots
    out, cuts = [], []
    for i, (text, ids) in enumerate(zip(prompts, task.tok.encode(prompts))):
        head = [j for j in (fmt.start_id,) if j is not None]
        sep = [fmt.sep_id] if fmt.sep_id is not None and ids else []
        room = budget - len(head) - len(sep)
        if ids and room < 1:
            raise prompt_lib.no_room(i, text, len(ids), (
                f"config.task.buckets={tuple(cfg.buckets)} with task.min_target_slots={slots} output slots "
                f"leaves {room} slot(s) for it; lower --config.task.min_target_slots or raise the row length "
                f"(the last of --config.task.buckets)"))
        kept = ids[len(ids) - room:] if len(ids) > room else list(ids)
        out.append(head + kept + sep)
        cuts.append(prompt_lib.truncation(len(ids), len(kept)))
    return out, cuts


def trajectory(task, steps, inputs: dict, i: int) -> dict:
    """generate.json's ``--show_steps`` fields of row ``i``: refine: ``"chains"`` (each parallel chain's text
    and log-prob, ``steps`` = (tokens [N, K, L'], scores [N, K])), the keep-best choice; absorbing:
    ``"steps"`` (the text after every step, ``steps`` = [N, S, L'])."""
    one = {"prompt_length": inputs["prompt_length"][i:i + 1]}
    if task.decoder == "refine":
        return {"chains": [{"output": task.texts(one, steps[0][i][j:j + 1])[0], "log_prob": float(steps[1][i][j])}
                           for j in range(steps[0].shape[1])]}
    return {"steps": [task.texts(one, steps[i][k:k + 1])[0] for k in range(steps.shape[1])]}


def denoise_one(task, logits_fn, x, gen, key, *, show: bool):
    """One example: x [L'] int, gen [L'] bool -> (tokens [L'], score [], the trajectory for show_steps:
    refine: (all chains [N, L'], their scores [N]); absorbing: the tokens after every step [K, L'])."""
    entry, kw = decoders.decoder(task.decoder), decoders.sampler_kwargs(task.decoder, task.cfg)
    if entry.corruption == "uniform":
        tok, score, all_tok, all_score = entry.sampler(logits_fn, x[None], key, vocab_size=task.vocab_size,
                                                       corruptible=gen[None], return_all=True, **kw)
        return tok[0], score[0], (all_tok[0], all_score[0]) if show else None
    out = entry.sampler(logits_fn, x[None], key, mask_id=task.mask_id, corruptible=gen[None], return_history=show, **kw)
    if show:
        tok, hist = out
        return tok[0], jnp.zeros(()), hist[:, 0]
    return out[0], jnp.zeros(()), None


def ar_decode(task, params, batch):
    """Greedy left-to-right decoding: batch (``host_inputs``) -> tokens [B, max_new_tokens] (decoder-only, KV
    cache) or [B, target_length] (T5)."""
    cfg = task.cfg
    if task.arch == "decoder":
        return llama_lib.generate(task.model, params, batch["prompt_ids"], batch["prompt_mask"],
                                  max_new_tokens=int(cfg.max_new_tokens), eos_token_id=task.fmt.end_id,
                                  pad_token_id=task.pad_id, prefix_lm=cfg.ar_attention == "prefix", temperature=0.0)
    enc_ids, enc_mask, y, _ = task.t5_views(batch)
    start = task.model.config.decoder_start_token_id
    logits_fn = task.t5_logits_fn(params, enc_ids, enc_mask)

    def body(i, y):  # greedy, no cache: the causal decoder makes slot i depend on slots < i only
        logits = logits_fn(t5_lib.shift_right(y, start, task.pad_id), None)
        return y.at[:, i].set(jnp.argmax(logits[:, i], -1).astype(jnp.int32))

    return jax.lax.fori_loop(0, y.shape[1], body, jnp.full_like(y, task.pad_id))


def decode_program(task, show: bool = False):
    """The jitted ``(params, batch, index, rng) -> {"tokens", "score"[, "steps"]}`` of ``task.decoder``."""

    def diffusion_one(params, tokens, pl, tlen, key):
        if task.arch == "decoder":
            L = tokens.shape[0]
            gen = jnp.arange(L) >= pl
            full = jnp.ones((1, 1, L, L), bool)

            def logits_fn(x, t):
                del t
                return task.decoder_logits(params, x, full)

            if task.cfg.cache != "none":  # the K/V cache (config validation: decoder-only, no logit shift)
                logits_fn = CachedLogits(
                    logits_fn, lambda x: llama_lib.kv_cache(task.model, params, x, full),
                    lambda x, start, width, c: llama_lib.window_logits(task.model, params, x, full, c, start, width))
            return denoise_one(task, logits_fn, tokens, gen, key, show=show)
        b = {"tokens": tokens[None], "prompt_length": pl[None], "target_length": tlen[None]}
        enc_ids, enc_mask, y, _ = task.t5_views(b)
        logits_fn = task.t5_logits_fn(params, enc_ids, enc_mask)
        return denoise_one(task, logits_fn, y[0], jnp.ones_like(y[0], bool), key, show=show)

    def fn(params, batch, index, rng):
        if decoders.decoder(task.decoder).sampler is None:
            return {"tokens": ar_decode(task, params, batch)}
        tok, score, extra = jax.vmap(diffusion_one, in_axes=(None, 0, 0, 0, 0))(
            params, batch["tokens"], batch["prompt_length"], batch["target_length"], example_keys(rng, index))
        out = {"tokens": tok, "score": score}
        if show:
            out["steps"] = extra
        return out

    return jax.jit(fn)
