"""AR2Diff (papers.md 001, "Transfer Learning for Text Diffusion Models"): a pretrained AR decoder
continued as a text diffusion model. One task; ``config.task.stage`` picks the stage:

* stage 1 — AR: prefix-LM training (``ar_attention="prefix"``: bidirectional prompt, causal target;
  or "causal"), next-token CE on the target + EOS; or just a pretrained decoder loaded with
  ``config.init_from`` (a .gguf file / HF dir) and 0 steps;
* stage 2 — continued pretraining as a diffusion model with bidirectional attention over the target,
  on a pretraining corpus (``stage2.data``);
* stage 3 — diffusion finetuning on the task (``stage3.data``).
Stages 2 and 3 share the objective (``objective``): ``"sundae"`` = paper 001's simplified SUNDAE
(uniform-token corruption at rate r ~ U(0,1), 2-step unrolled CE over *every* target-region slot,
PAD included, so the model learns PAD after the end; ``diffusion/uniform.py``) or ``"masked"``
(absorbing diffusion, continuous-time ELBO; ``diffusion/masked.py``; needs ``mask_id``).
DiffuLLaMA-style options (HKUNLP/DiffuLLaMA): ``anneal_steps`` > 0 anneals the attention mask from
the prefix-LM mask to full over that many steps (extra visible pairs drawn Bernoulli(ratio), ratio =
min(1, (step + 1) / anneal_steps), one [L, L] draw per batch); ``logit_shift`` predicts slot i from
the output at slot i - 1 so the pretrained next-token head is reused.
Stages chain through workdirs with ``config.init_from`` (``diffjax.tasks.ar2diff_pipeline`` runs
them all with one command).

Layout (decoder-only, ``arch="decoder"``): one bucket ``L`` (``buckets=(L,)``); a row is
``BOS prompt | target EOS PAD ... PAD``; the *target region* is every slot from ``prompt_length``
to ``L`` (the prompt is never corrupted). Encoder-decoder (``arch="encoder_decoder"``, T5, the
paper's other architecture): the prompt feeds the encoder, the target region is the first
``target_length`` slots after the prompt, fed to the decoder (causal in stage 1, bidirectional in
stages 2/3, ``models/t5.py``).

Decoding (``decoder``; "" = "ar" in stage 1, "refine" for sundae, "topk" for masked):
``"refine"`` paper 001's refinement from uniform random tokens (``num_steps`` K, ``temperature``,
``num_samples`` N in parallel, keep the highest log-prob; ``iterative_refinement_sample``),
``"topk"`` / ``"ancestral"`` / any ``<name>_unmask_sample`` / ``<name>_sample`` of
``diffusion/discrete_sampling.py`` taking ``mask_id`` (masked objective), ``"ar"`` KV-cache
decoding (``models/llama.generate``; T5: greedy without a cache). Per-example keys
``fold_in(rng, example index)`` make samples mesh-independent. Outputs are cut at the first
EOS / PAD. ``evaluate`` writes held-out loss and BLEU / exact match / SQuAD EM-F1 to results.json.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.data.text import PackingFormat, load_text_batcher, load_tokenizer
from diffjax.diffusion import discrete_sampling
from diffjax.diffusion.masked import NORMALIZATIONS, masked_diffusion_elbo, token_log_probs
from diffjax.diffusion.uniform import unrolled_denoising_loss
from diffjax.evaluation.text_metrics import generation_metrics
from diffjax.models import llama as llama_lib
from diffjax.models import t5 as t5_lib
from diffjax.tasks import fields as F
from diffjax.tasks import prompts as prompt_lib
from diffjax.tasks.ar2diff_data import DERIVE_KINDS, prepare_split
from diffjax.tasks.base import Task, register_task

OBJECTIVES = ("sundae", "masked")
ARCHS = ("decoder", "encoder_decoder")


# ----------------------------------------------------------------------------- pure helpers


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


def cut_at(ids, stop_ids) -> list[int]:
    """Token ids up to (excluding) the first id in ``stop_ids``."""
    out = []
    for i in np.asarray(ids).tolist():
        if i in stop_ids:
            break
        out.append(int(i))
    return out


def _decoders() -> tuple[str, ...]:
    """Valid ``task.decoder`` values: "" (the stage's default), "ar", "refine" and the unmask samplers."""
    suffix = "_unmask_sample"
    return ("", "ar", "refine") + tuple(sorted(n[:-len(suffix)] for n in dir(discrete_sampling) if n.endswith(suffix)))


def _derive(value) -> bool:
    name, _, k = value.partition(":") if isinstance(value, str) else ("?", "", "")
    return name in DERIVE_KINDS and (k.isdigit() and int(k) >= 1 if name.endswith("_words") else not k)


def validate_task_config(c) -> None:
    """The valid range of every ``config.task`` field (``fields.ConfigError``); reads no data or weights."""
    F.check_fields(c, (
        ("stage", F.integer(1, 3, what="1 AR, 2 diffusion pretraining, 3 diffusion finetuning")),
        ("arch", F.choice(*ARCHS)), ("model_source", F.text()), ("model", F.mapping()), ("remat", F.boolean()),
        ("tokenizer", F.text()), ("style", F.choice("auto", "bert", "llama", "none")), ("cache_dir", F.text()),
        ("buckets", F.lengths(4)), ("seed", F.integer(0)), ("target_length", F.integer(1)),
        ("objective", F.choice(*OBJECTIVES)), ("normalize", F.choice(*NORMALIZATIONS)),
        ("unroll_steps", F.integer(1)), ("mask_id", F.integer(-1, what="-1 = the tokenizer's mask token")),
        ("logit_shift", F.boolean()), ("anneal_steps", F.integer(0, what="0 = off")),
        ("ar_attention", F.choice("prefix", "causal")), ("decoder", F.choice(*_decoders())),
        ("num_steps", F.integer(1)), ("temperature", F.number(0.0, low_open=True)), ("num_samples", F.integer(1)),
        ("greedy", F.boolean()), ("max_new_tokens", F.integer(1)), ("min_target_slots", F.integer(1)),
        ("eval_examples", F.integer(1)), ("eval_batch_size", F.integer(1)), ("eval_decode", F.boolean()),
        ("num_generate", F.integer(1)),
    ))
    for st in ("stage1", "stage2", "stage3"):
        F.check_fields(c, (
            (f"{st}.data", F.text(nonempty=True)),
            (f"{st}.derive", F.Check(_derive, "'', 'split_half', 'last_words:K' or 'first_words:K' (K >= 1)")),
            (f"{st}.steps", F.integer(0)), (f"{st}.learning_rate", F.number(0.0, low_open=True)),
            (f"{st}.max_examples", F.integer(0, what="0 = all")), (f"{st}.max_words", F.integer(1)),
            (f"{st}.prompt_field", F.text()), (f"{st}.target_field", F.text()), (f"{st}.data_dir", F.text()),
            (f"{st}.split", F.text(nonempty=True)),
        ))
        derive, max_words = F.get(c, f"{st}.derive"), F.get(c, f"{st}.max_words")
        name, _, k = derive.partition(":") if isinstance(derive, str) else ("", "", "")
        if name.endswith("_words") and k.isdigit() and max_words is not None:
            k = int(k)
            F.require(max_words >= k + 2, f"task.{st}.max_words", max_words,
                      f"an integer >= {k + 2} ({st}.derive={derive!r} keeps texts of K + 2 .. max_words words)")
    buckets, slots = F.get(c, "buckets"), F.get(c, "min_target_slots")
    if buckets and slots is not None:
        F.require(slots <= buckets[-1] - 3, "task.min_target_slots", slots,
                  f"an integer in [1, {buckets[-1] - 3}] (the row of task.buckets[-1]={buckets[-1]} slots keeps a start "
                  f"token, a prompt token and a separator)")
    if F.get(c, "decoder") not in ("", "ar", "refine", None):
        F.require(F.get(c, "objective") == "masked", "task.decoder", F.get(c, "decoder"),
                  "'', 'ar' or 'refine' with task.objective='sundae' (the unmask samplers need objective='masked')")


@functools.lru_cache(maxsize=2)
def _pretrained(path: str):
    """(model, params) of a .gguf file or an HF dir, loaded once per process."""
    if path.endswith(".gguf"):
        from diffjax.checkpoints.gguf import load_gguf_checkpoint

        return load_gguf_checkpoint(path)
    from diffjax.checkpoints.hf import load_hf_checkpoint

    return load_hf_checkpoint(path)


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str):
    return load_tokenizer(path)


