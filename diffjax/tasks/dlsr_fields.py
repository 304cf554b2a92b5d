"""The valid range of every ``config.task`` field of the DLSR task (paper 003, ``dlsr.py``):
``validate_task_config(c)`` raises ``fields.ConfigError`` before any image or weight loads.
configs/dlsr_mnist_demo.py documents the fields."""

from __future__ import annotations

from diffjax.diffusion.schedules import GAUSSIAN_KINDS
from diffjax.ood.image_encoder import is_encoder_name
from diffjax.tasks import fields as F


def validate_task_config(c) -> None:
    """The valid range of every ``config.task`` field (``fields.ConfigError``); reads no images or weights."""
    F.check_fields(c, (
        ("data.kind", F.choice("mnist_demo", "tfds", "files")), ("data.data_dir", F.text()),
        ("data.id_name", F.text()), ("data.id_train_split", F.text()), ("data.id_test_split", F.text()),
        ("data.id_train", F.text()), ("data.id_test", F.text()), ("data.image_key", F.text()),
        ("data.n_train", F.integer(0, what="0 = all")), ("data.n_test", F.integer(0, what="0 = all")),
        ("data.n_ood", F.integer(0, what="0 = all")), ("data.patch_size", F.integer(1)),
        ("data.resize_to", F.integer(0, what="0 = as stored")), ("data.seed", F.integer(0)),
        ("data.user_image_size", F.integer(0, what="0 = the encoder's")), ("data.ood", F.texts()),
        ("data.user_ood", F.texts()),
        ("encoder.name", F.Check(is_encoder_name, "an EfficientNet variant, e.g. 'efficientnet-lite0' or 'b4'")),
        ("encoder.weights", F.text()), ("encoder.dtype", F.choice("float32", "bfloat16", "float16")),
        ("encoder.image_size", F.integer(0, what="0 = the variant's resolution")),
        ("encoder.batch_size", F.integer(1)), ("encoder.random_seed", F.integer(0)),
        ("model.width", F.integer(0)), ("model.mid_width", F.integer(0)), ("model.emb_dim", F.integer(0)),
        ("model.num_blocks", F.integer(1)), ("model.dropout", F.number(0.0, 1.0, high_open=True)),
        ("normalize", F.choice("per_sample", "dataset", "none")), ("zscore_ddof", F.integer(0, 1)),
        ("schedule", F.choice(*GAUSSIAN_KINDS)), ("num_diffusion_steps", F.integer(1)),
        ("ddim_steps", F.integer(0, what="0 = one x0 prediction")), ("ddim_eta", F.number(0.0, 1.0)),
        ("mfsim_skip_first", F.boolean()), ("num_seeds", F.integer(1)), ("score_seed", F.integer(0)),
        ("score_chunk", F.integer(1)), ("lr_snapshot_step", F.integer(-1, what="-1 = no LR score")),
        ("deploy_score", F.choice("mse", "mfsim", "lr_mse", "lr_mfsim")),
        ("baselines", F.texts(("mahalanobis", "knn"))), ("knn_k", F.integer(1)),
        ("feature_cache_dir", F.text()), ("sweep_num_seeds", F.integer(0, what="0 = num_seeds")),
        ("sweep_chunk", F.integer(0, what="0 = score_chunk")), ("sweep_max_examples", F.integer(0, what="0 = all")),
        ("sweep_t_batch", F.integer(0, what="0 = every t at once")),
    ))
    T = F.get(c, "num_diffusion_steps")
    F.check_fields(c, (("score_t", F.integer(1, T)), ("sweep_ts", F.timesteps(T)),
                       ("ddim_steps", F.integer(0, T, what="0 = one x0 prediction"))))
    if F.get(c, "data.kind") == "files":
        for f in ("data.id_train", "data.id_test"):
            F.require(bool(F.get(c, f, "x")), f"task.{f}", F.get(c, f),
                      "an image folder or .npy array with task.data.kind='files'")
    if str(F.get(c, "deploy_score", "")).startswith("lr_"):
        step = F.get(c, "lr_snapshot_step")
        F.require(step is None or step >= 0, "task.lr_snapshot_step", step,
                  f"an integer >= 0 with task.deploy_score={F.get(c, 'deploy_score')!r} (the LR score needs the snapshot)")
