"""The ``config.task`` of paper 002's masked diffusion LM (``tasks/masked_lm.py``): ``MaskedLMConfig``, a
typed config (``fields.TaskConfig``) built once from the ConfigDict and validated at construction, before
any data, tokenizer or weights load (``fields.ConfigError``). The decoders and their options come from
``diffusion/decoders.py``; the length rules from ``tasks/masked_lm_decode.py``. Defaults: the MiniLM demo's
values (``configs/rdm_minilm_demo.py``).
"""

from __future__ import annotations

import dataclasses

from diffjax.diffusion import decoders
from diffjax.diffusion.masked import NORMALIZATIONS, RDM_WEIGHTINGS
from diffjax.evaluation import text_metrics
from diffjax.tasks import fields as F
from diffjax.tasks import masked_lm_decode as dec

MIN_LENGTH = 5  # [CLS] prompt [SEP] target [SEP]: a bucket / gen_length holds one prompt and one target token


@dataclasses.dataclass(frozen=True)
class MaskedLMConfig(F.TaskConfig):
    """``config.task`` of ``masked_lm``. The weights and, with them, the architecture (the HF ``config.json``)
    and the default tokenizer come from ``config.init_from``; ``architecture`` only for a random init."""

    RENAMED = {"model_dir": "config.init_from=HF_DIR gives the architecture and the weights (and the tokenizer "
                            "unless task.tokenizer is set); for a random init set config.init_from='' and "
                            "task.architecture=HF_DIR"}

    name: str = F.field(F.choice("masked_lm"), "masked_lm")
    # model
    architecture: str = F.field(F.text(), "", "HF model dir (or embedded:NAME) whose config.json gives the "
                                "architecture of a random init; read only when config.init_from gives none, "
                                "an error beside a pretrained init_from")
    tokenizer: str = F.field(F.text(), "", "HF dir / .gguf of the tokenizer; '' = the architecture's")
    model: object = F.field(F.mapping(), None, "BertConfig overrides (e.g. num_layers=2)")
    length_max: int = F.field(F.integer(0, what="0 = no length head"), 24, "length head: predicts 2..length_max")
    dropout: bool = F.field(F.boolean(), False, "train with the model's dropout")
    # data
    data: str = F.field(F.text(), "instructions:unshuffle", "a text source (embedded: / .jsonl / .tsv / tfds:) "
                        "or instructions:TASK+TASK")
    data_dir: str = F.field(F.text(), "", "tfds data dir")
    split: str = F.field(F.text(nonempty=True), "train")
    eval_split: str = F.field(F.text(nonempty=True), "test")
    prompt_field: str = F.field(F.text(), "")
    target_field: str = F.field(F.text(), "")
    prompt_template: str = F.field(F.text(), "{input}", "instruction data: template.format(**record); '' = none")
    max_words: int = F.field(F.integer(4, what="instruction headlines have 4..max_words words"), 10)
    max_per_task: int = F.field(F.integer(0, what="0 = all"), 0)
    max_examples: int = F.field(F.integer(0, what="0 = all"), 0)
    zero_shot_tasks: tuple = F.field(F.texts(), (), "instruction tasks evaluated but never trained on")
    buckets: tuple = F.field(F.lengths(MIN_LENGTH), (32, 48), "static training sequence lengths")
    cache_dir: str = F.field(F.text(), "", "tokenised-text cache; '' = none")
    seed: int = F.field(F.integer(0), 0)
    # loss (papers.md 002)
    loss: str = F.field(F.choice("rdm", "elbo"), "rdm")
    weighting: str = F.field(F.choice(*RDM_WEIGHTINGS), "linear")
    num_timesteps: int = F.field(F.integer(1), 50, "T")
    normalize: str = F.field(F.choice(*NORMALIZATIONS), "token")
    length_loss_weight: float = F.field(F.number(0.0), 0.1, "CE weight of the length head")
    # generation
    decoder: str = F.field(F.choice(*decoders.names("absorbing")), "topk", "diffusion/decoders.py")
    num_steps: int = F.field(F.integer(1), 50)
    greedy: bool = F.field(F.boolean(), True)
    temperature: float = F.field(F.number(0.0, low_open=True), 1.0)
    top_p: float = F.field(F.number(0.0, 1.0, what="0 = off"), 0.0)
    remask: bool = F.field(F.boolean(), True)
    unmask_schedule: str = F.field(F.choice(*decoders.UNMASK_SCHEDULES), "linear")
    threshold: float = F.field(F.number(0.0, 1.0), 0.9)
    num_blocks: int = F.field(F.integer(1), 4)
    block_inner: str = F.field(F.choice(*decoders.BLOCK_INNER), "topk")
    cache: str = F.field(F.choice(*decoders.CACHE_MODES), "none", "K/V cache of block decoding (Fast-dLLM)")
    cache_refresh: str = F.field(F.choice(*decoders.CACHE_REFRESH), "block", "when the K/V cache is remade")
    length_mode: str = F.field(F.choice(*dec.LENGTH_MODES), "head")
    length_beam: int = F.field(F.integer(1), 3)
    gen_length: int = F.field(F.integer(MIN_LENGTH), 48, "static sequence length of the generation program")
    length_select: str = F.field(F.choice(*dec.LENGTH_SELECT), "decode_scores")
    eval_max_examples: int = F.field(F.integer(1), 100)
    eval_batch_size: int = F.field(F.integer(1), 50)
    num_generate: int = F.field(F.integer(1), 4)
    show_steps_shown: int = F.field(F.integer(1), 8)
    bleu_tokenizer: str = F.field(F.choice(*text_metrics.BLEU_TOKENIZERS), "13a")
    bleu_lowercase: bool = F.field(F.boolean(), True)

    def check(self) -> None:
        if self.cache != "none":
            F.require(self.decoder in decoders.cached(), "task.cache", self.cache,
                      f"'none' with task.decoder={self.decoder!r} (a K/V cache needs a decoder that proceeds in "
                      f"blocks: {', '.join(decoders.cached())})")
        if self.length_mode == "head":
            F.require(self.length_max >= 2, "task.length_max", self.length_max,
                      "an integer >= 2 with task.length_mode='head' (the length head predicts 2..length_max; "
                      "or --config.task.length_mode=fixed)")
            F.require(self.length_beam <= self.length_max - 1, "task.length_beam", self.length_beam,
                      f"an integer in [1, {self.length_max - 1}] (the length head's candidates 2..task.length_max="
                      f"{self.length_max})")
