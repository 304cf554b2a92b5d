"""AR2Diff (papers.md 001) at full size: a local Llama / Qwen2 / Mistral HF dir on tfds data.

``arg``: ``"translation"`` (default; tfds ``wmt14_translate/fr-en``, English -> French, BLEU) or
``"squad"`` (tfds ``squad``: prompt = question + context, target = the first answer; EM / F1).
Set the paths on the command line (nothing is downloaded; tfds data must be prepared as array_record)::

    python -m diffjax pipeline --config=configs/ar2diff_full.py:squad --root=/ckpt/ar2diff_squad \\
        --config.init_from=/models/Qwen2.5-0.5B \\
        --config.task.stage2.data_dir=/data/tfds --config.task.stage3.data_dir=/data/tfds

``config.init_from`` gives the weights, the architecture and the tokenizer. Stage 1 = the HF checkpoint
itself (0 steps; ``init_from`` seeds stage 2); stage 2 = N = 10k steps
of diffusion continued pretraining on C4-style text (tfds ``c4/en``, prefix-LM split in half), switched
straight to bidirectional attention as paper 001 does; stage 3 = finetuning (paper 001: lr 1e-4).
DiffuLLaMA's options stay available: ``--config.task.logit_shift=True --config.task.anneal_steps=1000``
(attention-mask annealing over 1k steps and the logit shift of HKUNLP/DiffuLLaMA, not paper 001's).
Batch 64 x 256 tokens (SQuAD: 512), bf16-friendly remat, Megatron rules over the "model" axis.
"""

import ml_collections

from diffjax.train.config import base_config


def stage(data, derive, steps, learning_rate, prompt_field="", target_field="", split="train"):
    return ml_collections.ConfigDict(dict(
        data=data, derive=derive, steps=steps, learning_rate=learning_rate, max_examples=0, max_words=10,
        prompt_field=prompt_field, target_field=target_field, data_dir="", split=split))


def get_config(arg=None):
    kind = arg or "translation"
    if kind not in ("translation", "squad"):
        raise ValueError(f"configs/ar2diff_full.py: arg must be 'translation' or 'squad', got {arg!r}")
    c = base_config()
    if kind == "translation":
        task = stage("tfds:wmt14_translate/fr-en", "", 100_000, 1e-4, prompt_field="en", target_field="fr")
        length = 256
    else:
        task = stage("tfds:squad", "", 20_000, 1e-4, prompt_field="question", target_field="answers")
        length = 512
    c.task = ml_collections.ConfigDict(dict(
        name="ar2diff", stage=3, arch="decoder", architecture="", model=ml_collections.ConfigDict({}),
        tokenizer="", style="llama", cache_dir="~/.cache/diffjax/ar2diff", buckets=(length,), seed=0,
        target_length=128, objective="sundae", normalize="sequence", unroll_steps=2, mask_id=-1,
        logit_shift=False, anneal_steps=0,  # DiffuLLaMA's options (see above), off: paper 001's plain switch
        ar_attention="prefix",
        decoder="", num_steps=10, temperature=0.2, num_samples=8, greedy=False, max_new_tokens=length // 2,
        min_target_slots=64, eval_examples=1000, eval_batch_size=64, eval_decode=True, num_generate=8,
        stage1=stage(task.data, "", 0, 1e-4, task.prompt_field, task.target_field),
        stage2=stage("tfds:c4/en", "split_half", 10_000, 1e-3, target_field="text"),
        stage3=task,
    ))
    c.optimizer.learning_rate = 1e-4
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 500
    c.train.num_steps = 10_000
    c.train.global_batch_size = 64
    c.train.log_every = 50
    c.train.checkpoint_every = 1000
    c.train.eval_every = 0
    # Scale-out choices (README "Scaling out"): fsdp over "data" (use "fsdp+tp" with mesh_shape (-1, 2..8) for
    # models >= 7B), the family's TP table (the task's own), one scanned layer, full remat (the memory of the
    # old task.remat=True), bf16 compute with fp32 params / Adam / softmax / loss.
    c.mesh_shape = (-1, 1)
    c.sharding = "fsdp"
    c.scan_layers, c.remat, c.precision = True, "full", "bf16"
    c.lock()
    return c