# ----------------------------------------------------------------------------- the task


class AR2DiffTask(Task):
    """See the module docstring; ``cfg`` = ``config.task``."""

    name = "ar2diff"

    def __init__(self, cfg):
        self.cfg = cfg
        self.stage = int(cfg.stage)
        if self.stage not in (1, 2, 3):
            raise ValueError(f"task.stage must be 1 (AR), 2 (diffusion pretraining) or 3 (diffusion finetuning); "
                             f"got {cfg.stage!r}")
        if cfg.arch not in ARCHS:
            raise ValueError(f"task.arch must be one of {ARCHS}; got {cfg.arch!r}")
        if cfg.objective not in OBJECTIVES:
            raise ValueError(f"task.objective must be one of {OBJECTIVES}; got {cfg.objective!r}")
        self.arch, self.diffusion = cfg.arch, self.stage > 1
        self.objective = cfg.objective if self.diffusion else "ar"
        self.tok = _tokenizer(cfg.tokenizer)
        self.fmt = PackingFormat.for_tokenizer(self.tok, cfg.style)
        self.pad_id = int(self.fmt.pad_id)
        self.stop_ids = {i for i in (self.fmt.end_id, self.fmt.pad_id) if i is not None}
        sc = cfg[f"stage{self.stage}"]
        cache_dir = os.path.expanduser(cfg.cache_dir)
        train_path, eval_path = prepare_split(
            sc.data, sc.derive, cache_dir=cache_dir, eval_examples=int(cfg.eval_examples),
            max_examples=int(sc.max_examples), max_words=int(sc.max_words), prompt_field=sc.prompt_field or None,
            target_field=sc.target_field or None, data_dir=sc.data_dir or None, split=sc.split)
        self.length = int(cfg.buckets[-1])
        kw = dict(cache_dir=cache_dir, buckets=(self.length,), style=self.fmt, seed=int(cfg.seed))
        self.batcher = load_text_batcher(train_path, self.tok, **kw)
        self.eval_batcher = load_text_batcher(eval_path, self.tok, **kw)
        self.model = self._build_model()
        self.vocab_size = int(self.model.config.vocab_size)
        self.mask_id = int(cfg.mask_id) if int(cfg.mask_id) >= 0 else self.tok.mask_id
        if self.objective == "masked" and self.mask_id is None:
            raise ValueError("objective='masked' needs task.mask_id (the tokenizer has no mask token; pick an id the "
                             "data never uses, e.g. 0 = <|endoftext|> for SmolLM2)")
        self.decoder = cfg.decoder or ("ar" if not self.diffusion else "refine" if self.objective == "sundae" else "topk")

    # ------------------------------------------------------------------ model

    def _build_model(self):
        cfg = self.cfg
        if cfg.model_source:  # the architecture of a pretrained model; its weights come through init_from
            model = _pretrained(os.path.expanduser(cfg.model_source))[0]
        elif self.arch == "decoder":
            model = llama_lib.Llama(llama_lib.LlamaConfig(**cfg.model.to_dict()))
        else:
            model = t5_lib.T5(t5_lib.T5Config(**cfg.model.to_dict()))
        if self.arch == "decoder":
            if not isinstance(model, llama_lib.Llama):
                raise ValueError(f"arch='decoder' needs a Llama/Qwen2/Mistral model; {cfg.model_source} is {type(model).__name__}")
            return model.clone(config=dataclasses.replace(model.config, remat=bool(cfg.remat)))
        if not isinstance(model, t5_lib.T5):
            raise ValueError(f"arch='encoder_decoder' needs a T5 model; {cfg.model_source} is {type(model).__name__}")
        model = model.clone(config=dataclasses.replace(model.config, remat=bool(cfg.remat)))
        return t5_lib.with_decoder_attention(model, "bidirectional" if self.diffusion else "causal")

    def init_params(self, rng):
        z = jnp.zeros((1, 4), jnp.int32)
        if self.arch == "decoder":
            return self.model.init(rng, z)["params"]
        return self.model.init(rng, z, z)["params"]

    def pretrained_params(self, path):
        return _pretrained(path)[1]

    def decoder_logits(self, params, x, mask):
        """Decoder-only denoiser: x [B, L] int, mask [B|1, 1, L, L] bool -> logits [B, L, V] (shifted if configured)."""
        logits = self.model.apply({"params": params}, x, mask=mask)
        return shift_logits(logits) if self.cfg.logit_shift else logits

    def t5_views(self, batch):
        """Encoder ids / mask [B, L] (prompt only) and the target region y [B, T], y_valid [B, T]."""
        tokens, pl = jnp.asarray(batch["tokens"]), jnp.asarray(batch["prompt_length"])
        L, T = tokens.shape[1], int(self.cfg.target_length)
        enc_mask = jnp.arange(L)[None] < pl[:, None]
        enc_ids = jnp.where(enc_mask, tokens, self.pad_id)
        idx = pl[:, None] + jnp.arange(T)[None]
        y = jnp.where(idx < L, jnp.take_along_axis(tokens, jnp.clip(idx, 0, L - 1), axis=1), self.pad_id)
        y_valid = idx < (pl + jnp.asarray(batch["target_length"]))[:, None]
        return enc_ids, enc_mask, y.astype(jnp.int32), y_valid

    def t5_logits_fn(self, params, enc_ids, enc_mask):
        enc = self.model.apply({"params": params}, enc_ids, enc_mask, method=t5_lib.T5.encode)

        def logits_fn(x, t):
            del t
            e = jnp.broadcast_to(enc, (x.shape[0],) + enc.shape[1:])
            m = jnp.broadcast_to(enc_mask, (x.shape[0],) + enc_mask.shape[1:])
            return self.model.apply({"params": params}, x, e, m, method=t5_lib.T5.decode)

        return logits_fn

    # ------------------------------------------------------------------ loss

    def loss_fn(self, params, batch, rng):
        ex = jnp.asarray(batch["example_mask"], bool)
        if self.arch == "decoder":
            tokens, pl = jnp.asarray(batch["tokens"]), jnp.asarray(batch["prompt_length"])
            L = tokens.shape[1]
            if not self.diffusion:
                logits = self.model.apply({"params": params}, tokens, attention=self.cfg.ar_attention,
                                          prefix_length=pl, attention_mask=batch["valid"])
                w = (jnp.asarray(batch["corruptible"]) & jnp.asarray(batch["valid"]) & ex[:, None])[:, 1:]
                return self._ar_loss(logits[:, :-1], tokens[:, 1:], w)
            gen = target_region(pl, L) & ex[:, None]
            rng_mask, rng = jax.random.split(rng)
            ratio = None
            if int(self.cfg.anneal_steps) > 0 and "step" in batch:
                ratio = anneal_ratio(jnp.asarray(batch["step"])[0], int(self.cfg.anneal_steps))
            mask = diffusion_attention_mask(pl, L, ratio, rng_mask)

            def logits_fn(x, t):
                del t
                return self.decoder_logits(params, x, mask)

            loss, aux = self._diffusion_loss(logits_fn, tokens, gen, rng)
            if ratio is not None:
                aux["anneal_ratio"] = ratio
            return loss, aux
        enc_ids, enc_mask, y, y_valid = self.t5_views(batch)
        if not self.diffusion:
            dec_in = t5_lib.shift_right(y, self.model.config.decoder_start_token_id, self.pad_id)
            logits = self.model.apply({"params": params}, enc_ids, dec_in, attention_mask=enc_mask)
            return self._ar_loss(logits, y, y_valid & ex[:, None])
        return self._diffusion_loss(self.t5_logits_fn(params, enc_ids, enc_mask), y,
                                    jnp.ones_like(y, bool) & ex[:, None], rng)

    def _ar_loss(self, logits, targets, weight):
        nll = -token_log_probs(logits, targets)
        n = jnp.maximum(jnp.sum(weight), 1)
        acc = jnp.sum((jnp.argmax(logits, -1) == targets) & weight) / n
        return jnp.sum(jnp.where(weight, nll, 0.0)) / n, {"token_accuracy": acc}

    def _diffusion_loss(self, logits_fn, x0, gen, rng):
        cfg = self.cfg
        if self.objective == "sundae":
            loss, aux = unrolled_denoising_loss(logits_fn, x0, rng, vocab_size=self.vocab_size, corruptible=gen,
                                                num_unroll_steps=int(cfg.unroll_steps), normalize=cfg.normalize)
        else:
            loss, aux = masked_diffusion_elbo(logits_fn, x0, rng, mask_id=self.mask_id, corruptible=gen,
                                              normalize=cfg.normalize)
        return loss, dict(aux)

    def train_batches(self, start_step, *, global_batch_size, process_index=0, process_count=1):
        it = self.batcher.batches(start_step, global_batch_size=global_batch_size, process_index=process_index,
                                  process_count=process_count)
        for step, batch in enumerate(it, start=int(start_step)):
            batch["step"] = np.full(batch["tokens"].shape[:1], step, np.int32)  # attention annealing
            yield batch

    # ------------------------------------------------------------------ decoding

    def _sampler(self, name: str):
        ds = discrete_sampling
        fn = getattr(ds, f"{name}_unmask_sample", None) or getattr(ds, f"{name}_sample", None)
        if fn is None:
            raise ValueError(f"task.decoder={name!r}: expected 'ar', 'refine' or a sampler of "
                             f"diffusion/discrete_sampling.py (topk, ancestral, ...)")
        return fn

    def _denoise_one(self, logits_fn, x, gen, key, *, show: bool):
        """One example: x [L'] int, gen [L'] bool -> (tokens [L'], score, extra for show_steps)."""
        cfg = self.cfg
        if self.decoder == "refine":
            tok, score, all_tok, all_score = discrete_sampling.iterative_refinement_sample(
                logits_fn, x[None], key, vocab_size=self.vocab_size, num_steps=int(cfg.num_steps),
                temperature=float(cfg.temperature), num_samples=int(cfg.num_samples), corruptible=gen[None],
                greedy=bool(cfg.greedy), return_all=True)
            return tok[0], score[0], (all_tok[0], all_score[0]) if show else None
        fn = self._sampler(self.decoder)
        out = fn(logits_fn, x[None], key, mask_id=self.mask_id, num_steps=int(cfg.num_steps), corruptible=gen[None],
                 temperature=float(cfg.temperature), greedy=bool(cfg.greedy), return_history=show)
        if show:
            tok, hist = out
            return tok[0], jnp.zeros(()), hist[:, 0]
        return out[0], jnp.zeros(()), None

    def decode_fn(self, show: bool = False):
        """The jitted ``(params, batch, index, rng) -> {"tokens", "score"[, "steps"]}`` for the configured decoder."""

        def diffusion_one(params, tokens, pl, tlen, key):
            if self.arch == "decoder":
                L = tokens.shape[0]
                gen = jnp.arange(L) >= pl
                full = jnp.ones((1, 1, L, L), bool)

                def logits_fn(x, t):
                    del t
                    return self.decoder_logits(params, x, full)

                return self._denoise_one(logits_fn, tokens, gen, key, show=show)
            b = {"tokens": tokens[None], "prompt_length": pl[None], "target_length": tlen[None]}
            enc_ids, enc_mask, y, _ = self.t5_views(b)
            logits_fn = self.t5_logits_fn(params, enc_ids, enc_mask)
            return self._denoise_one(logits_fn, y[0], jnp.ones_like(y[0], bool), key, show=show)

        def fn(params, batch, index, rng):
            if self.decoder == "ar":
                return {"tokens": self._ar_decode(params, batch)}
            keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(index)
            tok, score, extra = jax.vmap(diffusion_one, in_axes=(None, 0, 0, 0, 0))(
                params, batch["tokens"], batch["prompt_length"], batch["target_length"], keys)
            out = {"tokens": tok, "score": score}
            if show:
                out["steps"] = extra
            return out

        return jax.jit(fn)

    def _ar_decode(self, params, batch):
        cfg = self.cfg
        if self.arch == "decoder":
            return llama_lib.generate(self.model, params, batch["prompt_ids"], batch["prompt_mask"],
                                      max_new_tokens=int(cfg.max_new_tokens), eos_token_id=self.fmt.end_id,
                                      pad_token_id=self.pad_id, prefix_lm=cfg.ar_attention == "prefix",
                                      temperature=0.0)
        enc_ids, enc_mask, y, _ = self.t5_views(batch)
        start = self.model.config.decoder_start_token_id
        logits_fn = self.t5_logits_fn(params, enc_ids, enc_mask)

        def body(i, y):  # greedy, no cache: the causal decoder makes slot i depend on slots < i only
            logits = logits_fn(t5_lib.shift_right(y, start, self.pad_id), None)
            return y.at[:, i].set(jnp.argmax(logits[:, i], -1).astype(jnp.int32))

        return jax.lax.fori_loop(0, y.shape[1], body, jnp.full_like(y, self.pad_id))

    def _host_inputs(self, prompts_ids: list[list[int]], refs_tokens=None) -> dict:
        """Decoding inputs from prompt ids (BOS/SEP included): tokens [N, L] (prompt then PAD), prompt_length,
        target_length, and left-padded prompt_ids / prompt_mask [N, P] for AR decoding."""
        L, n = self.length, len(prompts_ids)
        tokens = np.full((n, L), self.pad_id, np.int32)
        pmax = max(len(p) for p in prompts_ids)
        prompt_ids = np.full((n, pmax), self.pad_id, np.int32)
        prompt_mask = np.zeros((n, pmax), bool)
        for i, p in enumerate(prompts_ids):
            tokens[i, :len(p)] = p
            prompt_ids[i, pmax - len(p):] = p
            prompt_mask[i, pmax - len(p):] = True
        pl = np.asarray([len(p) for p in prompts_ids], np.int32)
        return {"tokens": tokens, "prompt_length": pl, "target_length": (L - pl).astype(np.int32),
                "prompt_ids": prompt_ids, "prompt_mask": prompt_mask}

    def _encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        return self._fit_prompts(prompts)[0]

    def _fit_prompts(self, prompts: list[str]) -> tuple[list[list[int]], list[dict | None]]:
        """User prompts -> (row ids: start + the prompt's last tokens + sep, per prompt the cut record of
        ``tasks.prompts.truncation``). A prompt keeps at most ``buckets[-1] - min_target_slots`` slots (specials
        included), so ``min_target_slots`` are left for the output; a cut is reported, never silent, and a
        row that would leave the prompt no token is an error naming the prompt."""
        slots = max(2, int(self.cfg.min_target_slots))
        budget = self.length - slots
        out, cuts = [], []
        for i, (text, ids) in enumerate(zip(prompts, self.tok.encode(prompts))):
            head = [j for j in (self.fmt.start_id,) if j is not None]
            sep = [self.fmt.sep_id] if self.fmt.sep_id is not None and ids else []
            room = budget - len(head) - len(sep)
            if ids and room < 1:
                raise prompt_lib.no_room(i, text, len(ids), (
                    f"config.task.buckets={tuple(self.cfg.buckets)} with task.min_target_slots={slots} output slots "
                    f"leaves {room} slot(s) for it; lower --config.task.min_target_slots or raise the row length "
                    f"(the last of --config.task.buckets)"))
            kept = ids[len(ids) - room:] if len(ids) > room else list(ids)
            out.append(head + kept + sep)
            cuts.append(prompt_lib.truncation(len(ids), len(kept)))
        return out, cuts

    def _eval_set(self):
        """Prompts (ids and text), references and the packed eval rows of the held-out split."""
        n = self.eval_batcher.num_examples
        rows = next(self.eval_batcher.eval_batches(n))
        pl = rows["prompt_length"]
        prompt_ids = [rows["tokens"][i, :pl[i]].tolist() for i in range(n)]
        refs = [self.tok.decode(cut_at(rows["tokens"][i, pl[i]:], self.stop_ids), skip_special_tokens=True).strip()
                for i in range(n)]
        return prompt_ids, refs, rows

    def _texts(self, inputs, tokens) -> list[str]:
        out = []
        for i in range(len(tokens)):
            if self.decoder == "ar" or self.arch == "encoder_decoder":
                ids = tokens[i]
            else:
                ids = tokens[i, int(inputs["prompt_length"][i]):]
            out.append(self.tok.decode(cut_at(ids, self.stop_ids), skip_special_tokens=True).strip())
        return out

    def _decode(self, params, rng, inputs, context, show=False):
        fn = self.decode_fn(show)
        return context.map_batches(lambda b, i: fn(params, b, i, rng), inputs, batch_size=int(self.cfg.eval_batch_size))

    # ------------------------------------------------------------------ evaluate / generate

    def heldout_loss(self, params, rng, rows, context) -> float:
        """Mean per-example loss (this stage's objective) over the held-out split, keys fold_in(rng, index)."""
        keys = ("tokens", "corruptible", "valid", "prompt_length", "target_length", "example_mask")
        inputs = {k: rows[k] for k in keys}
        one = lambda p, b, k: self.loss_fn(p, jax.tree_util.tree_map(lambda x: x[None], b), k)[0]  # noqa: E731
        fn = jax.jit(lambda p, b, idx, r: jax.vmap(one, in_axes=(None, 0, 0))(
            p, b, jax.vmap(lambda i: jax.random.fold_in(r, i))(idx)))
        per = context.map_batches(lambda b, i: fn(params, b, i, rng), inputs, batch_size=int(self.cfg.eval_batch_size))
        return float(np.mean(per))

    def evaluate(self, params, rng, workdir, *, context, **kwargs):
        del kwargs
        prompt_ids, refs, rows = self._eval_set()
        t0 = time.perf_counter()
        res = {"stage": self.stage, "objective": self.objective, "arch": self.arch,
               "heldout_loss": self.heldout_loss(params, jax.random.fold_in(rng, 1), rows, context),
               "heldout_loss_seconds": time.perf_counter() - t0}
        if not self.cfg.eval_decode:
            return res
        inputs = self._host_inputs(prompt_ids)
        t0 = time.perf_counter()
        out = self._decode(params, jax.random.fold_in(rng, 2), inputs, context)
        hyps = self._texts(inputs, out["tokens"])
        res.update({"decoder": self.decoder, "decode_seconds": time.perf_counter() - t0, **generation_metrics(hyps, refs),
                    "samples": [{"prompt": self.tok.decode(p, skip_special_tokens=True), "reference": r, "output": h}
                                for p, r, h in list(zip(prompt_ids, refs, hyps))[: int(self.cfg.num_generate)]]})
        if context.is_main:
            print(f"ar2diff eval: stage {self.stage} {self.objective} decoder={self.decoder} "
                  f"EM={res['exact_match']:.3f} BLEU={res['bleu']:.2f} F1={res['squad_f1']:.3f} "
                  f"heldout_loss={res['heldout_loss']:.4f}", flush=True)
        return res

    def generate(self, params, rng, workdir, *, context, prompts=None, show_steps=False, **kwargs):
        del kwargs, workdir
        if prompts is None:
            prompt_ids = self._eval_set()[0][: int(self.cfg.num_generate)]
            prompts = [self.tok.decode(p, skip_special_tokens=True) for p in prompt_ids]
            cuts = [None] * len(prompt_ids)
        else:
            prompt_ids, cuts = self._fit_prompts(list(prompts))
        inputs = self._host_inputs(prompt_ids)
        show = bool(show_steps) and self.decoder != "ar"
        out = self._decode(params, rng, inputs, context, show=show)
        texts = self._texts(inputs, out["tokens"])
        samples = []
        for i, (p, t) in enumerate(zip(prompts, texts)):
            s = {"prompt": p, "output": t, "prompt_truncated": cuts[i]}
            if "score" in out:
                s["log_prob"] = float(out["score"][i])
            if show:
                steps = out["steps"]
                if self.decoder == "refine":  # (all chains [N, L'], their scores [N]): the keep-best choice
                    s["chains"] = [{"output": self._texts({"prompt_length": inputs["prompt_length"][i:i + 1]},
                                                          steps[0][i][j:j + 1])[0], "log_prob": float(steps[1][i][j])}
                                   for j in range(steps[0].shape[1])]
                else:  # the token array after every step
                    s["steps"] = [self._texts({"prompt_length": inputs["prompt_length"][i:i + 1]},
                                              steps[i][k:k + 1])[0]
                                  for k in range(steps.shape[1])]
                if context.is_main:
                    print(f"[{i}] {p!r}", flush=True)
                    for j, c in enumerate(s.get("chains", s.get("steps", []))):
                        print(f"    {j}: {c}", flush=True)
            samples.append(s)
        if context.is_main:
            for s in samples:
                cut = s["prompt_truncated"]
                note = "" if cut is None else "  " + prompt_lib.note(cut, (
                    f"lower --config.task.min_target_slots (now {self.cfg.min_target_slots}) or raise the row length "
                    f"(the last of --config.task.buckets={tuple(self.cfg.buckets)}) to keep more"))
                print(f"{s['prompt']!r} -> {s['output']!r}{note}", flush=True)
        return {"decoder": self.decoder, "prompts_truncated": sum(c is not None for c in cuts), "samples": samples}


@register_task("ar2diff", validate=validate_task_config)
def from_config(cfg):
    return AR2DiffTask(cfg)
