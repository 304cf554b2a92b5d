"""The ``config.task`` of AR2Diff (paper 001, ``tasks/ar2diff.py``): ``AR2DiffConfig`` (with one
``StageFields`` per stage), a typed config (``fields.TaskConfig``) built once from the ConfigDict and
validated at construction, before any data, tokenizer or weights load (``fields.ConfigError``). The decoder
names come from ``diffusion/decoders.py`` ("" = the stage's default: "ar" in stage 1, "refine" for sundae,
"topk" for masked). Defaults: the SmolLM2 demo's (``configs/ar2diff_smollm2_demo.py``).
"""

from __future__ import annotations

import dataclasses

from diffjax.data.ar2diff_data import DERIVE_KINDS
from diffjax.diffusion import decoders
from diffjax.diffusion.masked import NORMALIZATIONS
from diffjax.tasks import fields as F

OBJECTIVES = ("sundae", "masked")
ARCHS = ("decoder", "encoder_decoder")


def _derive(value) -> bool:
    name, _, k = value.partition(":") if isinstance(value, str) else ("?", "", "")
    return name in DERIVE_KINDS and (k.isdigit() and int(k) >= 1 if name.endswith("_words") else not k)


@dataclasses.dataclass(frozen=True)
class StageFields(F.TaskConfig):
    """``config.task.stageS``: one stage's data and schedule (``python -m diffjax pipeline`` reads steps / lr)."""

    data: str = F.field(F.text(nonempty=True), "embedded:news_headlines", "a text source (data/ar2diff_data.py)")
    derive: str = F.field(F.Check(_derive, "'', 'split_half', 'last_words:K' or 'first_words:K' (K >= 1)"), "",
                          "how (prompt, target) pairs are derived from plain text")
    steps: int = F.field(F.integer(0), 0, "training steps of this stage (pipeline)")
    learning_rate: float = F.field(F.number(0.0, low_open=True), 1e-4, "peak learning rate (pipeline)")
    max_examples: int = F.field(F.integer(0, what="0 = all"), 0)
    max_words: int = F.field(F.integer(1), 10, "texts of at most this many words")
    prompt_field: str = F.field(F.text(), "")
    target_field: str = F.field(F.text(), "")
    data_dir: str = F.field(F.text(), "")
    split: str = F.field(F.text(nonempty=True), "train")


