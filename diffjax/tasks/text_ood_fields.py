"""The typed ``config.task`` of the text OOD task (paper 000, ``text_ood.py``): ``TextOODConfig`` with its
nested ``TextOODData`` (``task.data``). ``TextOODConfig.from_config(config.task)`` checks every field (and
refuses one it does not declare) before any data, tokenizer or weights load. Defaults:
configs/text_ood_demo.py, which documents the fields. The encoder (architecture and pretrained weights)
is ``config.init_from``, not a task field."""

from __future__ import annotations

import dataclasses

from diffjax.ood.text_scores import SCORE_NAMES  # the one list of paper 000's scores
from diffjax.tasks import fields as F

BASELINE_NAMES = ("maha", "knn", "msp", "energy", "maha_pretrained", "knn_pretrained", "maha_finetuned",
                  "knn_finetuned")


@dataclasses.dataclass(frozen=True)
class TextOODData(F.TaskConfig):
    """``config.task.data``: the ID / OOD text sets (``diffjax.data.text_ood_sets``)."""

    id: str = F.field(F.text(nonempty=True), "embedded:movie_reviews", "the ID set (a source string)")
    label_field: str = F.field(F.text(), "category", "the ID labels of the classifier baselines ('' = none)")
    id_train_split: str = F.field(F.text(nonempty=True), "train", "the ID train split (shuffled)")
    id_heldout_split: str = F.field(F.text(what="'' = carved from the train split"), "", "the threshold's ID split")
    id_test_split: str = F.field(F.text(what="'' = carved from the train split"), "", "the table's ID split")
    ood: tuple = F.field(F.texts(), ("embedded:news_headlines", "embedded:hamlet"), "the OOD sets")
    user_ood: tuple = F.field(F.texts(), (), "the user's own OOD sets (.txt / .jsonl)")
    n_train: int = F.field(F.integer(0, what="0 = all"), 0, "ID train examples kept")
    n_heldout: int = F.field(F.integer(0), 500, "held-out ID examples (carved when the split is '')")
    n_test: int = F.field(F.integer(0), 1000, "ID test examples (carved when the split is '')")
    n_ood: int = F.field(F.integer(0, what="0 = all"), 0, "examples kept per OOD set")
    data_dir: str = F.field(F.text(), "", "tfds data_dir (array_record) of tfds: sources")
    buckets: tuple = F.field(F.lengths(3, what="[CLS] text [SEP]"), (16, 32, 64, 128), "padded lengths")
    seed: int = F.field(F.integer(0), 0, "the shuffle, the carving and the batch order")

    def check(self) -> None:
        for key in ("heldout", "test"):
            if getattr(self, f"id_{key}_split") == "":
                n = getattr(self, f"n_{key}")
                F.require(n >= 1, f"task.data.n_{key}", n, f"an integer >= 1 when task.data.id_{key}_split is '' "
                                                           "(carved from the shuffled ID train split)")


@dataclasses.dataclass(frozen=True)
class TextOODConfig(F.TaskConfig):
    """``config.task`` of paper 000's text OOD (configs/text_ood_demo.py, text_ood_paper.py)."""

    RENAMED = {"backbone": "set config.init_from instead (e.g. 'embedded:minilm' or a Hugging Face model dir): it "
                           "gives the encoder's architecture and its pretrained weights (--config.init_from=...)"}

    name: str = F.field(F.choice("text_ood"), "text_ood")
    architecture: str = F.field(F.text(what="an HF model dir or 'embedded:minilm'; only with config.init_from=''"),
                                "", "the encoder's architecture for a random init (weights not read)")
    num_layers: int = F.field(F.integer(0, what="0 = all of the backbone's layers"), 0, "encoder layers kept")
    data: TextOODData = F.field(None, TextOODData(), "the text sets", nested=TextOODData)
    num_diffusion_steps: int = F.field(F.integer(1), 1000, "T (linear betas)")
    ld_weight: float = F.field(F.number(0.0), 1.0, "weight of L_d")
    lc_weight: float = F.field(F.number(0.0), 1.0, "weight of L_c")
    x0_std: float = F.field(F.number(0.0, what="0 = raw embeddings"), 1.0, "x_0 = E[w] scaled to this std")
    lc_learnt_scale: bool = F.field(F.boolean(), True, "a learnt scale of the rounding logits")
    prediction: str = F.field(F.choice("x0", "v", "eps"), "v", "what the network outputs")
    time_mult: int = F.field(F.integer(1), 4, "timestep MLP width, in D")
    dropout: float = F.field(F.number(0.0, 1.0, high_open=True), 0.0, "encoder dropout while training")
    score_t: int = F.field(None, 0, "the table's t in [0, T]; 0 = chosen on held-out ID (checked in check())")
    score_t_by: str = F.field(F.choice("rounding", "rise"), "rounding", "score_t = 0: the held-out ID rule")
    score_t_min_rounding_acc: float = F.field(F.number(0.0, 1.0), 0.5,
                                              "score_t_by=rounding: x_t's held-out ID rounding accuracy kept")
    score_t_rise: float = F.field(F.number(0.0, 1.0), 0.1, "score_t_by=rise: the rise of the held-out ID loss")
    num_seeds: int = F.field(F.integer(1), 5, "fixed noise draws averaged per score")
    score_seed: int = F.field(F.integer(0), 0, "the draws' base seed")
    score_chunk: int = F.field(F.integer(1), 32, "examples per jitted scoring call")
    lc_row_batch: int = F.field(F.integer(0, what="0 = all rows at once"), 8, "rows per step of the rounding CE")
    deploy_score: str = F.field(F.choice(*SCORE_NAMES), "ld_lc", "the score `score` thresholds")
    score_text_field: str = F.field(F.text(), "", "`score` of .jsonl inputs: the text field")
    baselines: tuple = F.field(F.texts(BASELINE_NAMES), ("maha", "knn", "msp", "energy"), "feature baselines")
    classifier_steps: int = F.field(F.integer(0, what="0 = every train step"), 0,
                                    "train steps of the MSP / energy classifier (from step 0; then frozen)")
    knn_k: int = F.field(F.integer(1), 10, "k of the kNN baselines")
    feature_batch: int = F.field(F.integer(1), 64, "examples per feature call of the baselines")
    controls: bool = F.field(F.boolean(), True, "token_norm / unigram / untrained controls")
    sweep_ts: tuple = F.field(None, (), "the grid's timesteps in [1, T] (checked in check()); () = log-SNR grid")
    sweep_num_ts: int = F.field(F.integer(1), 10, "steps of the log-SNR grid")
    sweep_min_rounding_acc: float = F.field(F.number(0.0, 1.0), 0.01, "the grid ends where rounding falls below")
    sweep_num_seeds: int = F.field(F.integer(0, what="0 = num_seeds"), 0, "noise draws of the sweep and by_t")
    sweep_max_examples: int = F.field(F.integer(0, what="0 = all"), 0, "examples per set of the sweep and by_t")

    def check(self) -> None:
        T = self.num_diffusion_steps
        for field, check in (("score_t", F.integer(0, T, what="0 = chosen on held-out ID")),
                             ("sweep_ts", F.timesteps(T, nonempty=False))):
            F.require(check.ok(getattr(self, field)), f"task.{field}", getattr(self, field), check.expected)
        F.require(self.ld_weight + self.lc_weight > 0, "task.lc_weight", self.lc_weight,
                  "a number > 0 when task.ld_weight is 0 (the loss would be 0)")
