"""Generation for paper 002's masked diffusion LM: prompts packed into ``gen_length`` rows (``pack_prompts``),
the decoder's options from the config (``decode_options``), length choice, the jitted decoding program over a
batch of prompts, and the text of a trajectory (``--show_steps``). Used by ``diffjax.tasks.masked_lm``.

One example (vmapped over the batch, with its own key ``fold_in(rng, global index)`` so outputs do not
depend on the mesh or the batch split) is ``[CLS] prompt [SEP]`` at positions ``< prompt_length``
followed by the target region:

* ``length_mode="head"`` (papers.md 002 "Length"): the length head reads the prompt alone
  (``length_inputs``) and the ``length_beam`` most likely target lengths m (counting the closing
  [SEP], 2 <= m <= min(length_max, L - prompt_length)) are decoded side by side: m - 1 [MASK]s then a
  fixed [SEP]. ``length_select`` picks the candidate kept:

  - ``"decode_scores"`` (default; the authors' length beam, yegcjs/DiffusionLLM ``score_select`` over
    ``finalized_hypos``): the best mean of the *decode-time* scores, the log-prob each generated token
    had when it was predicted from [MASK] (the decoder's ``return_scores``). No extra model call.
  - ``"rescore"``: the best mean log-prob of the finished sequence re-scored with nothing masked (one
    more forward pass per candidate, counted in ``decoder_calls``). The RDM loss never trains
    predictions at unmasked inputs, so this is a diffjax option, not the paper's rule.

  Ties go to the more likely length (the first candidate), as ``np.argmax`` in the authors' code.
* ``length_mode="fixed"``: every position after the prompt is generated (the closing [SEP] too) and
  the text is cut at the first [SEP] / [PAD] (instruction tasks, papers.md 002).

``model_fn(x [K, L], attention [K, L], segment [K, L]) -> logits [K, L, V]`` and
``length_fn(x [1, L], attention [1, L]) -> [1, length_max + 1]`` are closures over the params.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.data.text import Packer, TextExamples
from diffjax.data.text.cache import RaggedTokens, TokenizedExamples, tokenize
from diffjax.data.text.packing import plan_lengths
from diffjax.diffusion import decoders
from diffjax.diffusion.cached_decoding import CachedLogits
from diffjax.diffusion.decoders import unmask_sample
from diffjax.diffusion.masked import exclude_token_logit, token_log_probs
from diffjax.runtime import example_keys
from diffjax.tasks import prompts as prompt_lib
from diffjax.tasks.textgen_task import cut_at


LENGTH_MODES = ("head", "fixed")
LENGTH_SELECT = ("decode_scores", "rescore")


def select_candidate(scores, gen):
    """The length beam's choice: argmax over candidates of the mean of ``scores`` [K, L] over the generated
    positions ``gen`` [K, L] (first on ties) -> [] int32 index."""
    mean = jnp.sum(jnp.where(gen, scores, 0.0), -1) / jnp.maximum(jnp.sum(gen, -1), 1)
    return jnp.argmax(mean).astype(jnp.int32)


def length_inputs(tokens, prompt_length, pad_id):
    """The prompt alone: tokens [.., L] with pads after ``prompt_length`` and its attention mask."""
    pos = jnp.arange(tokens.shape[-1])
    att = pos < prompt_length[..., None]
    return jnp.where(att, tokens, pad_id), att


def decode_one(model_fn: Callable, length_fn: Callable | None, tokens, prompt_length, key, *, mask_id: int,
               sep_id: int, pad_id: int, decoder: str, decoder_kwargs: dict, length_mode: str, length_beam: int,
               length_max: int, return_history: bool, banned_ids: tuple = (), length_select: str = "decode_scores",
               cached_model: tuple | None = None):
    """One example: tokens [L] (prompt part used), prompt_length [] -> dict (see ``decode_batch``).
    ``banned_ids``: token ids never generated (their logits are -inf at every position);
    ``length_select``: "decode_scores" | "rescore" (module docstring); ``cached_model``: for a decoder with a
    K/V cache (``decoder_kwargs["cache"]``), ``(kv_fn(x, attention, segment) -> cache, window_fn(x, attention,
    segment, cache, start [K], width) -> [K, width, V])`` (``diffusion/cached_decoding.CachedLogits``)."""
    if length_select not in LENGTH_SELECT:
        raise ValueError(f"length_select={length_select!r}: choose one of {LENGTH_SELECT}")
    L = tokens.shape[-1]
    pos = jnp.arange(L)
    room = L - prompt_length
    if length_mode == "head":
        x_src, att_src = length_inputs(tokens[None], prompt_length[None], pad_id)
        ll = length_fn(x_src, att_src)[0]  # [length_max + 1]
        m = jnp.arange(ll.shape[0])
        ll = jnp.where((m >= 2) & (m <= jnp.minimum(length_max, room)), ll, -jnp.inf)
        _, lengths = jax.lax.top_k(ll, length_beam)  # [K]
        length_pred = lengths[0]
        end = prompt_length + lengths - 1  # [K]: position of the fixed closing [SEP] (m counts it)
        gen = (pos[None] >= prompt_length) & (pos[None] < end[:, None])
        x_init = jnp.where(pos[None] < prompt_length, tokens[None], jnp.where(pos[None] == end[:, None], sep_id, pad_id))
        att = pos[None] <= end[:, None]
    else:
        length_pred = room
        gen = jnp.broadcast_to(pos >= prompt_length, (1, L))
        x_init = jnp.where(pos < prompt_length, tokens, pad_id)[None]
        att = jnp.ones((1, L), bool)
    K = x_init.shape[0]
    segment = (pos[None] >= prompt_length).astype(jnp.int32) * att

    def ban(logits):
        return logits.at[..., jnp.asarray(banned_ids)].set(-jnp.inf) if banned_ids else logits

    def logits_fn(x, t):
        return ban(model_fn(x, att, segment))

    if decoder_kwargs.get("cache", "none") != "none":
        if cached_model is None:
            raise ValueError(f"cache={decoder_kwargs['cache']!r} needs the model's K/V cache functions (cached_model)")
        kv_fn, window_fn = cached_model
        logits_fn = CachedLogits(logits_fn, lambda x: kv_fn(x, att, segment),
                                 lambda x, start, width, c: ban(window_fn(x, att, segment, c, start, width)))

    kw = dict(decoder_kwargs)
    want_calls = decoder in ("threshold", "block")
    out = unmask_sample(decoder, logits_fn, x_init.astype(jnp.int32), key, mask_id=mask_id, corruptible=gen,
                           return_history=return_history, return_scores=True,
                           **({"return_num_calls": True} if want_calls else {}), **kw)
    x = out[0]
    decode_scores = out[1 + int(return_history)]  # [K, L]: log-prob of each token when it was unmasked
    calls = out[-1] if want_calls else jnp.full((K,), int(kw.get("num_steps", 1)), jnp.int32)
    if K > 1:  # length beam
        if length_select == "rescore":  # one more pass per candidate, nothing masked
            scores = token_log_probs(exclude_token_logit(logits_fn(x, jnp.zeros((K,))), mask_id), x)
            calls = calls + 1
        else:
            scores = decode_scores
        best = select_candidate(scores, gen)
    else:
        best = jnp.zeros((), jnp.int32)
    res = {"tokens": x[best], "length_pred": length_pred.astype(jnp.int32),
           "decoder_calls": jnp.sum(calls).astype(jnp.int32), "generated": jnp.sum(gen[best]).astype(jnp.int32)}
    if return_history:
        res["history"] = out[1][:, best]
    return res


def decode_batch(model_fn, length_fn, batch, index, rng, **kw):
    """batch: tokens [B, L], prompt_length [B]; index [B] global example ids -> dict of [B, ...]:
    tokens [B, L], length_pred [B] (length head argmax, or the room left), decoder_calls [B] (model
    calls of the decoder summed over the length beam, plus one per candidate with
    ``length_select="rescore"``; the length head's call is not counted), generated [B] (positions generated) and, with
    ``return_history``, history [B, steps, L]."""
    keys = example_keys(rng, index)
    return jax.vmap(lambda t, p, k: decode_one(model_fn, length_fn, t, p, k, **kw))(
        batch["tokens"], batch["prompt_length"], keys)


def decode_options(cfg, tokenizer, fmt, return_history: bool) -> dict:
    """``decode_batch``'s keyword arguments from ``config.task``: the decoder and its options
    (``diffusion/decoders.py``), the length rule, and the special ids never generated."""
    c = cfg
    mode = c.length_mode
    if mode not in LENGTH_MODES:
        raise ValueError(f"task.length_mode={mode!r}: use one of {LENGTH_MODES}")
    if mode == "head" and not c.length_max:
        raise ValueError("task.length_mode='head' needs task.length_max > 0 (a length head)")
    if c.length_select not in LENGTH_SELECT:
        raise ValueError(f"task.length_select={c.length_select!r}: use one of {LENGTH_SELECT}")
    mask_id, sep_id = tokenizer.mask_id, fmt.end_id
    # Special tokens the target never holds inside its text (PAD, CLS / BOS, UNK; and SEP when the
    # length head fixes where the closing SEP goes) are not generated.
    # In fixed mode the slots after the closing SEP are trained to hold PAD (padding_as_target), so PAD
    # stays allowed there and the output is cut at the first SEP or PAD.
    specials = {tokenizer.cls_id, tokenizer.bos_id, getattr(tokenizer.hf, "unk_token_id", None)}
    if mode == "head":
        specials |= {sep_id, tokenizer.pad_id}
    banned = tuple(sorted(int(i) for i in specials if i is not None and i != mask_id))
    kw = decoders.sampler_kwargs(c.decoder, c)
    if kw.get("cache", "none") != "none" and mode == "head":  # the cache's windows: at most length_max - 1 generated
        kw["max_generated"] = int(c.length_max) - 1
    return dict(mask_id=mask_id, sep_id=sep_id, pad_id=fmt.pad_id, decoder=c.decoder, banned_ids=banned,
                decoder_kwargs=kw, length_mode=mode, length_beam=int(c.length_beam),
                length_select=c.length_select, length_max=int(c.length_max), return_history=return_history)


def pack_prompts(examples, tokenizer, fmt, length: int) -> dict:
    """Prompts (``examples.prompts``) packed into rows of ``length`` (``gen_length``) slots -> the packed fields
    plus ``prompt_tokens_in`` / ``prompt_tokens_kept`` [N]. A prompt keeps what training's truncation policy
    (``data.text.packing``) keeps of the prompt of an example whose target fills the row: at most
    half the row, its last tokens; the rest of the row is the output's. A row left with fewer than 2
    output slots is an error naming the prompt."""
    L, n = int(length), len(examples)
    tokenized = tokenize(TextExamples(examples.name, list(examples.prompts), [""] * n), tokenizer)
    lp = tokenized.prompt.lengths
    keep = plan_lengths(lp, np.full(n, L, np.int64), fmt, L)[0]
    kept = RaggedTokens.from_lists([tokenized.prompt[i][len(tokenized.prompt[i]) - int(keep[i]):] for i in range(n)])
    packed = Packer(TokenizedExamples(kept, tokenized.target, "", examples.name), fmt, (L,)).pack(np.arange(n), L)
    for i in range(n):
        room = L - int(packed["prompt_length"][i])
        if room < 2:
            raise prompt_lib.no_room(i, examples.prompts[i], lp[i], (
                f"it leaves {room} of config.task.gen_length={L} slots for the output (needs >= 2); shorten the "
                f"prompt or raise --config.task.gen_length"))
    packed["prompt_tokens_in"], packed["prompt_tokens_kept"] = lp.astype(np.int64), keep.astype(np.int64)
    return packed


def show_steps(tokenizer, history: np.ndarray, prompt_length: int, *, mask_id: int, stop_ids, num_shown: int = 8,
               mask_text: str = "_") -> list[str]:
    """Lines ``step k/N: text`` for ``num_shown`` evenly spaced steps (the first and the last included);
    masks are shown as ``mask_text`` (one per masked token)."""
    n = len(history)
    steps = sorted(set(np.linspace(0, n - 1, min(num_shown, n)).round().astype(int).tolist()))
    lines = []
    for s in steps:
        words = []
        for t in cut_at(np.asarray(history[s])[int(prompt_length):], stop_ids - {mask_id}):
            words.append(mask_text if t == mask_id else tokenizer.decode([t]))
        text = " ".join(words).replace(" ##", "")
        lines.append(f"step {s + 1:>3}/{n}: {text}")
    return lines
