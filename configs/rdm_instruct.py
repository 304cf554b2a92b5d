"""Paper 002's instruction finetuning: prompt/response pairs from a local JSONL (FLAN-style fields)
rendered by ``task.prompt_template``, fixed maximum length cut at the first [SEP] (papers.md 002).

    python -m diffjax train --config=configs/rdm_instruct.py --workdir=runs/instruct \\
        --config.task.data=flan.jsonl --config.task.prompt_template="{inputs}" --config.task.target_field=targets

``arg``: None (a JSONL path must be set), or "embedded": the embedded multi-task set of
``diffjax.data.instructions`` (unshuffle + reverse + sentiment + first_words trained together, scored
per task, ``copy`` held out and evaluated zero-shot) on the real MiniLM weights, CPU-sized.
"""

from diffjax.models import bert
from diffjax.train.config import base_config, load_config_module


def _demo():
    return load_config_module("rdm_minilm_demo.py", relative_to=__file__)


def get_config(arg=None):
    c = base_config()
    d = _demo().minilm_dir()
    t = _demo().task_config()
    t.update(dict(data="", prompt_template="Instruction: {instruction} Input: {input}", target_field="output",
                  length_mode="fixed", length_max=0, buckets=(48, 64), gen_length=64, max_words=8,
                  decoder="topk", num_steps=32, eval_max_examples=200, eval_batch_size=50))
    if arg == "embedded":
        t.data = "instructions:unshuffle+reverse+sentiment+first_words"
        t.zero_shot_tasks = ("copy",)
        t.prompt_template = "{instruction} {input}"
        t.max_per_task = 400
        t.eval_max_examples = 250
    elif arg not in (None, ""):
        raise ValueError(f"configs/rdm_instruct.py: unknown arg {arg!r}; use 'embedded' or nothing.")
    c.task = t
    c.init_from = d
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = 50
    c.optimizer.weight_decay = 0.01
    c.train.num_steps = 600
    c.train.global_batch_size = 32
    c.train.log_every = 50
    c.train.checkpoint_every = 0
    c.mesh_shape = (-1, 1)
    c.sharding_rules = bert.SHARDING_RULES
    c.lock()
    return c
