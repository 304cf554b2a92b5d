"""optax optimizer and learning-rate schedule from ``config.optimizer`` (schema: configs/gaussian2d.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(opt_config, num_steps: int) -> optax.Schedule:
    """Linear warmup 0 -> ``learning_rate`` over ``warmup_steps``, then constant / cosine / linear
    decay to ``learning_rate * end_lr_factor`` at ``num_steps``."""
    lr = float(opt_config.learning_rate)
    warmup = int(opt_config.warmup_steps)
    kind = opt_config.schedule
    end = lr * float(opt_config.end_lr_factor)
    decay_steps = max(int(num_steps) - warmup, 1)
    if kind == "constant":
        after = optax.constant_schedule(lr)
    elif kind == "cosine":
        after = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
    elif kind == "linear":
        after = optax.linear_schedule(lr, end, decay_steps)
    else:
        raise ValueError(f"optimizer.schedule={kind!r}; expected 'constant', 'cosine' or 'linear'.")
    if warmup <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def _decay_mask(params):
    """Weight decay on matrices / kernels only (ndim >= 2), not on biases and norm scales."""
    return jax.tree_util.tree_map(lambda x: jnp.ndim(x) >= 2, params)


def make_optimizer(opt_config, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(optimizer, schedule)``. Gradient accumulation is done by the train step (see
    ``train.accumulate_steps``), so one ``update`` here is one real optimizer step."""
    schedule = learning_rate_schedule(opt_config, num_steps)
    name = opt_config.name
    if name == "adamw":
        core = optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps,
                           weight_decay=opt_config.weight_decay, mask=_decay_mask)
    elif name == "adam":
        core = optax.adam(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps)
    elif name == "sgd":
        core = optax.sgd(schedule, momentum=opt_config.momentum or None)
    else:
        raise ValueError(f"optimizer.name={name!r}; expected 'adamw', 'adam' or 'sgd'.")
    clip = float(opt_config.grad_clip_norm)
    chain = [optax.clip_by_global_norm(clip)] if clip > 0 else []
    return optax.chain(*chain, core), schedule
