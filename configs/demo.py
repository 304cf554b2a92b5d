"""Config of `python -m diffjax demo` (and `make demo`): the DLSR image-OOD demo.

Paper 003 (papers.md) on embedded PyPI data: frozen ImageNet EfficientNet-Lite0 features of MNIST
digits 0-4 (ID) -> LFDN trained on them -> reconstruction scores vs near-OOD MNIST 5-9 and far-OOD
photo patches / sklearn digits, with Mahalanobis and kNN baselines in the same table. See
configs/dlsr_mnist_demo.py for the fields; ``arg`` is passed through ("tiny" = seconds-long smoke run).
The 2-D Gaussian-mixture DDPM demo is configs/gaussian2d.py.
"""

import importlib.util
import os


def get_config(arg=None):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dlsr_mnist_demo.py")
    spec = importlib.util.spec_from_file_location("diffjax_configs_dlsr_mnist_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
