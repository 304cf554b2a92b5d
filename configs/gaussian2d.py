"""DDPM on a 2-D Gaussian mixture with a small MLP denoiser — and THE reference config schema.

Every diffjax config follows this layout (copy it for a new task; start from
``diffjax.train.config.base_config()``, which holds the trainer fields below with their defaults). ``get_config(arg)`` returns a
*locked* ``ml_collections.ConfigDict``; the CLI applies ``--config.a.b=value`` overrides on top
(an unknown field fails at once, naming the nearest valid one)::

    python -m diffjax train --config=configs/gaussian2d.py --workdir=/tmp/g2d --config.train.num_steps=200
    python -m diffjax eval  --config=configs/gaussian2d.py --workdir=/tmp/g2d

Top-level fields (read by the trainer, ``diffjax/train/``):

  seed            int. Seeds param init (``fold_in(seed, 0)``) and the train-step rng stream
                  (step ``s`` uses ``fold_in(fold_in(seed, 1), s)``); eval uses ``fold_in(seed, 2)``.
  task            ConfigDict, *the only part a task sees*: ``diffjax.tasks.base.build_task(config.task)``.
                  ``task.name`` picks the module ``diffjax/tasks/<name>.py``; every other field is the
                  task's own (data, model size, diffusion schedule, eval settings). Put the model's
                  hyper-parameters under ``task.model`` (the task builds its model).
  optimizer       ConfigDict (``diffjax/train/optim.py``):
    name            "adamw" | "adam" | "sgd".
    learning_rate   peak learning rate.
    schedule        "constant" | "cosine" | "linear" (after warmup; cosine/linear decay to
                    ``learning_rate * end_lr_factor`` at ``train.num_steps``).
    warmup_steps    linear warmup from 0 over this many steps (0 = none).
    end_lr_factor   final lr as a fraction of the peak for cosine/linear.
    b1, b2, eps     Adam moments; ``weight_decay`` (decoupled, AdamW only; applied to every
                    param with ndim >= 2, i.e. not to biases / norm scales).
    momentum        SGD only (0 = plain SGD).
    grad_clip_norm  clip by global norm before the update (0 = off).
  train           ConfigDict (``diffjax/train/trainer.py``):
    num_steps          optimizer updates in total (a resumed run continues to this).
    global_batch_size  examples per update summed over all processes/devices; must divide by the
                       mesh "data" axis size and by ``accumulate_steps``.
    accumulate_steps   gradient accumulation: each update averages the grads of this many
                       micro-batches of ``global_batch_size / accumulate_steps`` (1 = off).
    log_every          steps between metrics.jsonl / TensorBoard / progress lines.
    checkpoint_every   steps between orbax checkpoints (0 = only at the end); always one at the end.
    keep               number of checkpoints kept (older are deleted).
    eval_every         steps between in-training ``task.evaluate`` calls (0 = only ``eval`` command).
    eval_at_end        run ``task.evaluate`` after training and write ``results.json``.
  mesh_shape      (data, model) device-mesh shape; -1 in one slot = "all remaining devices".
                  (-1, 1) = pure data parallel; (1, 1) = one device.
  sharding        how params, optimizer state and EMA are laid out (diffjax/train/sharding.py):
                  "replicated" | "tp" (default: the TP rule table over "model", replicated over
                  "data") | "fsdp" (ZeRO-3: every leaf of >= 2**14 elements split over "data" on its
                  largest dividing dim) | "fsdp+tp" (the TP rule, then "data" on another dim).
  sharding_rules  the TP table: tuple of ``(regex, spec)`` for params (and, by the same paths, the
                  optimizer state and EMA). ``regex`` is matched with ``re.search`` against the
                  '/'-joined param path (e.g. "mlp/hidden_0/kernel"), *first match wins*, unmatched =
                  replicated. ``spec`` is a tuple with one entry per array dim: a mesh axis name
                  ("data", "model") or None. () = the task's model family's table
                  (``Task.sharding_rules``; a model module exports it as ``SHARDING_RULES``).
  scan_layers     run a transformer stack as one nn.scan-ned layer (params stacked on a leading
                  layer axis): compile time independent of depth (diffjax/models/options.py).
  remat           rematerialise each layer in the backward pass: "none" | "full" | "dots_saveable".
  precision       "fp32" | "bf16" (bf16 compute; fp32 params, optimizer state, softmax and loss)
                  | "bf16_params" (bf16 params too).
  ema_decay       exponential moving average of params (0 = off). When on, ``evaluate`` /
                  ``sweep`` / ``generate`` and snapshots get the EMA params.
  ema_warmup      True: latent-diffusion's LitEma warm-up, decay min(ema_decay, (1+n)/(10+n)) at
                  update n (an early snapshot is then a trained model, not the init). Default False.
  overwrite       False: refuse a workdir whose config.json differs (except in train.num_steps,
                  train.log_every, train.eval_every, overwrite, distributed, remat, and mesh_shape /
                  sharding / sharding_rules: checkpoints are restored onto the current layout). True: rewrite
                  config.json and resume anyway (shape mismatches still fail, naming tree paths).
  init_from       "" (fresh init) or where the params start from: another run's WORKDIR (latest
                  checkpoint), WORKDIR:STEP (that checkpoint or snapshot), a local Hugging Face model
                  dir or a .gguf file (diffjax/train/init_from.py). Strict: shape mismatches fail
                  naming the path and both shapes; params new to this run and source params left
                  unused are listed in the log and WORKDIR/init_from.json. Applied only when the run
                  starts; a rerun resumes from the run's own checkpoints.
  distributed     ConfigDict: ``initialize`` (bool) calls ``jax.distributed.initialize`` before
                  anything else; ``coordinator_address`` ("host:port"), ``num_processes``,
                  ``process_id`` (None = let JAX auto-detect, e.g. on TPU pods / SLURM).
"""

