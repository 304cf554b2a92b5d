"""Config helpers shared by test files (not a test module)."""

import os

from diffjax.cli import _load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAUSSIAN2D_CONFIG = os.path.join(REPO, "configs", "gaussian2d.py")


def set_fields(config, overrides: dict):
    """Sets dotted fields in place (``{"train.num_steps": 4}`` -> ``config.train.num_steps = 4``); returns config."""
    for k, v in overrides.items():
        node = config
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return config


def small_config(**overrides):
    """``configs/gaussian2d.py:small`` with dotted-field ``overrides`` applied (returned locked)."""
    c = _load_config_file(GAUSSIAN2D_CONFIG + ":small")
    with c.unlocked():
        set_fields(c, overrides)
    return c
