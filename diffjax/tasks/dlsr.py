"""DLSR task (papers.md, paper 003): diffusion on layer-wise semantic features for unsupervised OOD.

The method, in this file: frozen EfficientNet (``diffjax.ood.image_encoder``; not in ``params``) ->
per-stage GAP features, cached once per set (``diffjax.ood.feature_cache``) -> z_0 (per-sample
z-score per layer, or ID-train dataset statistics stored in ``params["stats"]``;
``diffjax.ood.features``) -> LFDN (``diffjax.models.lfdn``) trained on ID train features only with
the x0 loss ``E_{t,eps} ||z_0 - f(z_t, t)||^2`` (``diffusion.gaussian.x0_loss``, scaled-linear
schedule, T = 100). The trainer's EMA params score; a trainer snapshot at ``lr_snapshot_step``
gives the early params of the LR score.

Scores (``score_set``): MSE, MFsim (fused and per layer) and LR (S_early - S_final, the sign of the
authors' ``test_LR.py``; ``diffjax.ood.scores.likelihood_ratio``) of a DDIM reconstruction from t,
one jitted (t, seed, example) grid per chunk (``diffjax.ood.sweep``); Mahalanobis / kNN baselines on
the same z_0 (``extra_scores``). ``OODTask`` (``tasks/ood_task.py``) turns them into the table at
``score_t`` (results.json, results_table.txt, roc.png, threshold.json on ID test), the AUROC-vs-t
sweep over ``sweep_ts`` (sweep.json, sweep.png; with ``sweep_t_batch`` = 1 its value at ``score_t``
equals the table's bit for bit) and ``score`` of the user's images. Image sets:
``diffjax.data.image_sets``.

Config: the typed ``config.task`` (``DLSRConfig``, ``tasks/dlsr_fields.py``: every field, its range and
default); configs/dlsr_mnist_demo.py sets every field with comments.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.data.array_batches import epoch_shuffled_indices
from diffjax.data.image_sets import load_sets
from diffjax.data.images import load_user_images
from diffjax.diffusion import gaussian
from diffjax.diffusion.schedules import gaussian_schedule
from diffjax.models.lfdn import LFDN, SHARDING_RULES as LFDN_RULES
from diffjax.ood import baselines, feature_cache, features as feat, image_encoder, report, scores as scores_lib
from diffjax.ood import sweep as sweep_lib
from diffjax.runtime import RuntimeContext, log
from diffjax.tasks.base import register_prepare_call, register_task
from diffjax.tasks.dlsr_fields import DLSRConfig
from diffjax.tasks.ood_task import OODTask, ood_prepare_call

BASELINES = ("mahalanobis", "knn")


def user_image_size(c) -> int:
    """The size a user's images are resized to: ``data.user_image_size``, else the encoder's input size."""
    return int(c.data.user_image_size) or image_encoder.input_size(c.encoder)


def read_user_images(c, inputs: str):
    """A folder of images / an image file / a .npy array -> ``ImageSet`` (row ids: paths or row numbers)."""
    return load_user_images(inputs, resize_to=user_image_size(c))


class DLSRTask(OODTask):
    name = "dlsr"
    sharding_rules = LFDN_RULES
    baseline_names = BASELINES
    threshold_set = "test"  # DLSR has no held-out split: the threshold accepts 95% of ID test
    read_user_inputs = staticmethod(read_user_images)

    def __init__(self, c: DLSRConfig):
        self.c = c
        self.schedule = gaussian_schedule(c.schedule, int(c.num_diffusion_steps))
        m = c.model
        self._encoder = None
        self._raw: dict[str, np.ndarray] = {}  # raw features [N, D] per set key
        self._fns = {}
        self.dims = image_encoder.layer_dims(c.encoder)
        self.model = LFDN(in_dim=sum(self.dims), width=m.width or None, mid_width=m.mid_width or None,
                          emb_dim=m.emb_dim or None, num_blocks=int(m.num_blocks), dropout=float(m.dropout))
        self.snapshot_steps = (int(c.lr_snapshot_step),) if int(c.lr_snapshot_step) >= 0 else ()
        if c.normalize == "dataset":  # stats must be concrete before init_params is traced
            self._stats = feat.fit_dataset_stats(self.raw_features("train"))

    # -- sets and features --------------------------------------------------------------------
    def build_sets(self) -> dict:
        train, test, ood = load_sets(self.c.data, image_size=image_encoder.input_size(self.c.encoder))
        return {"train": train, "test": test, **{f"ood/{k}": v for k, v in ood.items()}}

    def extract(self, images: np.ndarray, desc: str, context: RuntimeContext | None = None) -> np.ndarray:
        """Raw concatenated GAP features of ``images`` -> [N, D] float32, in global batches of
        ``encoder.batch_size`` sharded over ``context``'s "data" axis (None: every local device,
        ``RuntimeContext.local()``: the trainer gives no context to ``__init__`` / ``train_batches``).
        The encoder is built once; its variables are placed on each context's mesh per call."""
        if self._encoder is None:
            self._encoder = image_encoder.feature_extractor(self.c.encoder)
        context = context if context is not None else RuntimeContext.local()
        return feat.extract_features(self._encoder.on(context), images, batch_size=int(self.c.encoder.batch_size),
                                     desc=desc, context=context)

    def raw_features(self, key: str, context: RuntimeContext | None = None) -> np.ndarray:
        """Raw features of set ``key`` ("train", "test", "ood/<name>") -> [N, D], kept and disk-cached
        (the cache key is the encoder + data config and the set: the same file serves every mesh)."""
        if key not in self._raw:
            def compute():
                t0 = time.time()
                raw = self.extract(self.sets()[key].images, key, context)
                log(f"dlsr: features of {key}: {raw.shape} in {time.time() - t0:.1f}s")
                return raw

            self._raw[key] = feature_cache.cached(self._cache_path(key), compute)
        return self._raw[key]

    def _cache_path(self, key: str) -> str | None:
        """The disk-cache file of set ``key``'s raw features (None without ``feature_cache_dir``)."""
        ident = {"encoder": dataclasses.asdict(self.c.encoder), "data": dataclasses.asdict(self.c.data), "set": key}
        return feature_cache.cache_path(self.c.feature_cache_dir, f"dlsr_{key.replace('/', '_')}", ident)

    def normalize(self, raw, params) -> jax.Array:
        """Raw features [N, D] -> z_0 [N, D] (``config.task.normalize``; dataset stats from ``params``)."""
        stats = jax.lax.stop_gradient(params["stats"]) if "stats" in params else None
        return feat.normalize_features(raw, self.dims, self.c.normalize, stats=stats, ddof=int(self.c.zscore_ddof))

    def z0_of(self, raw: np.ndarray, params, context: RuntimeContext) -> np.ndarray:
        """``normalize`` (per example) as one jitted function over ``context``'s mesh -> numpy [N, D]."""
        if "normalize" not in self._fns:
            self._fns["normalize"] = jax.jit(lambda p, x: self.normalize(x, p))
        norm = self._fns["normalize"]
        return context.map_batches(lambda x, index: norm(params, x), np.asarray(raw, np.float32),
                                   batch_size=int(self.c.score_chunk), progress=None)

    def z0(self, key: str, params, context: RuntimeContext) -> np.ndarray:
        return self.z0_of(self.raw_features(key, context), params, context)

    # -- training -----------------------------------------------------------------------------
    def init_params(self, rng):
        d = sum(self.dims)
        params = {"lfdn": self.model.init(rng, jnp.zeros((1, d)), jnp.ones((1,), jnp.int32))["params"]}
        if self.c.normalize == "dataset":
            params["stats"] = {k: jnp.asarray(v) for k, v in self._stats.items()}
        return params

    def apply(self, params, z_t, t):
        """LFDN x0 prediction with ``params`` (the full task params): [B, D], [B] -> [B, D]."""
        return self.model.apply({"params": params["lfdn"]}, z_t, t)

    def loss_fn(self, params, batch, rng):
        z0 = self.normalize(batch["features"], params)
        drop_rng, loss_rng = jax.random.split(rng)
        train = float(self.c.model.dropout) > 0

        def denoise(x, t):
            return self.model.apply({"params": params["lfdn"]}, x, t, train=train,
                                    rngs={"dropout": drop_rng} if train else None)

        loss, aux = gaussian.x0_loss(denoise, z0, loss_rng, schedule=self.schedule)
        return loss, {"loss": loss, "t_mean": jnp.mean(aux["t"].astype(jnp.float32))}

    def train_batches(self, start_step, *, global_batch_size, process_index=0, process_count=1):
        raw = self.raw_features("train")
        for idx in epoch_shuffled_indices(raw.shape[0], start_step, global_batch_size=global_batch_size,
                                          process_index=process_index, process_count=process_count,
                                          seed=int(self.c.data.seed)):
            yield {"features": raw[idx]}

    def abstract_batch(self, global_batch_size):
        """Raw features [B, D] float32 (``ood.features.extract_features``'s dtype), D = the encoder's stage dims."""
        return {"features": jax.ShapeDtypeStruct((int(global_batch_size), sum(self.dims)), jnp.float32)}

    # -- scoring (the OODTask hooks) ----------------------------------------------------------
    def _sweep_fn(self, per_layer: bool):
        if ("sweep", per_layer) not in self._fns:
            c = self.c
            self._fns[("sweep", per_layer)] = sweep_lib.make_sweep_fn(
                self.apply, self.schedule, self.dims, ddim_steps=int(c.ddim_steps), eta=float(c.ddim_eta),
                mfsim_skip_first=bool(c.mfsim_skip_first), per_layer=per_layer,
                t_batch_size=int(c.sweep_t_batch) or None)
        return self._fns[("sweep", per_layer)]

    def _early(self, snapshots):
        """The LR score's early params: the step-``lr_snapshot_step`` snapshot, or None."""
        return snapshots.get(int(self.c.lr_snapshot_step)) if snapshots else None

    def score_set(self, params, key, s, ts, *, num_seeds, seed, stage, context, snapshots=None,
                  max_examples=None, names=None):
        """{score: [n_t, n_s, (L,) N]}: mse / mfsim (+ ``*_layers`` but for ``score``), and lr_* when the
        snapshot is there; examples sharded over ``context``'s mesh, ``score_chunk`` at a time
        (``sweep_chunk`` in the sweep)."""
        c = self.c
        raw = self.extract(s.images, "score: features", context) if key == "inputs" else self.raw_features(key, context)
        z0 = self.z0_of(raw, params, context)[:max_examples]
        wants_lr = names is None or any(n.startswith("lr_") for n in names)
        early = self._early(snapshots) if wants_lr else None
        if names is not None and wants_lr and early is None:
            raise FileNotFoundError(f"score {names[0]!r} needs the step-{c.lr_snapshot_step} snapshot in the run's "
                                    "snapshots/ folder")
        keys = sweep_lib.seed_keys(int(seed), int(num_seeds))
        fn = self._sweep_fn(per_layer=stage != "score")
        chunk = (int(c.sweep_chunk) or int(c.score_chunk)) if stage == "sweep" else int(c.score_chunk)
        out = sweep_lib.sweep_chunked(fn, params, z0, ts, keys, chunk=chunk, context=context)
        if early is not None:
            e = sweep_lib.sweep_chunked(fn, early, z0, ts, keys, chunk=chunk, context=context)
            out.update(scores_lib.likelihood_ratio(out, e))
        return out

    def user_set(self, images, inputs):
        return images.row_ids(), images

    def extra_scores(self, params, score_t, keys, context, snapshots) -> dict:
        """Mahalanobis / kNN (``config.task.baselines``) on the same z_0, fitted on ID train: {set: {name: [N]}}."""
        c, out = self.c, {k: {} for k in keys}
        z = {k: self.z0(k, params, context) for k in ["train"] + list(keys)}
        if "mahalanobis" in c.baselines:
            fit = baselines.fit_mahalanobis(z["train"])
            for k in keys:
                out[k]["mahalanobis"] = baselines.mahalanobis_scores(fit, z[k], chunk=int(c.score_chunk),
                                                                     context=context)
        if "knn" in c.baselines:
            for k in keys:
                out[k]["knn"] = baselines.knn_score(z["train"], z[k], k=int(c.knn_k), chunk=int(c.score_chunk),
                                                    context=context)
        return out

    def result_entries(self, params, point, table, snapshots) -> dict:
        early = self._early(snapshots)
        return {"ddim_steps": int(self.c.ddim_steps), "feature_dtype": str(self.c.encoder.dtype),
                "lr_snapshot_step": int(self.c.lr_snapshot_step) if early is not None else None}

    def table_header(self, results: dict) -> str:
        """The table's first line: operating point, seeds, params, LR definition."""
        n = results.get("num_examples", {})
        lr = (f"; lr_* = S(step {results['lr_snapshot_step']} snapshot) - S(final) (authors' test_LR.py sign)"
              if results.get("lr_snapshot_step") is not None else "")
        return (f"DLSR OOD detection at t={results['score_t']} ({results['ddim_steps']} DDIM steps; scores averaged "
                f"over {results['num_seeds']} fixed noise seed(s) of score_seed={results.get('score_seed', 0)}; "
                f"{n.get('test', '?')} ID test examples; trainer's eval params, EMA when ema_decay > 0{lr}).")

    def per_layer_title(self) -> str:
        return f"per-layer AUROC (layers of {len(self.dims)} stages, channels {tuple(self.dims)}):"

    def sweep_entries(self, ts, grids) -> dict:
        return {"score_seed": int(self.c.score_seed), "ddim_steps": int(self.c.ddim_steps)}

    def at_score_t_notes(self, num_seeds, max_examples) -> dict:
        return {"same_examples_and_seeds_as_evaluate": max_examples is None and num_seeds == int(self.c.num_seeds)}

    def sweep_figure(self, ts, res, num_seeds):
        c = self.c
        return report.sweep_curves(res), (f"DLSR AUROC vs t ({c.ddim_steps} DDIM steps, eta={c.ddim_eta}, "
                                          f"mean of {num_seeds} noise seed(s))"), False


register_prepare_call("dlsr")(ood_prepare_call(read_user_images))


@register_task("dlsr", config=DLSRConfig)
def from_config(cfg: DLSRConfig) -> DLSRTask:
    return DLSRTask(cfg)
