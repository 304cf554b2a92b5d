"""The valid range of every ``config.task`` field of the text OOD task (paper 000, ``text_ood.py``):
``validate_task_config(c)`` raises ``fields.ConfigError`` before any data, tokenizer or weights load.
configs/text_ood_demo.py documents the fields."""

from __future__ import annotations

from diffjax.ood.text_scores import SCORE_NAMES  # the one list of paper 000's scores
from diffjax.tasks import fields as F

BASELINE_NAMES = ("maha", "knn", "msp", "energy", "maha_pretrained", "knn_pretrained", "maha_finetuned",
                  "knn_finetuned")


def validate_task_config(c) -> None:
    """Raises ``ConfigError`` for the first text_ood field outside its range."""
    F.check_fields(c, (
        ("backbone", F.text(nonempty=True, what="'embedded:minilm' or a Hugging Face model directory")),
        ("num_layers", F.integer(0, what="0 = all of the backbone's layers")),
        ("dropout", F.number(0.0, 1.0, high_open=True)),
        ("num_diffusion_steps", F.integer(1)),
        ("ld_weight", F.number(0.0)), ("lc_weight", F.number(0.0)),
        ("x0_std", F.number(0.0, what="0 = raw embeddings")), ("lc_learnt_scale", F.boolean()),
        ("prediction", F.choice("x0", "v", "eps")),
        ("time_mult", F.integer(1)),
        ("score_t_rise", F.number(0.0, 1.0)),
        ("num_seeds", F.integer(1)), ("score_seed", F.integer(0)), ("score_chunk", F.integer(1)),
        ("lc_row_batch", F.integer(0, what="0 = all rows at once")),
        ("deploy_score", F.choice(*SCORE_NAMES)), ("score_text_field", F.text()),
        ("baselines", F.texts(BASELINE_NAMES)), ("knn_k", F.integer(1)), ("feature_batch", F.integer(1)),
        ("controls", F.boolean()),
        ("sweep_num_ts", F.integer(1)), ("sweep_min_rounding_acc", F.number(0.0, 1.0)),
        ("sweep_num_seeds", F.integer(0, what="0 = num_seeds")),
        ("sweep_max_examples", F.integer(0, what="0 = all")),
        ("data.id", F.text(nonempty=True)), ("data.id_train_split", F.text(nonempty=True)),
        ("data.id_heldout_split", F.text(what="'' = carved from the train split")),
        ("data.id_test_split", F.text(what="'' = carved from the train split")),
        ("data.label_field", F.text()), ("data.data_dir", F.text()),
        ("data.n_train", F.integer(0, what="0 = all")), ("data.n_ood", F.integer(0, what="0 = all")),
        ("data.n_heldout", F.integer(0)), ("data.n_test", F.integer(0)),
        ("data.ood", F.texts()), ("data.user_ood", F.texts()),
        ("data.buckets", F.lengths(3, what="[CLS] text [SEP]")), ("data.seed", F.integer(0)),
    ))
    T = F.get(c, "num_diffusion_steps")
    if T is not None:
        auto = F.get(c, "score_t_rise") is not None  # score_t = 0: chosen on held-out ID
        F.check_fields(c, (("score_t", F.integer(0 if auto else 1, T, what="0 = chosen on held-out ID" if auto else "")),
                           ("sweep_ts", F.timesteps(T, nonempty=F.get(c, "sweep_num_ts") is None))))
    ld, lc = F.get(c, "ld_weight"), F.get(c, "lc_weight")
    if ld is not None and lc is not None:
        F.require(ld + lc > 0, "task.lc_weight", lc, "a number > 0 when task.ld_weight is 0 (the loss would be 0)")
    for key in ("heldout", "test"):
        split, n = F.get(c, f"data.id_{key}_split"), F.get(c, f"data.n_{key}")
        if split == "" and n is not None:
            F.require(n >= 1, f"task.data.n_{key}", n,
                      f"an integer >= 1 when task.data.id_{key}_split is '' (carved from the shuffled ID train split)")