@dataclasses.dataclass(frozen=True)
class AR2DiffConfig(F.TaskConfig):
    """``config.task`` of ``ar2diff``. The weights and, with them, the architecture (and the default
    tokenizer) come from ``config.init_from``; with none, ``architecture`` or the ``model`` fields."""

    RENAMED = {"model_source": "config.init_from=PATH (.gguf / HF dir) gives the architecture and the weights; "
                               "for a random init set config.init_from='' and task.architecture=PATH "
                               "(or task.architecture='' and the task.model fields)"}

    name: str = F.field(F.choice("ar2diff"), "ar2diff")
    stage: int = F.field(F.integer(1, 3, what="1 AR, 2 diffusion pretraining, 3 diffusion finetuning"), 3)
    arch: str = F.field(F.choice(*ARCHS), "decoder", "decoder (Llama family) | encoder_decoder (T5)")
    architecture: str = F.field(F.text(), "", "a .gguf / HF dir whose architecture a random init takes; '' = the "
                                "model fields. Read only when config.init_from gives none; an error beside a "
                                "pretrained init_from")
    model: object = F.field(F.mapping(), None, "LlamaConfig / T5Config fields of a random init without architecture")
    remat: bool = F.field(F.boolean(), False, "older spelling of config.remat='full' (read when config.remat is "
                          "'none'); prefer the top-level config.remat")
    tokenizer: str = F.field(F.text(), "", "HF dir / .gguf of the tokenizer; '' = the architecture source's")
    style: str = F.field(F.choice("auto", "bert", "llama", "none"), "llama", "packing format")
    cache_dir: str = F.field(F.text(), "~/.cache/diffjax/ar2diff")
    buckets: tuple = F.field(F.lengths(4), (32,), "one bucket: the row length L (the last one is used)")
    seed: int = F.field(F.integer(0), 0)
    target_length: int = F.field(F.integer(1), 16, "encoder-decoder only: decoder slots")
    objective: str = F.field(F.choice(*OBJECTIVES), "sundae", "the objective of stages 2 and 3")
    normalize: str = F.field(F.choice(*NORMALIZATIONS), "token")
    unroll_steps: int = F.field(F.integer(1), 2, "SUNDAE unrolled denoising steps")
    mask_id: int = F.field(F.integer(-1, what="-1 = the tokenizer's mask token"), -1)
    logit_shift: bool = F.field(F.boolean(), False, "DiffuLLaMA: slot i predicted from the output at i - 1")
    anneal_steps: int = F.field(F.integer(0, what="0 = off"), 0, "DiffuLLaMA attention-mask annealing steps")
    ar_attention: str = F.field(F.choice("prefix", "causal"), "prefix", "stage 1's attention")
    decoder: str = F.field(F.choice("", *decoders.names()), "", "'' = ar (stage 1) / refine (sundae) / topk (masked)")
    num_steps: int = F.field(F.integer(1), 8)
    temperature: float = F.field(F.number(0.0, low_open=True), 0.2)
    num_samples: int = F.field(F.integer(1), 2)
    greedy: bool = F.field(F.boolean(), False)
    max_new_tokens: int = F.field(F.integer(1), 12, "AR decoding")
    num_blocks: int = F.field(F.integer(1), 4, "decoder 'block'")
    block_inner: str = F.field(F.choice(*decoders.BLOCK_INNER), "topk", "decoder 'block': the decoder in a block")
    cache: str = F.field(F.choice(*decoders.CACHE_MODES), "none", "K/V cache of block decoding (Fast-dLLM)")
    cache_refresh: str = F.field(F.choice(*decoders.CACHE_REFRESH), "block", "when the K/V cache is remade")
    min_target_slots: int = F.field(F.integer(1), 8, "output slots a cut prompt leaves")
    eval_examples: int = F.field(F.integer(1), 32)
    eval_batch_size: int = F.field(F.integer(1), 16)
    eval_decode: bool = F.field(F.boolean(), True)
    num_generate: int = F.field(F.integer(1), 4)
    stage1: StageFields = F.field(None, StageFields(), "stage 1 (AR)", nested=StageFields)
    stage2: StageFields = F.field(None, StageFields(), "stage 2 (diffusion pretraining)", nested=StageFields)
    stage3: StageFields = F.field(None, StageFields(), "stage 3 (diffusion finetuning)", nested=StageFields)

    def check(self) -> None:
        for st in ("stage1", "stage2", "stage3"):
            sc = getattr(self, st)
            name, _, k = sc.derive.partition(":")
            if name.endswith("_words") and k.isdigit():
                k = int(k)
                F.require(sc.max_words >= k + 2, f"task.{st}.max_words", sc.max_words,
                          f"an integer >= {k + 2} ({st}.derive={sc.derive!r} keeps texts of K + 2 .. max_words words)")
        length = self.buckets[-1]
        F.require(self.min_target_slots <= length - 3, "task.min_target_slots", self.min_target_slots,
                  f"an integer in [1, {length - 3}] (the row of task.buckets[-1]={length} slots keeps a start "
                  f"token, a prompt token and a separator)")
        if self.decoder in decoders.names("absorbing"):
            F.require(self.objective == "masked", "task.decoder", self.decoder,
                      "'', 'ar' or 'refine' with task.objective='sundae' (the unmask samplers need objective='masked')")
        if self.cache != "none":
            F.require(self.decoder in decoders.cached(), "task.cache", self.cache,
                      f"'none' with task.decoder={self.decoder!r} (a K/V cache needs a decoder that proceeds in "
                      f"blocks: {', '.join(decoders.cached())})")
            F.require(self.arch == "decoder" and not self.logit_shift, "task.cache", self.cache,
                      "'none' with task.arch='encoder_decoder' or task.logit_shift=True (the K/V cache serves the "
                      "decoder-only model without the logit shift)")
