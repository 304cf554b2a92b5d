"""Paper 002's recipe at full size: XLM-R (a local HF dir, e.g. ``xlm-roberta-base`` saved with
``save_pretrained``; the MLM head is reused as the denoiser) adapted with the RDM loss on WMT14 EN->DE
(``tfds:wmt14_translate/de-en`` prepared as array_record in ``task.data_dir``; see README for tfrecord data).

    python -m diffjax train --config=configs/rdm_xlmr_wmt14.py --workdir=runs/xlmr_wmt14 \\
        --config.init_from=/models/xlm-roberta-base --config.task.data_dir=~/tensorflow_datasets

``config.init_from`` gives the weights, the architecture and the tokenizer (a random init of the same
architecture: ``--config.init_from="" --config.task.architecture=/models/xlm-roberta-base``).

Recipe (papers.md 002): [source ; target] in one bidirectional stack, masks on the target only,
T = 50, reciprocal weighting, AdamW lr 5e-5, max target 128 tokens, length head (CE weight 0.1)
with a length beam of 3 chosen by the mean decode-time log-prob (the authors' ``score_select``), 50-step
top-k decoding; BLEU as the authors: sacrebleu 13a after lower-casing. ``arg``: None, or "base" / "large" (lr 1e-4 / 5e-5).
"""


from diffjax.train.config import base_config, load_config_module


def _demo():
    return load_config_module("rdm_minilm_demo.py", relative_to=__file__)


def get_config(arg=None):
    c = base_config()
    t = _demo().task_config()
    t.update(dict(
        data="tfds:wmt14_translate/de-en", data_dir="", prompt_field="en", target_field="de", prompt_template="",
        split="train", eval_split="test", buckets=(64, 128, 256), gen_length=256, length_max=130,
        weighting="reciprocal", normalize="token", num_timesteps=50, length_loss_weight=0.1, dropout=True,
        decoder="topk", num_steps=50, length_mode="head", length_beam=3, length_select="decode_scores",
        bleu_tokenizer="13a", bleu_lowercase=True, eval_max_examples=3003, eval_batch_size=64,
        cache_dir="~/.cache/diffjax/text"))
    c.task = t
    c.init_from = ""  # set to the XLM-R dir: its weights (the MLM head too; only the length head is fresh) and architecture
    c.optimizer.learning_rate = 1e-4 if arg in (None, "", "base") else 5e-5
    c.optimizer.warmup_steps = 2000
    c.optimizer.schedule = "linear"
    c.optimizer.weight_decay = 0.01
    c.train.num_steps = 100_000
    c.train.global_batch_size = 256
    c.train.log_every = 100
    c.train.checkpoint_every = 5000
    c.train.eval_every = 0
    # Scale-out choices (README "Scaling out"; size a run first with `python -m diffjax plan`): params, Adam
    # moments split over "data" (ZeRO-3; the 250k-word embedding dominates base / large), the BERT TP table
    # over "model" (the task's own: models/bert.py SHARDING_RULES), one scanned layer (compile time flat in
    # depth), matmul outputs kept in the backward pass, bf16 compute with fp32 params / Adam / softmax / loss.
    c.mesh_shape = (-1, 1)
    c.sharding = "fsdp"
    c.scan_layers, c.remat, c.precision = True, "dots_saveable", "bf16"
    if arg == "xxl":  # paper 002's XLM-R XXL (10.7B): python -m diffjax plan --config=...:xxl --mesh=64x4 --devices=256
        c.task.architecture = "preset:xlm-roberta-xxl"  # or c.init_from = "/models/xlm-roberta-xxl" (its weights)
        c.optimizer.learning_rate = 5e-5
        c.mesh_shape = (64, 4)
        c.sharding, c.scan_layers, c.remat, c.precision = "fsdp+tp", True, "full", "bf16"
    if arg not in (None, "", "base", "large", "xxl"):
        raise ValueError(f"configs/rdm_xlmr_wmt14.py: unknown arg {arg!r}; use 'base', 'large', 'xxl' or nothing.")
    c.lock()
    return c
