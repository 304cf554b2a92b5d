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
Stages chain through workdirs with ``config.init_from`` (``python -m diffjax pipeline``), which gives the
weights, the architecture and (unless ``tokenizer`` is set) the tokenizer: a .gguf / HF dir, or a stage's
workdir (the model at the root of its chain). A random init (``init_from=""`` or a chain from one) takes
``architecture`` (a .gguf / HF dir) or, when it is "", the ``model`` fields (the tiny config).

Layout (decoder-only, ``arch="decoder"``): one bucket ``L`` (``buckets=(L,)``); a row is
``BOS prompt | target EOS PAD ... PAD``; the *target region* is every slot from ``prompt_length``
to ``L`` (the prompt is never corrupted). Encoder-decoder (``arch="encoder_decoder"``, T5, the
paper's other architecture): the prompt feeds the encoder, the target region is the first
``target_length`` slots after the prompt, fed to the decoder (causal in stage 1, bidirectional in
stages 2/3, ``models/t5.py``).

Decoding (``decoder``, a name of ``diffusion/decoders.py``; "" = "ar" in stage 1, "refine" for sundae,
"topk" for masked): ``tasks/ar2diff_decode.py``. Prompts, texts, BLEU / exact match / SQuAD EM-F1 and
``generate``: ``tasks/textgen_task.py``; ``evaluate`` adds the held-out loss of this stage's objective.
Data: ``data/ar2diff_data.py``; fields and their ranges: ``tasks/ar2diff_fields.py``.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.checkpoints.presets import is_preset, preset_model
from diffjax.checkpoints.pretrained import load_architecture, pick_architecture
from diffjax.data.ar2diff_data import prepare_split
from diffjax.data.text import PackingFormat, load_text_batcher, load_tokenizer, padding_batch
from diffjax.diffusion.masked import exclude_token_logit, masked_diffusion_elbo, token_log_probs
from diffjax.diffusion.uniform import unrolled_denoising_loss
from diffjax.evaluation.likelihood import RowLayout
from diffjax.models import t5 as t5_lib
from diffjax.runtime import example_keys
from diffjax.tasks import ar2diff_decode as dec
from diffjax.tasks import ar2diff_model as model_lib
from diffjax.tasks import fields as F
from diffjax.tasks.ar2diff_fields import AR2DiffConfig
from diffjax.tasks.base import batch_shapes, register_task
from diffjax.tasks.textgen_task import EvalSet, TextGenTask

_tokenizer = functools.lru_cache(maxsize=4)(load_tokenizer)


def with_step(batch: dict, step: int) -> dict:
    """A training batch with ``step [b] int32`` added (attention annealing reads it)."""
    batch["step"] = np.full(batch["tokens"].shape[:1], step, np.int32)
    return batch


class AR2DiffTask(TextGenTask):
    """See the module docstring; ``cfg``: the typed ``config.task``; ``arch_source``: the model
    ``config.init_from`` gives (``build_task``; None = a random init of ``cfg.architecture`` or ``cfg.model``);
    ``shapes_only`` (``plan``): the stage's data is not read (no batchers: no training, no evaluation)."""

    name = "ar2diff"
    eval_rng_fold = 2  # decoding in evaluate: fold_in(rng, 2); the held-out loss: fold_in(rng, 1)

    def __init__(self, cfg: AR2DiffConfig, arch_source: str | None = None, model_options=None,
                 shapes_only: bool = False):
        self.cfg = cfg
        self.stage = int(cfg.stage)  # stage, arch, objective, decoder: checked by AR2DiffConfig
        self.arch, self.diffusion = cfg.arch, self.stage > 1
        self.objective = cfg.objective if self.diffusion else "ar"
        source = pick_architecture(arch_source, cfg.architecture)
        F.require(bool(cfg.tokenizer or source), "task.tokenizer", cfg.tokenizer, "an HF dir or a .gguf file when "
                  "neither config.init_from nor task.architecture names a model (whose tokenizer '' means)")
        self.tok = _tokenizer(cfg.tokenizer or source)
        self.fmt = PackingFormat.for_tokenizer(self.tok, cfg.style)
        self.pad_id = int(self.fmt.pad_id)
        self.stop_ids = {i for i in (self.fmt.end_id, self.fmt.pad_id) if i is not None}
        self.length = int(cfg.buckets[-1])
        self.batcher = self.eval_batcher = None
        if not shapes_only:  # the data before any weights load (a missing data set fails first)
            sc = getattr(cfg, f"stage{self.stage}")
            cache_dir = os.path.expanduser(cfg.cache_dir)
            train_path, eval_path = prepare_split(
                sc.data, sc.derive, cache_dir=cache_dir, eval_examples=int(cfg.eval_examples),
                max_examples=int(sc.max_examples), max_words=int(sc.max_words),
                prompt_field=sc.prompt_field or None, target_field=sc.target_field or None,
                data_dir=sc.data_dir or None, split=sc.split)
            kw = dict(cache_dir=cache_dir, buckets=(self.length,), style=self.fmt, seed=int(cfg.seed))
            self.batcher = load_text_batcher(train_path, self.tok, **kw)
            self.eval_batcher = load_text_batcher(eval_path, self.tok, **kw)
        model = ((preset_model(source) if is_preset(source) else load_architecture(os.path.abspath(source)))
                 if source else None)  # (its weights: init_from's, per shard)
        self.model = model_lib.build_model(cfg, self.arch, self.diffusion, model, source, model_options)
        self.sharding_rules = model_lib.SHARDING_RULES[self.arch]
        self.vocab_size = int(self.model.config.vocab_size)
        self.mask_id = int(cfg.mask_id) if int(cfg.mask_id) >= 0 else self.tok.mask_id
        if self.objective == "masked" and self.mask_id is None:
            raise ValueError("objective='masked' needs task.mask_id (the tokenizer has no mask token; pick an id the "
                             "data never uses, e.g. 0 = <|endoftext|> for SmolLM2)")
        self.decoder = cfg.decoder or ("ar" if not self.diffusion else "refine" if self.objective == "sundae" else "topk")
        self._eval_rows = None

    # ------------------------------------------------------------------ model

    def init_params(self, rng):
        z = jnp.zeros((1, 4), jnp.int32)
        if self.arch == "decoder":
            return self.model.init(rng, z)["params"]
        return self.model.init(rng, z, z)["params"]

    def decoder_logits(self, params, x, mask):
        """Decoder-only denoiser: x [B, L] int, mask [B|1, 1, L, L] bool -> logits [B, L, V] (shifted if configured)."""
        logits = self.model.apply({"params": params}, x, mask=mask)
        return model_lib.shift_logits(logits) if self.cfg.logit_shift else logits

    def t5_views(self, batch):
        return model_lib.t5_views(batch, int(self.cfg.target_length), self.pad_id)

    def t5_logits_fn(self, params, enc_ids, enc_mask):
        return model_lib.t5_logits_fn(self.model, params, enc_ids, enc_mask)

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
            gen = model_lib.target_region(pl, L) & ex[:, None]
            rng_mask, rng = jax.random.split(rng)
            ratio = None
            if int(self.cfg.anneal_steps) > 0 and "step" in batch:
                ratio = model_lib.anneal_ratio(jnp.asarray(batch["step"])[0], int(self.cfg.anneal_steps))
            mask = model_lib.diffusion_attention_mask(pl, L, ratio, rng_mask)

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
            yield with_step(batch, step)

    def abstract_batch(self, global_batch_size):
        return batch_shapes(with_step(padding_batch(self.fmt, self.length, global_batch_size), 0))

    # ------------------------------------------------------------------ TextGenTask hooks

    decode_program = dec.decode_program  # (task, show) -> the jitted program of self.decoder
    _decode = TextGenTask.decode
    _fit_prompts = dec.fit_prompts  # (task, prompts) -> (row ids, cut records)

    def _encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        return self._fit_prompts(prompts)[0]

    def _host_inputs(self, prompts_ids: list[list[int]]) -> dict:
        return dec.host_inputs(prompts_ids, self.length, self.pad_id)

    def pack_prompts(self, prompts):
        ids, cuts = self._fit_prompts(prompts)
        return self._host_inputs(ids), cuts

    def rows(self) -> dict:
        """The held-out split's packed rows (all of it, packed once)."""
        self._eval_rows = self._eval_rows or next(self.eval_batcher.eval_batches(self.eval_batcher.num_examples))
        return self._eval_rows

    def _prompt_ids(self) -> list[list[int]]:  # the held-out prompts' row ids (start token, separator)
        return [self.rows()["tokens"][i, :p].tolist() for i, p in enumerate(self.rows()["prompt_length"])]

    def eval_set(self) -> EvalSet:
        ids, rows = self._prompt_ids(), self.rows()
        return EvalSet([self.tok.decode(p, skip_special_tokens=True) for p in ids],
                       self.cut_texts(rows["tokens"], rows["prompt_length"]), self._host_inputs(ids))

    def own_prompts(self):
        ids = self._prompt_ids()[: int(self.cfg.num_generate)]
        return [self.tok.decode(p, skip_special_tokens=True) for p in ids], self._host_inputs(ids), [None] * len(ids)

    def output_start(self, inputs, i):
        return 0 if self.decoder == "ar" or self.arch == "encoder_decoder" else int(inputs["prompt_length"][i])

    @property
    def eval_decodes(self) -> bool:
        return bool(self.cfg.eval_decode)

    @property
    def eval_samples_shown(self) -> int:
        return int(self.cfg.num_generate)

    def decoder_record(self, seconds, method):
        return {"decoder": self.decoder, **({"decode_seconds": seconds} if method == "evaluate" else {})}

    def cut_hint(self) -> str:
        return (f"lower --config.task.min_target_slots (now {self.cfg.min_target_slots}) or raise the row length "
                f"(the last of --config.task.buckets={tuple(self.cfg.buckets)}) to keep more")

    def sample_extras(self, out, inputs, i, show):
        s = {"log_prob": float(out["score"][i])} if "score" in out else {}
        return {**s, **(dec.trajectory(self, out["steps"], inputs, i) if show else {})}

    # ------------------------------------------------------------------ likelihood (TextGenTask hooks)

    @property
    def likelihood_kind(self) -> str:
        """"exact" for stage 1 (AR), "elbo" for the masked objective; "" (none) for SUNDAE and T5."""
        if self.arch != "decoder":
            return ""
        return "exact" if not self.diffusion else "elbo" if self.objective == "masked" else ""

    def likelihood_layout(self):
        F.require(bool(self.likelihood_kind), "task", f"stage={self.stage} objective={self.objective} arch={self.arch}",
                  "arch='decoder' with stage 1 (exact AR likelihood) or objective='masked' (MC ELBO): SUNDAE and T5 "
                  "runs have no likelihood here")
        f = self.fmt
        return RowLayout(self.length, self.pad_id, f.start_id, f.sep_id, f.end_id)

    @functools.lru_cache(maxsize=1)
    def log_prob_program(self):
        """Stage 1: the training forward (``ar_attention``, prefix = the row's prompt), log p(x_l | x_<l) at slot
        l; masked diffusion: the full attention of decoding over the row with ``masked`` slots set to mask_id."""

        def run(params, batch, index):
            del index
            tokens, pl = batch["tokens"], batch["prompt_length"]
            if not self.diffusion:
                logits = self.model.apply({"params": params}, tokens, attention=self.cfg.ar_attention,
                                          prefix_length=pl, attention_mask=batch["valid"])[:, :-1]
                zero = jnp.zeros_like(tokens[:, :1])
                lp = jnp.concatenate([zero.astype(logits.dtype), token_log_probs(logits, tokens[:, 1:])], axis=1)
                return {"log_probs": lp,
                        "argmax": jnp.concatenate([zero, jnp.argmax(logits, -1).astype(jnp.int32)], axis=1)}
            x = jnp.where(batch["masked"], self.mask_id, tokens)
            mask = model_lib.diffusion_attention_mask(pl, tokens.shape[1])
            logits = exclude_token_logit(self.decoder_logits(params, x, mask), self.mask_id)
            return {"log_probs": token_log_probs(logits, tokens), "argmax": jnp.argmax(logits, -1).astype(jnp.int32)}

        return jax.jit(run)

    # ------------------------------------------------------------------ evaluate

    def heldout_loss(self, params, rng, rows, context) -> float:
        """Mean per-example loss (this stage's objective) over the held-out split, keys fold_in(rng, index)."""
        keys = ("tokens", "corruptible", "valid", "prompt_length", "target_length", "example_mask")
        inputs = {k: rows[k] for k in keys}
        one = lambda p, b, k: self.loss_fn(p, jax.tree_util.tree_map(lambda x: x[None], b), k)[0]  # noqa: E731
        fn = jax.jit(lambda p, b, idx, r: jax.vmap(one, in_axes=(None, 0, 0))(p, b, example_keys(r, idx)))
        per = context.map_batches(lambda b, i: fn(params, b, i, rng), inputs, batch_size=int(self.cfg.eval_batch_size))
        return float(np.mean(per))

    def eval_header(self, params, rng, context) -> dict:
        t0 = time.perf_counter()
        return {"stage": self.stage, "objective": self.objective, "arch": self.arch,
                "heldout_loss": self.heldout_loss(params, jax.random.fold_in(rng, 1), self.rows(), context),
                "heldout_loss_seconds": time.perf_counter() - t0}


@register_task("ar2diff", config=AR2DiffConfig)
def from_config(cfg: AR2DiffConfig, arch_source: str | None = None, model_options=None, shapes_only: bool = False):
    return AR2DiffTask(cfg, arch_source, model_options, shapes_only)
