"""The trainer's config fields with defaults. The schema is documented in configs/gaussian2d.py."""

from __future__ import annotations

import importlib.util
import os

import ml_collections
from ml_collections import config_dict


def load_config_module(path: str, *, relative_to: str | None = None):
    """Imports a config file by path (``configs/`` is not a package, so configs that extend another
    load it this way: ``load_config_module("rdm_minilm_demo.py", relative_to=__file__)``)."""
    if relative_to is not None:
        path = os.path.join(os.path.dirname(os.path.abspath(relative_to)), path)
    name = "_diffjax_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def base_config() -> ml_collections.ConfigDict:
    """Trainer fields with their defaults, *unlocked*: a config file sets ``task`` and overrides
    what it needs, then calls ``.lock()`` (see configs/gaussian2d.py for every field's meaning)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = ml_collections.ConfigDict({"name": "none"})
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-3, schedule="cosine", warmup_steps=0, end_lr_factor=0.0,
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, momentum=0.0, grad_clip_norm=1.0))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=1000, global_batch_size=64, accumulate_steps=1, log_every=50,
        checkpoint_every=500, keep=2, eval_every=0, eval_at_end=True,
        # -1: resume from the latest checkpoint; N: from checkpoint N (e.g. the intact one before a
        # corrupt latest; later checkpoints are moved to checkpoints_set_aside/, nothing is deleted).
        resume_step=-1))
    c.mesh_shape = (-1, 1)
    # Params / optimizer state / EMA layout (diffjax/train/sharding.py): "replicated" | "tp" (the TP rule
    # table over "model") | "fsdp" (ZeRO-3: each big leaf split over "data") | "fsdp+tp" (both).
    c.sharding = "tp"
    # The TP rule table; () = the task's model family's own (Task.sharding_rules).
    c.sharding_rules = ()
    # Model layout and numerics for every task (diffjax/models/options.py): scanned transformer stack,
    # rematerialisation policy ("none" | "full" | "dots_saveable"), precision ("fp32" | "bf16" | "bf16_params").
    c.scan_layers = False
    c.remat = "none"
    c.precision = "fp32"
    c.ema_decay = 0.0
    # EMA warm-up (latent-diffusion LitEma): decay min(ema_decay, (1 + n) / (10 + n)) at update n.
    c.ema_warmup = False
    c.overwrite = False
    # Staged initialisation (diffjax/train/init_from.py): "" = fresh; WORKDIR[:STEP], an HF dir or a .gguf.
    c.init_from = ""
    c.distributed = ml_collections.ConfigDict(dict(
        initialize=False,
        coordinator_address=config_dict.placeholder(str),
        num_processes=config_dict.placeholder(int),
        process_id=config_dict.placeholder(int)))
    return c


# Fields whose change does not make a workdir's checkpoints incompatible (config.json check).
# Checkpoints are restored onto the current mesh and sharding (orbax reshards), so those may change too.
RESUMABLE_CHANGES = ("remat", "sharding", "sharding_rules", "mesh_shape", "train.num_steps", "train.log_every",
                     "train.eval_every", "train.eval_at_end", "train.resume_step", "overwrite", "distributed")

# Fields added after workdirs were written: an older config.json without them is read with these values.
ADDED_FIELD_DEFAULTS = {"scan_layers": False, "remat": "none", "precision": "fp32", "sharding": "tp"}
