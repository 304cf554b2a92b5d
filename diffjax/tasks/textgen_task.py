"""``TextGenTask``: the base of the text generation tasks (``masked_lm``, paper 002; ``ar2diff``, paper 001).

A paper supplies how its prompts become decoder inputs and its decoding program; the base owns the rest:

* **prompts -> inputs** (``pack_prompts``): user prompts packed into the task's static rows, a prompt
  longer than its share cut from the left and the cut reported per prompt (``tasks/prompts.py``);
* **one decoder entry** (``decode``): the task's jitted ``decode_program(show)`` run over the inputs in
  global batches of ``eval_batch_size`` (``context.map_batches``; per-example keys
  ``runtime.example_keys(rng, global index)``, so outputs do not depend on the mesh). The decoder is
  chosen by name in ``diffusion/decoders.py`` (``self.decoder``);
* **outputs -> texts** (``texts``): the generated ids after ``output_start``, cut at the first of
  ``stop_ids`` (``cut_at``), detokenised without specials and stripped;
* **evaluate**: the held-out set's references against the outputs: BLEU (sacrebleu, the config's
  ``bleu_tokenizer`` / ``bleu_lowercase`` when it has them), exact match, SQuAD EM / F1 (and per
  instruction task), plus the task's own numbers (``eval_header``, ``decode_metrics``);
* **generate** (``python -m diffjax generate [--prompt=...] [--show_steps]``): one row per prompt,
  ``{"prompt", "output", "prompt_truncated", ...}`` plus the task's ``sample_extras`` (the trajectory
  with ``show_steps`` when the decoder has one).

Subclasses set ``cfg`` (``config.task``), ``tok`` (``data.text.TextTokenizer``), ``decoder`` (a name of
``diffusion.decoders.DECODERS``) and ``stop_ids``, and implement the hooks marked below.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from diffjax.diffusion import decoders
from diffjax.evaluation import text_metrics
from diffjax.tasks import prompts as prompt_lib
from diffjax.tasks.base import Task

BLEU_FIELDS = ("bleu_tokenizer", "bleu_lowercase")


def cut_at(ids, stop_ids) -> list[int]:
    """Token ids ``[L]`` up to (excluding) the first id in ``stop_ids``."""
    out = []
    for i in np.asarray(ids).tolist():
        if i in stop_ids:
            break
        out.append(int(i))
    return out


@dataclasses.dataclass
class EvalSet:
    """The held-out examples as decoder inputs: ``prompts`` / ``references`` (N texts), ``inputs`` (the
    ``decode`` fields, [N, ...]) and per-example instruction task names (``tasks``; None = one task)."""

    prompts: list[str]
    references: list[str]
    inputs: dict
    tasks: list[str] | None = None


class TextGenTask(Task):
    """See the module docstring."""

    stop_ids: set = frozenset()

    # ------------------------------------------------------------------ hooks (the paper's)

    def pack_prompts(self, prompts: list[str]) -> tuple[dict, list[dict | None]]:
        """User prompts -> (decoder inputs [N, ...], per prompt its cut record or None)."""
        raise NotImplementedError

    def own_prompts(self) -> tuple[list[str], dict, list[dict | None]]:
        """``generate`` without prompts: (prompt texts, inputs, cuts) of the task's own examples."""
        raise NotImplementedError

    def eval_set(self) -> EvalSet:
        raise NotImplementedError

    def decode_program(self, show: bool) -> Callable:
        """The jitted ``(params, batch, index [B], rng) -> {"tokens" [B, L], ...}`` of ``self.decoder``;
        ``show``: also the trajectory (``"steps"`` / ``"history"``)."""
        raise NotImplementedError

    def program_inputs(self, inputs: dict) -> dict:
        """The fields of ``inputs`` the decoding program reads (default: all)."""
        return inputs

    def output_start(self, inputs: dict, i: int) -> int:
        """Where the output of row ``i`` starts in its decoded tokens (default: after the prompt)."""
        return int(inputs["prompt_length"][i])

    def decoder_record(self, seconds: float, method: str) -> dict:
        """The decoder's entries of results.json (``method="evaluate"``) / generate.json."""
        return {"decoder": self.decoder}

    def sample_extras(self, out: dict, inputs: dict, i: int, show: bool) -> dict:
        """More fields of generate.json's row ``i`` (and its printed lines, under ``"steps"`` / ``"chains"``)."""
        return {}

    def eval_header(self, params, rng, context) -> dict:
        """results.json entries computed before decoding (e.g. a held-out loss); default none."""
        return {}

    def decode_metrics(self, out: dict, es: EvalSet) -> dict:
        """The task's own numbers of the decoded eval set (e.g. the length head's accuracy)."""
        return {}

    def cut_hint(self) -> str:
        """Which field keeps more of a cut prompt (printed with the cut)."""
        return ""

    # ------------------------------------------------------------------ likelihood hooks (evaluation/harness.py)

    likelihood_kind: str = ""  # "elbo" (masked diffusion: the MC ELBO) | "exact" (AR); "" = no likelihood

    def likelihood_layout(self):
        """The ``evaluation.likelihood.RowLayout`` (special ids, static row length) of scored rows."""
        raise NotImplementedError(f"{self.name} runs do not serve log-likelihoods")

    def log_prob_program(self) -> Callable:
        """The jitted ``(params, batch, index [B]) -> {"log_probs" [B, L], "argmax" [B, L]}`` of rows ``batch``
        (``tokens``, ``valid``, ``prompt_length`` and, for ``likelihood_kind="elbo"``, ``masked`` [B, L]):
        elbo: log p(tokens[l] | tokens with ``masked`` slots set to [MASK]); exact: log p(tokens[l] | tokens[<l])
        (0 at slot 0). ``argmax``: the most likely token at each slot (never [MASK])."""
        raise NotImplementedError(f"{self.name} runs do not serve log-likelihoods")

    eval_rng_fold: int | None = None  # evaluate decodes with fold_in(rng, this) (None: rng itself)
    eval_decodes: bool = True
    eval_samples_shown: int = 12

    # ------------------------------------------------------------------ the family's own

    def decode(self, params, rng, inputs: dict, context, show: bool = False) -> dict:
        """``decode_program(show)`` over ``inputs`` [N, ...] in global batches -> host arrays [N, ...]."""
        fn = self.decode_program(bool(show))
        return context.map_batches(lambda b, i: fn(params, b, i, rng), self.program_inputs(inputs),
                                   batch_size=int(self.cfg.eval_batch_size))

    def cut_texts(self, rows, starts) -> list[str]:
        """Rows of ids [N, L] read from ``starts`` [N] to the first stop id -> N texts."""
        return [self.tok.decode(cut_at(np.asarray(r)[int(s):], self.stop_ids), skip_special_tokens=True).strip()
                for r, s in zip(rows, starts)]

    def texts(self, inputs: dict, tokens) -> list[str]:
        """Decoded tokens [N, L] -> the N output texts."""
        return self.cut_texts(tokens, [self.output_start(inputs, i) for i in range(len(tokens))])

    def bleu_kwargs(self) -> dict:
        """The BLEU convention of the config (paper 002's configs: sacrebleu 13a after lower-casing)."""
        return {k: (bool(getattr(self.cfg, k)) if k == "bleu_lowercase" else getattr(self.cfg, k))
                for k in BLEU_FIELDS if hasattr(self.cfg, k)}

    def text_metrics(self, hyps: list[str], refs: list[str], tasks: list[str] | None) -> dict:
        """BLEU / EM / SQuAD EM-F1 over all examples and, with several instruction tasks, per task."""
        res = text_metrics.generation_metrics(hyps, refs, **self.bleu_kwargs())
        if tasks is None:
            return res
        per_task = {}
        for name in sorted(set(tasks)):
            sel = [i for i, t in enumerate(tasks) if t == name]
            m = text_metrics.generation_metrics([hyps[i] for i in sel], [refs[i] for i in sel], **self.bleu_kwargs())
            m["zero_shot"] = name in tuple(getattr(self.cfg, "zero_shot_tasks", ()))
            per_task[name] = m
        if len(per_task) > 1:
            res["per_task"] = per_task
        return res

    def evaluate(self, params, rng, workdir, *, context, **kwargs):
        del workdir, kwargs
        res = self.eval_header(params, rng, context)
        if not self.eval_decodes:
            return res
        es = self.eval_set()
        t0 = time.perf_counter()
        decode_rng = rng if self.eval_rng_fold is None else jax.random.fold_in(rng, self.eval_rng_fold)
        out = self.decode(params, decode_rng, es.inputs, context)
        seconds = time.perf_counter() - t0
        hyps = self.texts(es.inputs, out["tokens"])
        res.update(self.decoder_record(seconds, "evaluate"))
        res.update(self.text_metrics(hyps, es.references, es.tasks))
        res.update(self.decode_metrics(out, es))
        res["samples"] = [{"prompt": es.prompts[i], "output": hyps[i], "reference": es.references[i],
                           **({"task": es.tasks[i]} if es.tasks is not None else {})}
                          for i in range(min(len(hyps), int(self.eval_samples_shown)))]
        if context.is_main:
            loss = f" heldout_loss={res['heldout_loss']:.4f}" if "heldout_loss" in res else ""
            print(f"{self.name} eval: decoder={self.decoder} EM={res['exact_match']:.3f} BLEU={res['bleu']:.2f} "
                  f"F1={res['squad_f1']:.3f}{loss}", flush=True)
        return res

    def generate(self, params, rng, workdir, *, context, prompts=None, show_steps=False, **kwargs):
        del workdir, kwargs
        if prompts is None:
            prompts, inputs, cuts = self.own_prompts()
        else:
            prompts = list(prompts)
            inputs, cuts = self.pack_prompts(prompts)
        show = bool(show_steps) and decoders.decoder(self.decoder).sampler is not None
        t0 = time.perf_counter()
        out = self.decode(params, rng, inputs, context, show=show)
        seconds = time.perf_counter() - t0
        texts = self.texts(inputs, out["tokens"])
        samples = []
        for i, (p, t) in enumerate(zip(prompts, texts)):
            s = {"prompt": p, "output": t, "prompt_truncated": cuts[i], **self.sample_extras(out, inputs, i, show)}
            if context.is_main:
                note = "" if cuts[i] is None else f"\n  {prompt_lib.note(cuts[i], self.cut_hint())}"
                print(f"[{i}] {p!r}{note}\n  -> {t!r}", flush=True)
                for j, line in enumerate(s.get("chains", s.get("steps", []))):
                    print(f"    {j}: {line}", flush=True)
            samples.append(s)
        return {**self.decoder_record(seconds, "generate"), "prompts_truncated": sum(c is not None for c in cuts),
                "samples": samples}

