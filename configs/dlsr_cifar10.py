"""DLSR (papers.md 003) at paper scale: CIFAR-10 ID; OOD SVHN, CIFAR-100, Places365 (tfds).

Needs (none ship with diffjax, no network at run time):
* tfds data in **array_record** format under ``task.data.data_dir``, prepared once where network is
  available: ``tfds build cifar10 svhn_cropped cifar100 places365_small --file_format=array_record
  --data_dir=/data/tfds`` (LSUN / iSUN / Textures are not in tfds in the needed form: add them as your
  own array_record builders and list them in ``task.data.ood`` as "name:split").
* EfficientNet-B4 ImageNet weights as a local state dict (lukemelas ``efficientnet_pytorch`` or
  torchvision layout) in ``task.encoder.weights``.

    python -m diffjax demo --config=configs/dlsr_cifar10.py --workdir=workdirs/dlsr_c10 \\
        --config.task.data.data_dir=/data/tfds --config.task.encoder.weights=/weights/efficientnet-b4.pth

Paper settings: B4 stages 1-5 (24+32+56+160+448 = 720 features) at 224 px, per-sample z-score,
LFDN 16 blocks width 1440, scaled-linear T=100, AdamW(0.9, 0.95) wd 0.05, lr 1e-3 * 64/256,
10 warm-up epochs + cosine, 200 epochs at batch 64, EMA 0.9999; score at t=10 with 3 DDIM steps.
``arg``: "small" = 5000 train / 1000 test / 1000 per OOD set and 20 epochs, for a quick check.
"""

import importlib.util
import os


def _demo_module():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dlsr_mnist_demo.py")
    spec = importlib.util.spec_from_file_location("diffjax_configs_dlsr_mnist_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    demo = _demo_module()
    from diffjax.train.config import base_config

    c = base_config()
    c.task = demo.task_fields()
    t = c.task
    t.data.kind = "tfds"
    t.data.data_dir = "/data/tfds"
    t.data.id_name = "cifar10"
    t.data.id_train_split, t.data.id_test_split = "train", "test"
    t.data.ood = ("svhn_cropped:test", "cifar100:test", "places365_small:validation")
    t.data.n_train, t.data.n_test, t.data.n_ood = 0, 0, 10000  # 0 = the whole split
    t.data.resize_to = 0
    t.encoder.name = "efficientnet-b4"
    t.encoder.weights = "/data/weights/efficientnet-b4.pth"
    t.encoder.image_size = 224
    t.encoder.batch_size = 256
    t.feature_cache_dir = "~/.cache/diffjax/dlsr_features"
    t.model.num_blocks = 16
    t.num_seeds = 1
    t.score_chunk = 5000
    t.sweep_max_examples = 2000
    t.sweep_chunk = 2000
    epochs, batch, n_train = 200, 64, 50000
    steps_per_epoch = n_train // batch
    t.lr_snapshot_step = steps_per_epoch  # "epoch-0" checkpoint for the LR score
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3 * batch / 256
    c.optimizer.b1, c.optimizer.b2 = 0.9, 0.95
    c.optimizer.weight_decay = 0.05
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 10 * steps_per_epoch
    c.train.num_steps = epochs * steps_per_epoch
    c.train.global_batch_size = batch
    c.train.log_every = 500
    c.train.checkpoint_every = 10 * steps_per_epoch
    c.ema_decay = 0.9999
    if arg == "small":
        t.data.n_train, t.data.n_test, t.data.n_ood = 5000, 1000, 1000
        steps_per_epoch = 5000 // batch
        t.lr_snapshot_step = steps_per_epoch
        c.optimizer.warmup_steps = steps_per_epoch
        c.train.num_steps = 20 * steps_per_epoch
        c.train.checkpoint_every = 0
        c.ema_decay = 0.999
    elif arg not in (None, ""):
        raise ValueError(f"configs/dlsr_cifar10.py: unknown arg {arg!r}; use 'small' or nothing.")
    # Scale-out choices (README "Scaling out"): the LFDN (~67M params) fits every device: plain data parallel.
    c.sharding = "replicated"
    c.scan_layers, c.remat, c.precision = False, "none", "fp32"
    c.lock()
    return c
