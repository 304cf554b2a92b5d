"""Paper 002: a pretrained masked LM (BERT / RoBERTa / XLM-R) adapted into a masked diffusion LM.

Config (``config.task``; the configs ``configs/rdm_*.py`` document every field):

* model: ``config.init_from`` (a local HF dir, ``embedded:NAME`` or a run's workdir: the model at the
  root of its chain) gives the weights, the architecture (its ``config.json``) and, unless ``tokenizer``
  is set, the tokenizer; ``architecture`` (an HF dir) gives them for a random init (``init_from=""``)
  only. ``model`` (``BertConfig`` overrides, e.g. ``num_layers``), ``length_max`` (> 0 adds the length
  head), ``dropout`` (train with the model's dropout). The denoiser is ``BertEncoder`` with its MLM head
  (tied to the word embeddings); a checkpoint without one (MiniLM) gets the head transform fresh,
  listed in ``init_from.json``.
* data: ``data`` (a text-pipeline source ``embedded:`` / ``.jsonl`` / ``.tsv`` / ``tfds:``, or
  ``instructions:TASK+TASK`` for the embedded instruction tasks of ``diffjax.data.instructions``),
  ``split`` / ``eval_split``, ``prompt_field`` / ``target_field``, ``prompt_template`` (instruction
  data: ``template.format(**record)``; "" = no template), ``buckets``, ``cache_dir``, ``seed``,
  ``zero_shot_tasks`` (instruction tasks evaluated but never trained on).
* loss: ``loss`` ("rdm" | "elbo"), ``weighting`` (RDM: "reciprocal" | "linear" | "constant"),
  ``num_timesteps`` (T), ``normalize``, ``length_loss_weight`` (CE of the length head, papers.md: 0.1).
* generation (``tasks/masked_lm_decode.py``; prompts, texts, metrics and ``generate`` of the family in
  ``tasks/textgen_task.py``): ``decoder`` (``diffusion/decoders.py``) and its options, ``length_mode``
  ("head" | "fixed"), ``length_beam``, ``length_select`` ("decode_scores": the authors' choice among the
  length beam by the mean decode-time log-prob | "rescore": one more pass with nothing masked),
  ``gen_length`` (static length of the generation program), ``eval_max_examples``, ``show_steps_shown``.
* metrics: ``bleu_tokenizer`` (sacrebleu, "13a"), ``bleu_lowercase`` (paper 002's authors: True); the
  convention is written next to every BLEU in results.json (``bleu_convention``).

The prompt/source is never masked and carries no loss (``corruptible`` of the packed batch: the
target and its closing [SEP]). ``evaluate`` writes BLEU (sacrebleu), exact match and length-head
accuracy (and the same per instruction task); references are the targets as the tokenizer writes
them back (lower case for an uncased model), so an exact copy scores 100. ``generate``'s prompts keep at
most half the ``gen_length`` row (their last tokens: training's truncation policy for a long target), so the
output always has room; a cut is printed and recorded per prompt (``prompt_truncated``, ``tasks/prompts.py``).
Every field has a range (``MaskedLMConfig``, ``tasks/masked_lm_fields.py``), checked before anything loads.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.checkpoints import hf_bert
from diffjax.models import bert
from diffjax.checkpoints.pretrained import pick_architecture
from diffjax.checkpoints.hf import read_hf_config
from diffjax.data import instructions
from diffjax.data.text import (Packer, PackingFormat, TextBatcher, TextExamples, load_tokenizer, padding_batch,
                               parse_source, tokenize_cached)
from diffjax.diffusion import decoders
from diffjax.diffusion.masked import exclude_token_logit, masked_diffusion_elbo, rdm_loss, token_log_probs
from diffjax.evaluation.likelihood import RowLayout
from diffjax.evaluation import text_metrics
from diffjax.tasks import masked_lm_decode as dec
from diffjax.tasks import prompts as prompt_lib
from diffjax.tasks.base import batch_shapes, register_task
from diffjax.tasks.masked_lm_fields import MaskedLMConfig
from diffjax.tasks.textgen_task import EvalSet, TextGenTask


def padding_as_target(batch: dict) -> dict:
    """Fixed-length training (``length_mode="fixed"``, papers.md 002: a fixed maximum length, the output
    cut at the first EOS): the slots after an example's closing SEP become target too — they hold PAD,
    are corrupted and scored like the target, attended, and in the target segment — because fixed-length
    decoding generates every slot after the prompt. Without this the model never sees [MASK] past the
    target and fills those slots with repeats of frequent words. Rows that are batch padding
    (``example_mask`` False) are left alone. batch: the packed fields [B, L] -> the same dict, updated."""
    L = batch["tokens"].shape[1]
    pos = jnp.arange(L)[None]
    real = batch["example_mask"].astype(bool)[:, None] if "example_mask" in batch else True
    tail = (pos >= batch["prompt_length"][:, None]) & ~batch["valid"].astype(bool) & real
    out = dict(batch)
    out["corruptible"] = batch["corruptible"] | tail
    out["valid"] = batch["valid"] | tail
    out["attention_mask"] = batch["attention_mask"].astype(bool) | tail
    out["segment_ids"] = jnp.where(tail, 1, batch["segment_ids"]).astype(batch["segment_ids"].dtype)
    return out


class MaskedLMTask(TextGenTask):
    name = "masked_lm"
    sharding_rules = bert.SHARDING_RULES

    def __init__(self, cfg: MaskedLMConfig, arch_source: str | None = None, model_options=None):
        """``arch_source``: the model ``config.init_from`` gives (``build_task``); None = random init from
        ``cfg.architecture``. ``model_options``: scanned layers, remat, precision (``models.options``)."""
        self.cfg = cfg
        source = pick_architecture(arch_source, cfg.architecture, required=True)
        self.tokenizer = self.tok = tok = load_tokenizer(cfg.tokenizer or source)
        if tok.mask_id is None:
            raise ValueError(f"tokenizer of {cfg.tokenizer or source} has no [MASK] token: a masked diffusion LM needs one")
        self.fmt = PackingFormat.for_tokenizer(tok, "bert")
        self.mask_id, self.pad_id, self.sep_id = tok.mask_id, self.fmt.pad_id, self.fmt.end_id
        self.stop_ids = {self.sep_id, self.pad_id}  # an output ends at the first [SEP] / [PAD]
        overrides = dict(cfg.model.items()) if cfg.model is not None else {}
        self.model = hf_bert.model_from_hf_config(read_hf_config(source), mlm_head=True, use_pooler=False,
                                                  length_max=int(cfg.length_max), **overrides)
        if model_options is not None:
            self.model = self.model.with_options(model_options)
        self.use_segments = self.model.config.type_vocab_size >= 2
        self._batcher = None

    # ------------------------------------------------------------------ data
    def examples(self, split: str) -> tuple[TextExamples, list[str]]:
        """(examples, per-example task names) of ``split`` (``"all"`` for non-instruction data)."""
        c = self.cfg
        if c.data.startswith("instructions:"):
            names = c.data[len("instructions:"):].split("+")
            if split == c.eval_split:
                names = names + [n for n in c.zero_shot_tasks if n not in names]
            kw = dict(max_per_task=int(c.max_per_task) or None, seed=int(c.seed), max_words=int(c.max_words))
            return instructions.embedded_tasks(names, split, template=c.prompt_template or instructions.DEFAULT_TEMPLATE, **kw)
        if c.prompt_template and c.data.endswith(".jsonl"):
            ex, tasks = instructions.read_instruction_jsonl(c.data, template=c.prompt_template,
                                                            target_field=c.target_field or "targets")
            return ex, tasks
        src = parse_source(c.data, split=split, data_dir=c.data_dir or None, prompt_field=c.prompt_field or None,
                           target_field=c.target_field or None, max_examples=int(c.max_examples) or None)
        ex = src.read()
        return ex, ["all"] * len(ex)

    def _packer(self, split: str, buckets) -> tuple[Packer, list[str]]:
        ex, tasks = self.examples(split)
        tokenized = tokenize_cached(ex, self.tokenizer, cache_dir=self.cfg.cache_dir or None)
        return Packer(tokenized, self.fmt, buckets), tasks

    @property
    def batcher(self) -> TextBatcher:
        if self._batcher is None:
            self._batcher = TextBatcher(self._packer(self.cfg.split, tuple(self.cfg.buckets))[0], seed=int(self.cfg.seed))
        return self._batcher

    def train_batches(self, start_step, *, global_batch_size, process_index=0, process_count=1):
        return self.batcher.batches(start_step, global_batch_size=global_batch_size, process_index=process_index,
                                    process_count=process_count)

    def abstract_batch(self, global_batch_size):
        return batch_shapes(padding_batch(self.fmt, max(self.cfg.buckets), global_batch_size))

    # ------------------------------------------------------------------ model
    def init_params(self, rng):
        return hf_bert.init_params(self.model, rng)

    def _apply(self, params, x, att, segment, rng=None, **kw):
        tti = segment if self.use_segments else jnp.zeros_like(x)
        det = rng is None
        return self.model.apply({"params": params}, x, att, tti, deterministic=det,
                                rngs=None if det else {"dropout": rng}, **kw)

    def loss_fn(self, params, batch, rng):
        c = self.cfg
        rng_loss, rng_drop, rng_drop2 = jax.random.split(rng, 3)
        drop = rng_drop if c.dropout else None
        if c.length_mode == "fixed":
            batch = padding_as_target(batch)
        att, seg = batch["attention_mask"], batch["segment_ids"]

        def logits_fn(x, t):
            return self._apply(params, x, att, seg, drop)["logits"]

        common = dict(mask_id=self.mask_id, corruptible=batch["corruptible"], valid=batch["valid"], normalize=c.normalize)
        if c.loss == "rdm":
            loss, aux = rdm_loss(logits_fn, batch["tokens"], rng_loss, num_timesteps=int(c.num_timesteps),
                                 weighting=c.weighting, **common)
        elif c.loss == "elbo":
            loss, aux = masked_diffusion_elbo(logits_fn, batch["tokens"], rng_loss, **common)
        else:
            raise ValueError(f"task.loss={c.loss!r}: use 'rdm' or 'elbo'")
        metrics = {"diffusion_loss": loss, "loss_per_token": aux["loss_per_token"], "mask_rate": aux["mask_rate"]}
        if c.length_max:
            x_src, att_src = dec.length_inputs(batch["tokens"], batch["prompt_length"], self.pad_id)
            ll = self._apply(params, x_src, att_src, jnp.zeros_like(x_src), rng_drop2 if c.dropout else None)["length_logits"]
            target = jnp.clip(batch["target_length"], 0, int(c.length_max))
            ce = -jnp.take_along_axis(jax.nn.log_softmax(ll), target[:, None], -1)[:, 0]
            w = batch["example_mask"].astype(jnp.float32)
            len_loss = jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)
            metrics["length_loss"] = len_loss
            metrics["length_acc"] = jnp.sum((jnp.argmax(ll, -1) == target) * w) / jnp.maximum(jnp.sum(w), 1.0)
            loss = loss + float(c.length_loss_weight) * len_loss
        return loss, metrics

    # ------------------------------------------------------------------ generation (TextGenTask hooks)
    @property
    def decoder(self) -> str:
        return self.cfg.decoder

    def _decode_kw(self, return_history: bool) -> dict:
        return dec.decode_options(self.cfg, self.tokenizer, self.fmt, return_history)

    @functools.lru_cache(maxsize=4)
    def decode_program(self, return_history: bool):
        kw = self._decode_kw(return_history)

        def run(params, batch, index, rng):
            model_fn = lambda x, att, seg: self._apply(params, x, att, seg)["logits"]
            length_fn = lambda x, att: self._apply(params, x, att, jnp.zeros_like(x))["length_logits"]
            cached = None
            if kw["decoder_kwargs"].get("cache", "none") != "none":  # the K/V cache pair (decode_one)
                types = lambda x, seg: seg if self.use_segments else jnp.zeros_like(x)
                apply = functools.partial(self.model.apply, {"params": params})
                cached = (lambda x, att, seg: apply(x, att, types(x, seg), method=bert.BertEncoder.kv_cache),
                          lambda x, att, seg, c, start, width: apply(x, att, types(x, seg), c, start, width,
                                                                     method=bert.BertEncoder.window_logits))
            return dec.decode_batch(model_fn, length_fn if self.cfg.length_max else None, batch, index, rng,
                                    cached_model=cached, **kw)

        return jax.jit(run)

    def _pack_prompts(self, examples: TextExamples) -> dict:
        return dec.pack_prompts(examples, self.tokenizer, self.fmt, int(self.cfg.gen_length))

    _program = decode_program  # (its lru_cache: ``_program.cache_clear()``)

    def program_inputs(self, inputs: dict) -> dict:
        return {"tokens": inputs["tokens"], "prompt_length": inputs["prompt_length"]}

    def pack_prompts(self, prompts: list[str]) -> tuple[dict, list[dict | None]]:
        packed = self._pack_prompts(TextExamples("prompts", list(prompts), [""] * len(prompts)))
        return packed, [prompt_lib.truncation(a, b) for a, b in zip(packed["prompt_tokens_in"], packed["prompt_tokens_kept"])]

    def own_prompts(self):
        ex, _ = self.examples(self.cfg.eval_split)
        prompts = list(ex.prompts[:min(len(ex), int(self.cfg.num_generate))])
        return (prompts, *self.pack_prompts(prompts))

    def _generate_packed(self, params, rng, packed, context, return_history=False):
        return self.decode(params, rng, packed, context, show=return_history)

    def cut_hint(self) -> str:
        return f"raise --config.task.gen_length (now {int(self.cfg.gen_length)}) to keep more"

    def decoder_record(self, seconds: float, method: str) -> dict:
        c = self.cfg
        rec = {"decoder": c.decoder, "decoder_options": decoders.sampler_kwargs(c.decoder, c), "length_mode": c.length_mode}
        if method == "evaluate":
            rec.update(length_beam=int(c.length_beam), length_select=c.length_select)
        return {**rec, "seconds": seconds}

    def sample_extras(self, out: dict, inputs: dict, i: int, show: bool) -> dict:
        row = {"length_pred": int(out["length_pred"][i]), "decoder_calls": int(out["decoder_calls"][i])}
        if show:
            row["steps"] = dec.show_steps(self.tokenizer, out["history"][i], int(inputs["prompt_length"][i]),
                                          mask_id=self.mask_id, stop_ids=self.stop_ids | {self.mask_id},
                                          num_shown=int(self.cfg.show_steps_shown))
        return row

    # ------------------------------------------------------------------ likelihood (TextGenTask hooks)
    likelihood_kind = "elbo"

    def likelihood_layout(self) -> RowLayout:
        f = self.fmt
        return RowLayout(int(self.cfg.gen_length), int(f.pad_id), f.start_id, f.sep_id, f.end_id)

    @functools.lru_cache(maxsize=1)
    def log_prob_program(self):
        """Rows as training packs them (the continuation in segment 1); with ``length_mode="fixed"`` the slots
        after the closing [SEP] are attended and hold [PAD], as ``padding_as_target`` trains them."""
        fixed = self.cfg.length_mode == "fixed"

        def run(params, batch, index):
            del index
            tokens, valid = batch["tokens"], batch["valid"].astype(bool)
            after = jnp.arange(tokens.shape[1])[None] >= batch["prompt_length"][:, None]
            att = valid | after if fixed else valid
            x = jnp.where(batch["masked"], self.mask_id, tokens)
            logits = exclude_token_logit(self._apply(params, x, att, (after & att).astype(jnp.int32))["logits"],
                                         self.mask_id)
            return {"log_probs": token_log_probs(logits, tokens), "argmax": jnp.argmax(logits, -1).astype(jnp.int32)}

        return jax.jit(run)

    # ------------------------------------------------------------------ evaluation (TextGenTask hooks)
    def eval_set(self) -> EvalSet:
        """The eval split packed into ``gen_length`` rows, capped at ``eval_max_examples`` with every
        instruction task kept (``instructions.balanced_indices``)."""
        c = self.cfg
        packer, tasks = self._packer(c.eval_split, (int(c.gen_length),))
        idx = instructions.balanced_indices(tasks, int(c.eval_max_examples))
        packed = packer.pack(idx, int(c.gen_length))
        pl = packed["prompt_length"]
        prompts = [self.tokenizer.decode(t[1:max(int(p) - 1, 1)], skip_special_tokens=True) for t, p in zip(packed["tokens"], pl)]
        return EvalSet(prompts, self.cut_texts(packed["tokens"], pl), packed, [tasks[i] for i in idx])

    def decode_metrics(self, out: dict, es: EvalSet) -> dict:
        res = {"decoder_calls_per_example": float(np.mean(out["decoder_calls"])),
               "decoder_calls_per_token": float(np.sum(out["decoder_calls"]) / max(np.sum(out["generated"]), 1))}
        if self.cfg.length_mode == "head":
            res["length"] = text_metrics.length_accuracy(out["length_pred"], es.inputs["target_length"])
        return res


@register_task("masked_lm", config=MaskedLMConfig)
def from_config(cfg: MaskedLMConfig, arch_source: str | None = None, model_options=None):
    return MaskedLMTask(cfg, arch_source, model_options)
