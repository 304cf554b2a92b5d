"""The ``config.task`` fields of AR2Diff (paper 001, ``tasks/ar2diff.py``) and their valid ranges, checked
before any data, tokenizer or weights load (``fields.ConfigError``). The decoder names come from
``diffusion/decoders.py`` ("" = the stage's default: "ar" in stage 1, "refine" for sundae, "topk" for masked).
"""

from __future__ import annotations

from diffjax.data.ar2diff_data import DERIVE_KINDS
from diffjax.diffusion import decoders
from diffjax.diffusion.masked import NORMALIZATIONS
from diffjax.tasks import fields as F

OBJECTIVES = ("sundae", "masked")
ARCHS = ("decoder", "encoder_decoder")


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
        ("ar_attention", F.choice("prefix", "causal")), ("decoder", F.choice("", *decoders.names())),
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
    if F.get(c, "decoder") in decoders.names("absorbing"):
        F.require(F.get(c, "objective") == "masked", "task.decoder", F.get(c, "decoder"),
                  "'', 'ar' or 'refine' with task.objective='sundae' (the unmask samplers need objective='masked')")
