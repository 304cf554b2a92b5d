"""The ``config.task`` fields of paper 002's masked diffusion LM (``tasks/masked_lm.py``) and their valid
ranges, checked before any data, tokenizer or weights load (``fields.ConfigError``). The decoders and
their options come from ``diffusion/decoders.py``; the length rules from ``tasks/masked_lm_decode.py``.
"""

from __future__ import annotations

from diffjax.diffusion import decoders
from diffjax.diffusion.masked import NORMALIZATIONS, RDM_WEIGHTINGS
from diffjax.evaluation import text_metrics
from diffjax.tasks import fields as F
from diffjax.tasks import masked_lm_decode as dec

MIN_LENGTH = 5  # [CLS] prompt [SEP] target [SEP]: a bucket / gen_length holds one prompt and one target token


def validate_task_config(c) -> None:
    """The valid range of every ``config.task`` field (``fields.ConfigError``); reads no data or weights."""
    F.check_fields(c, (
        ("model_dir", F.text()), ("tokenizer", F.text()), ("model", F.mapping()),
        ("length_max", F.integer(0, what="0 = no length head")), ("dropout", F.boolean()),
        ("data", F.text()), ("data_dir", F.text()), ("split", F.text(nonempty=True)),
        ("eval_split", F.text(nonempty=True)), ("prompt_field", F.text()), ("target_field", F.text()),
        ("prompt_template", F.text()), ("max_words", F.integer(4, what="instruction headlines have 4..max_words words")),
        ("max_per_task", F.integer(0, what="0 = all")), ("max_examples", F.integer(0, what="0 = all")),
        ("zero_shot_tasks", F.texts()), ("buckets", F.lengths(MIN_LENGTH)), ("cache_dir", F.text()),
        ("seed", F.integer(0)),
        ("loss", F.choice("rdm", "elbo")), ("weighting", F.choice(*RDM_WEIGHTINGS)), ("num_timesteps", F.integer(1)),
        ("normalize", F.choice(*NORMALIZATIONS)), ("length_loss_weight", F.number(0.0)),
        ("decoder", F.choice(*decoders.names("absorbing"))), ("num_steps", F.integer(1)), ("greedy", F.boolean()),
        ("temperature", F.number(0.0, low_open=True)), ("top_p", F.number(0.0, 1.0, what="0 = off")),
        ("remask", F.boolean()),
        ("unmask_schedule", F.choice(*decoders.UNMASK_SCHEDULES)),
        ("threshold", F.number(0.0, 1.0)), ("num_blocks", F.integer(1)),
        ("block_inner", F.choice(*decoders.BLOCK_INNER)), ("length_mode", F.choice(*dec.LENGTH_MODES)),
        ("length_beam", F.integer(1)), ("gen_length", F.integer(MIN_LENGTH)),
        ("length_select", F.choice(*dec.LENGTH_SELECT)),
        ("eval_max_examples", F.integer(1)), ("eval_batch_size", F.integer(1)), ("num_generate", F.integer(1)),
        ("show_steps_shown", F.integer(1)), ("bleu_tokenizer", F.choice(*text_metrics.BLEU_TOKENIZERS)),
        ("bleu_lowercase", F.boolean()),
    ))
    mode, length_max = F.get(c, "length_mode"), F.get(c, "length_max")
    if mode == "head" and length_max is not None:
        F.require(length_max >= 2, "task.length_max", length_max,
                  "an integer >= 2 with task.length_mode='head' (the length head predicts 2..length_max; "
                  "or --config.task.length_mode=fixed)")
        beam = F.get(c, "length_beam")
        if beam is not None:
            F.require(beam <= length_max - 1, "task.length_beam", beam,
                      f"an integer in [1, {length_max - 1}] (the length head's candidates 2..task.length_max={length_max})")
