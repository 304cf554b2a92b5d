"""DLSR (papers.md 003) with CelebA faces as ID; OOD CIFAR-10, CIFAR-100, SVHN (tfds, array_record).

Prepare once where network is available (CelebA needs its manual download for tfds)::

    tfds build celeb_a cifar10 cifar100 svhn_cropped --file_format=array_record --data_dir=/data/tfds

    python -m diffjax demo --config=configs/dlsr_celeba.py --workdir=workdirs/dlsr_celeba \\
        --config.task.data.data_dir=/data/tfds --config.task.encoder.weights=/weights/efficientnet-b4.pth

Same model and training recipe as configs/dlsr_cifar10.py (B4 at 224 px, LFDN 16 blocks, 200 epochs
of the 162,770 training faces would be ~500k steps: we train 50 epochs by default).
``arg``: "small" as in dlsr_cifar10.py.
"""

import importlib.util
import os


def get_config(arg=None):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dlsr_cifar10.py")
    spec = importlib.util.spec_from_file_location("diffjax_configs_dlsr_cifar10", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    t = c.task
    t.data.id_name = "celeb_a"
    t.data.id_train_split, t.data.id_test_split = "train", "test"
    t.data.ood = ("cifar10:test", "cifar100:test", "svhn_cropped:test")
    if arg in (None, ""):
        batch, epochs, n_train = 64, 50, 162770
        steps_per_epoch = n_train // batch
        t.lr_snapshot_step = steps_per_epoch
        c.optimizer.warmup_steps = 2 * steps_per_epoch
        c.train.num_steps = epochs * steps_per_epoch
        c.train.checkpoint_every = 5 * steps_per_epoch
    return c