import ml_collections

from diffjax.models import mlp
from diffjax.train.config import base_config


def get_config(arg=None):
    """``arg``: "small" (a ~10 s CPU run, used by tests) or None (default: 6000 steps, ~20 s of CPU; MMD^2 ~0.01 vs a 0.003 data-vs-data floor, all 8 modes)."""
    c = base_config()
    c.task = ml_collections.ConfigDict(dict(
        name="gaussian2d",
        # Data: a mixture of `num_components` isotropic Gaussians on a circle of `radius`.
        num_components=8, radius=2.0, component_std=0.15, data_seed=0,
        # Diffusion (diffjax.diffusion.schedules.gaussian_schedule kinds).
        schedule="cosine", num_diffusion_steps=200, prediction="eps",  # "eps" | "x0"
        # Denoiser (diffjax.models.mlp.MLPDenoiser).
        model=ml_collections.ConfigDict(dict(hidden=128, depth=3, time_embed_dim=32)),
        # Evaluation: DDIM samples vs data (mean, covariance, MMD), samples.png.
        eval_num_samples=2000, sample_batch_size=1024,  # DDIM samples drawn per global batch (mesh-sharded)
        ddim_steps=50, ddim_eta=0.0, clip_x0=4.0,  # clip x0_hat to [-c, c] (0 = off)
    ))
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 100
    c.train.num_steps = 6000
    c.train.global_batch_size = 256
    c.train.log_every = 100
    c.train.checkpoint_every = 1000
    c.ema_decay = 0.999
    # Hidden layers split over "model" (the MLP's default rule table).
    c.sharding_rules = mlp.SHARDING_RULES
    if arg == "small":
        c.task.model.hidden = 32
        c.task.model.depth = 2
        c.task.num_diffusion_steps = 50
        c.task.eval_num_samples = 256
        c.task.ddim_steps = 10
        c.optimizer.warmup_steps = 5
        c.train.num_steps = 40
        c.train.global_batch_size = 32
        c.train.log_every = 10
        c.train.checkpoint_every = 10
        c.ema_decay = 0.9
    elif arg not in (None, ""):
        raise ValueError(f"configs/gaussian2d.py: unknown arg {arg!r}; use 'small' or nothing.")
    c.lock()
    return c
