"""Config values checked before anything runs: one ``ConfigError`` naming the field, its value and
the valid range (design.md convention 10). ``validate_config(config)`` covers the trainer's fields
(``diffjax/train/config.py``) and then the task's (its ``validate_task_config``, see
``diffjax/tasks/fields.py``, where ``ConfigError`` lives so that tasks raise the same class)."""

from __future__ import annotations

import math

from diffjax.tasks.base import validate_task_config
from diffjax.tasks.fields import ConfigError, require

__all__ = ["ConfigError", "validate_config"]


def _number(config, field: str):
    node = config
    for part in field.split("."):
        node = node[part]
    return node


_require = require


def validate_config(config) -> None:
    """Raises ``ConfigError`` for the first trainer field, then task field, outside its valid range.
    Reads no data and no weights (a task's validation imports its module only)."""
    def int_at_least(field, low):
        v = _number(config, field)
        _require(isinstance(v, int) and not isinstance(v, bool) and v >= low, field, v, f"an integer >= {low}")
        return v

    def float_in(field, low, high, *, low_open=False, high_open=False):
        v = _number(config, field)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        _require(ok, field, v, f"a finite number in {lo}{low}, {high}{hi}")

    int_at_least("train.num_steps", 1)
    gbs = int_at_least("train.global_batch_size", 1)
    acc = int_at_least("train.accumulate_steps", 1)
    _require(gbs % acc == 0, "train.accumulate_steps", acc, f"a divisor of train.global_batch_size={gbs}")
    int_at_least("train.log_every", 1)
    int_at_least("train.checkpoint_every", 0)
    int_at_least("train.keep", 1)
    int_at_least("train.eval_every", 0)
    int_at_least("train.resume_step", -1)
    float_in("optimizer.learning_rate", 0.0, math.inf, low_open=True, high_open=True)
    int_at_least("optimizer.warmup_steps", 0)
    float_in("optimizer.end_lr_factor", 0.0, 1.0)
    float_in("optimizer.weight_decay", 0.0, math.inf, high_open=True)
    float_in("optimizer.grad_clip_norm", 0.0, math.inf, high_open=True)
    float_in("ema_decay", 0.0, 1.0, high_open=True)
    shape = tuple(config.mesh_shape)
    _require(len(shape) == 2 and all(isinstance(s, int) and (s >= 1 or s == -1) for s in shape)
             and shape.count(-1) <= 1, "mesh_shape", shape,
             "two integers (data, model), each >= 1 or -1 (at most one -1 = all remaining devices)")
    if "sharding" in config:
        from diffjax.train.sharding import SHARDING_CHOICES

        _require(config.sharding in SHARDING_CHOICES, "sharding", config.sharding,
                 f"one of {', '.join(SHARDING_CHOICES)}")
    from diffjax.models.options import PRECISIONS, REMAT_POLICIES

    for field, choices in (("remat", REMAT_POLICIES), ("precision", PRECISIONS)):
        if field in config:
            _require(config[field] in choices, field, config[field], f"one of {', '.join(choices)}")
    if "scan_layers" in config:
        _require(isinstance(config.scan_layers, bool), "scan_layers", config.scan_layers, "True or False")
    validate_task_config(config.task)
