"""Config of `python -m diffjax demo` (and `make demo`).

For now this is the 2-D Gaussian-mixture DDPM (configs/gaussian2d.py). The DLSR helper will
repoint it to the MNIST image-OOD config once that task exists.
"""

import importlib.util
import os


def get_config(arg=None):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gaussian2d.py")
    spec = importlib.util.spec_from_file_location("diffjax_configs_gaussian2d", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
