"""DLSR task (papers.md, paper 003): diffusion on layer-wise semantic features for unsupervised OOD.

frozen EfficientNet (not in ``params``) -> per-stage GAP features, cached once per set
(``diffjax.ood.features``) -> z_0 (per-sample z-score per layer, or ID-train dataset statistics
stored in ``params["stats"]``) -> LFDN (``diffjax.models.lfdn``) trained on ID train features only
with the x0 loss ``E_{t,eps} ||z_0 - f(z_t, t)||^2`` (``diffusion.gaussian.x0_loss``, scaled-linear
schedule, T = 100). The trainer's EMA params score; a trainer snapshot at ``lr_snapshot_step``
gives the early params of the LR score.

``evaluate``: scores MSE, MFsim (fused and per layer) and LR (S_early - S_final, the sign of the
authors' ``test_LR.py``; see ``diffjax.ood.scores.likelihood_ratio``) at
``score_t`` for ID test and every OOD set, plus Mahalanobis / kNN baselines on the same z_0 ->
printed table (AUROC, FPR95 with the ID-95% convention, AUPR) + ``roc.png``; returns the dict the
trainer writes to ``results.json``. ``sweep``: AUROC per t over ``sweep_ts`` (one jitted grid
call per example chunk) -> ``sweep.png`` + ``sweep.json``. Table, plots and the sweep are the
shared OOD pieces (``diffjax.ood.report``, ``diffjax.ood.sweep``; paper 000's text task uses them
too); this module binds them to the features, the LFDN and the DLSR scores. The sweep scores the
same examples with the same seeds and params as ``evaluate`` (``DLSRTask.scoring_setup``), so its
value at ``score_t`` is the table's (``sweep.json["at_score_t"]``).

Config (``config.task``; see configs/dlsr_mnist_demo.py for every field with comments).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.data.images import ImageSet, load_user_images
from diffjax.diffusion import gaussian
from diffjax.diffusion.schedules import GAUSSIAN_KINDS, gaussian_schedule
from diffjax.models.lfdn import LFDN
from diffjax.ood import baselines, deploy, features as feat, metrics, report, scores as scores_lib, sweep as sweep_lib
from diffjax.tasks import fields as F
from diffjax.tasks.base import Task, register_prepare_call, register_task


def _cfg_to_dict(c) -> dict:
    return json.loads(c.to_json()) if hasattr(c, "to_json") else dict(c)


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Data and encoder


def load_sets(data, image_size: int | None = None) -> tuple[ImageSet, ImageSet, dict[str, ImageSet]]:
    """``config.task.data`` -> (ID train, ID test, {ood_name: ImageSet}), plus the user's own OOD
    sets of ``data.user_ood`` (folders / .npy, resized to ``user_image_size`` or ``image_size``)."""
    train, test, ood = _builtin_sets(data, image_size)
    size = int(data.user_image_size) or image_size
    for spec in data.user_ood:
        s = load_user_images(spec, resize_to=size)
        ood[s.name] = s
    return train, test, ood


def _builtin_sets(data, image_size):
    if data.kind == "files":  # the user's own ID images
        size = int(data.user_image_size) or image_size
        if not data.id_train or not data.id_test:
            raise ValueError("task.data.kind='files' needs task.data.id_train and task.data.id_test (image folders "
                             "or .npy arrays)")
        return (load_user_images(data.id_train, resize_to=size, name="id_train"),
                load_user_images(data.id_test, resize_to=size, name="id_test"), {})
    if data.kind == "mnist_demo":
        from diffjax.data.demo_sets import dlsr_mnist_demo_sets

        return dlsr_mnist_demo_sets(n_train=data.n_train, n_test=data.n_test, n_ood=data.n_ood, seed=data.seed,
                                    patch_size=data.patch_size)
    if data.kind == "tfds":
        from diffjax.data.images import load_tfds

        def one(spec, n, default_split):
            name, _, split = spec.partition(":")
            return load_tfds(name, split or default_split, data.data_dir or None, image_key=data.image_key,
                             max_examples=n or None, resize_to=data.resize_to or None, set_name=spec)

        train = one(f"{data.id_name}:{data.id_train_split}", data.n_train, "train")
        test = one(f"{data.id_name}:{data.id_test_split}", data.n_test, "test")
        ood = {spec.partition(":")[0]: one(spec, data.n_ood, "test") for spec in data.ood}
        return train, test, ood
    raise ValueError(f"unknown task.data.kind {data.kind!r}; expected 'mnist_demo', 'tfds' or 'files'")


def build_encoder(enc):
    """``config.task.encoder`` -> (encode_stages(x) -> 5 stage maps, layer dims, mean, std, image_size)."""
    from diffjax.models import efficientnet as en

    name = en.canonical_name(enc.name)
    dtype = jnp.dtype(enc.dtype)
    if enc.weights == "random":  # tests / smoke runs only: random conv weights, BN at init stats
        cfg = en.efficientnet_config(name)
        model = en.EfficientNet(cfg, include_head=False, dtype=dtype)
        size = enc.image_size or cfg.resolution
        variables = _random_variables(model, size, int(enc.random_seed))
    else:
        from diffjax.checkpoints.efficientnet import load_efficientnet

        path = None if enc.weights in ("", "embedded") else os.path.expanduser(enc.weights)
        model, variables = load_efficientnet(name, path, include_head=False, dtype=dtype)
        cfg = model.config
    dims = en.feature_channels(cfg)
    variables = jax.tree_util.tree_map(jnp.asarray, variables)

    def encode_stages(x):
        return model.apply(variables, x.astype(dtype))["features"]

    return encode_stages, tuple(int(d) for d in dims), cfg.mean, cfg.std, int(enc.image_size or cfg.resolution)


def _random_variables(model, size: int, seed: int) -> dict:
    """Random-weight variables without compiling ``model.init`` (that compile cost ~6 s on CPU).

    Shapes from ``jax.eval_shape(model.init)``; every >=2-d kernel ~ N(0, 1/fan_in) with fan_in =
    prod(shape[:-1]) (He-like, also right for depthwise ``[k, k, 1, C]``), 1-d ``scale`` / ``var``
    = 1, other 1-d leaves (bias, BN mean) = 0: BN at its init statistics, as ``model.init``.
    """
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        name = str(getattr(path[-1], "key", path[-1]))
        if len(x.shape) >= 2:
            return (rng.standard_normal(x.shape) / np.sqrt(np.prod(x.shape[:-1]))).astype(x.dtype)
        return np.full(x.shape, 1.0 if name in ("scale", "var") else 0.0, x.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


# ----------------------------------------------------------------------------------------------
# Fields


def _encoder_name(v) -> bool:
    from diffjax.models import efficientnet as en

    try:
        en.canonical_name(v)
        return True
    except (ValueError, AttributeError, TypeError):
        return False


def validate_task_config(c) -> None:
    """The valid range of every ``config.task`` field (``fields.ConfigError``); reads no images or weights."""
    F.check_fields(c, (
        ("data.kind", F.choice("mnist_demo", "tfds", "files")), ("data.data_dir", F.text()),
        ("data.id_name", F.text()), ("data.id_train_split", F.text()), ("data.id_test_split", F.text()),
        ("data.id_train", F.text()), ("data.id_test", F.text()), ("data.image_key", F.text()),
        ("data.n_train", F.integer(0, what="0 = all")), ("data.n_test", F.integer(0, what="0 = all")),
        ("data.n_ood", F.integer(0, what="0 = all")), ("data.patch_size", F.integer(1)),
        ("data.resize_to", F.integer(0, what="0 = as stored")), ("data.seed", F.integer(0)),
        ("data.user_image_size", F.integer(0, what="0 = the encoder's")), ("data.ood", F.texts()),
        ("data.user_ood", F.texts()),
        ("encoder.name", F.Check(_encoder_name, "an EfficientNet variant, e.g. 'efficientnet-lite0' or 'b4'")),
        ("encoder.weights", F.text()), ("encoder.dtype", F.choice("float32", "bfloat16", "float16")),
        ("encoder.image_size", F.integer(0, what="0 = the variant's resolution")),
        ("encoder.batch_size", F.integer(1)), ("encoder.random_seed", F.integer(0)),
        ("model.width", F.integer(0)), ("model.mid_width", F.integer(0)), ("model.emb_dim", F.integer(0)),
        ("model.num_blocks", F.integer(1)), ("model.dropout", F.number(0.0, 1.0, high_open=True)),
        ("normalize", F.choice("per_sample", "dataset", "none")), ("zscore_ddof", F.integer(0, 1)),
        ("schedule", F.choice(*GAUSSIAN_KINDS)), ("num_diffusion_steps", F.integer(1)),
        ("ddim_steps", F.integer(0, what="0 = one x0 prediction")), ("ddim_eta", F.number(0.0, 1.0)),
        ("mfsim_skip_first", F.boolean()), ("num_seeds", F.integer(1)), ("score_seed", F.integer(0)),
        ("score_chunk", F.integer(1)), ("lr_snapshot_step", F.integer(-1, what="-1 = no LR score")),
        ("deploy_score", F.choice("mse", "mfsim", "lr_mse", "lr_mfsim")),
        ("baselines", F.texts(("mahalanobis", "knn"))), ("knn_k", F.integer(1)),
        ("feature_cache_dir", F.text()), ("sweep_num_seeds", F.integer(0, what="0 = num_seeds")),
        ("sweep_chunk", F.integer(0, what="0 = score_chunk")), ("sweep_max_examples", F.integer(0, what="0 = all")),
        ("sweep_t_batch", F.integer(0, what="0 = every t at once")),
    ))
    T = F.get(c, "num_diffusion_steps")
    F.check_fields(c, (("score_t", F.integer(1, T)), ("sweep_ts", F.timesteps(T)),
                       ("ddim_steps", F.integer(0, T, what="0 = one x0 prediction"))))
    if F.get(c, "data.kind") == "files":
        for f in ("data.id_train", "data.id_test"):
            F.require(bool(F.get(c, f, "x")), f"task.{f}", F.get(c, f),
                      "an image folder or .npy array with task.data.kind='files'")
    if str(F.get(c, "deploy_score", "")).startswith("lr_"):
        step = F.get(c, "lr_snapshot_step")
        F.require(step is None or step >= 0, "task.lr_snapshot_step", step,
                  f"an integer >= 0 with task.deploy_score={F.get(c, 'deploy_score')!r} (the LR score needs the snapshot)")


# ----------------------------------------------------------------------------------------------
# The task


class DLSRTask(Task):
    name = "dlsr"

    def __init__(self, c):
        self.c = c
        self.schedule = gaussian_schedule(c.schedule, int(c.num_diffusion_steps))
        m = c.model
        self._encoder = None
        self._sets = None
        self._raw: dict[str, np.ndarray] = {}
        self.dims = self._layer_dims()
        self.model = LFDN(in_dim=sum(self.dims), width=m.width or None, mid_width=m.mid_width or None,
                          emb_dim=m.emb_dim or None, num_blocks=int(m.num_blocks), dropout=float(m.dropout))
        self.snapshot_steps = (int(c.lr_snapshot_step),) if int(c.lr_snapshot_step) >= 0 else ()
        if c.normalize == "dataset":  # stats must be concrete before init_params is traced
            self._stats = feat.fit_dataset_stats(self.raw_features("train"))

    # -- features ---------------------------------------------------------------------------
    def _layer_dims(self):
        from diffjax.models import efficientnet as en

        return tuple(int(d) for d in en.feature_channels(en.efficientnet_config(en.canonical_name(self.c.encoder.name))))

    def sets(self):
        if self._sets is None:
            train, test, ood = load_sets(self.c.data, image_size=self._image_size())
            self._sets = {"train": train, "test": test, **{f"ood/{k}": v for k, v in ood.items()}}
        return self._sets

    def _image_size(self) -> int:
        from diffjax.models import efficientnet as en

        enc = self.c.encoder
        return int(enc.image_size) or int(en.efficientnet_config(en.canonical_name(enc.name)).resolution)

    def _feature_fn(self):
        """The jitted raw-feature extractor (built once; shared by raw_features and score)."""
        if self._encoder is None:
            encode, dims, mean, std, size = build_encoder(self.c.encoder)
            assert dims == self.dims, (dims, self.dims)
            self._encoder = feat.make_feature_fn(encode, image_size=size, mean=mean, std=std)
        return self._encoder

    @property
    def ood_names(self) -> list[str]:
        return [k[4:] for k in self.sets() if k.startswith("ood/")]

    def _cache_path(self, key: str) -> str | None:
        if not self.c.feature_cache_dir:
            return None
        ident = json.dumps({"encoder": _cfg_to_dict(self.c.encoder), "data": _cfg_to_dict(self.c.data),
                            "set": key}, sort_keys=True)
        h = hashlib.sha1(ident.encode()).hexdigest()[:16]
        return os.path.join(os.path.expanduser(self.c.feature_cache_dir), f"dlsr_{key.replace('/', '_')}_{h}.npy")

    def raw_features(self, key: str) -> np.ndarray:
        """Raw concatenated GAP features of set ``key`` ("train", "test", "ood/<name>") -> [N, D]."""
        if key in self._raw:
            return self._raw[key]
        path = self._cache_path(key)
        if path and os.path.exists(path):
            self._raw[key] = np.load(path)
            return self._raw[key]
        if self._encoder is None:
            encode, dims, mean, std, size = build_encoder(self.c.encoder)
            assert dims == self.dims, (dims, self.dims)
            self._encoder = feat.make_feature_fn(encode, image_size=size, mean=mean, std=std)
        images = self.sets()[key].images
        t0 = time.time()
        raw = feat.extract_features(self._encoder, images, batch_size=int(self.c.encoder.batch_size), desc=key)
        _log(f"dlsr: features of {key}: {raw.shape} in {time.time() - t0:.1f}s")
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            np.save(path + ".tmp.npy", raw)
            os.replace(path + ".tmp.npy", path)
        self._raw[key] = raw
        return raw

    def normalize(self, raw, params) -> jax.Array:
        stats = jax.lax.stop_gradient(params["stats"]) if "stats" in params else None
        return feat.normalize_features(raw, self.dims, self.c.normalize, stats=stats, ddof=int(self.c.zscore_ddof))

    def z0(self, key: str, params) -> np.ndarray:
        if "_normalize_jit" not in self.__dict__:  # one jitted function: compiles once per shape
            self._normalize_jit = jax.jit(self.normalize)
        return np.asarray(self._normalize_jit(jnp.asarray(self.raw_features(key)), params))

    # -- training ---------------------------------------------------------------------------
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
        n = raw.shape[0]
        if global_batch_size % process_count:
            raise ValueError(f"global_batch_size {global_batch_size} must divide by process_count {process_count}")
        local = global_batch_size // process_count
        seed = int(self.c.data.seed)
        perms: dict[int, np.ndarray] = {}

        def perm(epoch):  # one permutation per epoch, a pure function of (seed, epoch)
            if epoch not in perms:
                if len(perms) > 4:
                    perms.clear()
                perms[epoch] = np.random.default_rng([seed, 7, epoch]).permutation(n)
            return perms[epoch]

        step = int(start_step)
        while True:  # example p of the stream = perm(p // n)[p % n]: resumable and process-consistent
            pos = step * global_batch_size + process_index * local + np.arange(local)
            idx = np.array([perm(int(q) // n)[int(q) % n] for q in pos])
            yield {"features": raw[idx]}
            step += 1

    # -- scoring ----------------------------------------------------------------------------
    def _sweep_fn(self, per_layer: bool):
        key = ("sweep_fn", per_layer)
        if key not in self.__dict__:
            self.__dict__[key] = sweep_lib.make_sweep_fn(
                self.apply, self.schedule, self.dims, ddim_steps=int(self.c.ddim_steps), eta=float(self.c.ddim_eta),
                mfsim_skip_first=bool(self.c.mfsim_skip_first), per_layer=per_layer,
                t_batch_size=int(self.c.sweep_t_batch) or None)
        return self.__dict__[key]

    def _scores(self, params, z0, ts, num_seeds, per_layer, early=None, chunk=None, context=None):
        """{score: [n_t, n_s, (L,) N]} for the final params, plus lr_* when early params are given;
        examples sharded over ``context``'s mesh when one is given."""
        keys = sweep_lib.seed_keys(int(self.c.score_seed), int(num_seeds))
        fn = self._sweep_fn(per_layer)
        out = sweep_lib.sweep_chunked(fn, params, z0, ts, keys, chunk=chunk, context=context)
        if early is not None:
            e = sweep_lib.sweep_chunked(fn, early, z0, ts, keys, chunk=chunk, context=context)
            out.update(scores_lib.likelihood_ratio(out, e))
        return out

    def scoring_setup(self) -> dict:
        """What ``evaluate`` and ``sweep`` share, so the sweep at ``score_t`` reproduces the table.

        Both score every example of each set (``sweep_max_examples`` 0) with the same fixed noise
        seeds (``num_seeds`` of ``score_seed``; ``sweep_num_seeds`` 0 = the same), the same chunk
        (``sweep_chunk`` 0 = ``score_chunk``) and the same jitted grid function, with the params
        the trainer passes (EMA when ``ema_decay`` > 0). With ``sweep_t_batch`` = 1 each t is its
        own flat batch of the single-t call's shape, so the sweep's value at ``score_t`` equals the
        table's bit for bit (tests/test_dlsr_task.py asserts it); other settings agree to float32
        rounding of the scores.
        """
        c = self.c
        return {"num_seeds": int(c.sweep_num_seeds) or int(c.num_seeds), "score_seed": int(c.score_seed),
                "chunk": int(c.sweep_chunk) or int(c.score_chunk), "max_examples": int(c.sweep_max_examples) or None}

    def _early(self, snapshots):
        if not snapshots:
            return None
        step = int(self.c.lr_snapshot_step)
        return snapshots.get(step)

    def _set_scores(self, params, ts, setup, early, z_of, context):
        """{set key: {score: [n_t, n_s, (L,) N]}} for ID test and every OOD set (not train)."""
        return {k: self._scores(params, z_of(k), ts, setup["num_seeds"], True, early, chunk=setup["chunk"],
                                context=context)
                for k in self.sets() if k != "train"}

    def evaluate(self, params, rng, workdir, *, context, snapshots=None, step=None, **kwargs):
        del rng, kwargs
        t0 = time.time()
        c = self.c
        early = self._early(snapshots)
        z = {k: self.z0(k, params) for k in self.sets()}
        setup = {"num_seeds": int(c.num_seeds), "chunk": int(c.score_chunk)}
        grids = self._set_scores(params, [int(c.score_t)], setup, early, z.__getitem__, context)
        score = {k: {n: report.seed_mean(v)[0] for n, v in s.items()} for k, s in grids.items()}  # [N] / [L, N]
        # baselines on the same z_0
        if "mahalanobis" in c.baselines:
            fit = baselines.fit_mahalanobis(z["train"])
            for k in score:
                score[k]["mahalanobis"] = np.asarray(baselines.mahalanobis_score(fit, jnp.asarray(z[k])))
        if "knn" in c.baselines:
            for k in score:
                score[k]["knn"] = baselines.knn_score(z["train"], z[k], k=int(c.knn_k))

        fused = lambda s: {n: v for n, v in s.items() if not n.endswith("_layers")}  # noqa: E731
        layers = lambda s: {n: v for n, v in s.items() if n.endswith("_layers")}  # noqa: E731
        id_s, ood_s = score["test"], {o: score[f"ood/{o}"] for o in self.ood_names}
        table = report.results_table(fused(id_s), {o: fused(s) for o, s in ood_s.items()})
        results = {"fpr95_convention": metrics.FPR95_CONVENTION, "score_t": int(c.score_t),
                   "ddim_steps": int(c.ddim_steps), "num_seeds": int(c.num_seeds), "score_seed": int(c.score_seed),
                   "lr_snapshot_step": int(c.lr_snapshot_step) if early is not None else None,
                   "metrics": table["metrics"],
                   "per_layer": report.per_layer_auroc(layers(id_s), {o: layers(s) for o, s in ood_s.items()}),
                   "average": table["average"],
                   "num_examples": {k: int(len(v)) for k, v in self.sets().items()}}
        results["eval_seconds"] = time.time() - t0
        text = report.format_table(results, _table_header(results), baselines=BASELINES,
                                   per_layer=results["per_layer"],
                                   per_layer_title=f"per-layer AUROC (layers of {len(self.dims)} stages, "
                                                   f"channels {tuple(self.dims)}):")
        fitted = deploy.fitted_on(params, step)  # on every process (params may span hosts)
        if jax.process_index() == 0:
            print(text, flush=True)
            os.makedirs(workdir, exist_ok=True)
            # the deployed flag (`score`): threshold accepting 95% of the held-out ID test scores
            deploy.save_threshold(workdir, score=c.deploy_score, heldout_id_scores=id_s[c.deploy_score],
                                  heldout="ID test (not trained on)", score_t=int(c.score_t),
                                  num_seeds=int(c.num_seeds), score_seed=int(c.score_seed), **fitted)
            with open(os.path.join(workdir, "results_table.txt"), "w") as f:
                f.write(text + "\n")
            report.plot_rocs(fused(id_s), {o: fused(s) for o, s in ood_s.items()}, os.path.join(workdir, "roc.png"),
                             baselines=BASELINES)
        return results

    def sweep(self, params, rng, workdir, *, context, snapshots=None, **kwargs):
        del rng, kwargs
        t0 = time.time()
        c = self.c
        early = self._early(snapshots)
        ts = [int(t) for t in c.sweep_ts]
        setup = self.scoring_setup()
        grids = self._set_scores(params, ts, setup, early, lambda k: self.z0(k, params)[:setup["max_examples"]],
                                 context)
        out = {k: {n: v for n, v in s.items() if not n.endswith("_layers")} for k, s in grids.items()}
        res = report.sweep_results(ts, out["test"], {o: out[f"ood/{o}"] for o in self.ood_names})
        res.update({"num_seeds": setup["num_seeds"], "score_seed": setup["score_seed"], "ddim_steps": int(c.ddim_steps),
                    "sweep_seconds": time.time() - t0,
                    "num_examples_per_set": {k: int(v["mse"].shape[-1]) for k, v in out.items()}})
        at = report.at_t(res, int(c.score_t))
        if at is not None:  # the table's operating point; equal to results.json when setups match
            at["same_examples_and_seeds_as_evaluate"] = (setup["max_examples"] is None
                                                         and setup["num_seeds"] == int(c.num_seeds))
            res["at_score_t"] = at
        if jax.process_index() == 0:
            os.makedirs(workdir, exist_ok=True)
            report.plot_sweep(ts, report.sweep_curves(res), os.path.join(workdir, "sweep.png"),
                              title=f"DLSR AUROC vs t ({c.ddim_steps} DDIM steps, eta={c.ddim_eta}, "
                                    f"mean of {setup['num_seeds']} noise seed(s))")
            print(report.format_best_t(res), flush=True)
        return res

    def score(self, params, rng, workdir, *, context, inputs, output=None, snapshots=None, step=None,
              read_inputs=None, **kwargs):
        """Scores a folder of images / an image file / a .npy array with the trained detector: one row per
        image (id = path relative to the folder, or row number; score; OOD = score > the saved threshold).
        The output path and the threshold's params are checked first (``deploy``); ``read_inputs``: the
        images as ``prepare_call`` read them before the model was built."""
        del rng, kwargs
        c = self.c
        out = deploy.check_output(output or deploy.default_output(workdir), inputs)
        thr = deploy.load_threshold(workdir)
        deploy.check_fitted_on(thr, workdir, params=params, step=step)
        images = read_inputs if read_inputs is not None else load_user_images(inputs, resize_to=user_image_size(c))
        raw = feat.extract_features(self._feature_fn(), images.images, batch_size=int(c.encoder.batch_size),
                                    desc="score: features")
        if "_normalize_jit" not in self.__dict__:
            self._normalize_jit = jax.jit(self.normalize)
        z = np.asarray(self._normalize_jit(jnp.asarray(raw), params))
        name = thr["score"]
        early = self._early(snapshots) if name.startswith("lr_") else None
        if name.startswith("lr_") and early is None:
            raise FileNotFoundError(f"score {name!r} needs the step-{c.lr_snapshot_step} snapshot in {workdir}/snapshots")
        grids = self._scores(params, z, [int(thr["score_t"])], int(thr["num_seeds"]), False, early,
                             chunk=int(c.score_chunk), context=context)
        scores = report.seed_mean(grids[name])[0]
        summary = {**deploy.write_rows(out, images.row_ids(), scores, thr["threshold"], inputs=inputs), "score": name,
                   "score_t": int(thr["score_t"]), "inputs": os.path.abspath(inputs)}
        if jax.process_index() == 0:
            print(f"scored {summary['num_inputs']} images from {inputs}: {summary['num_ood']} flagged OOD ({name} > "
                  f"{thr['threshold']:.6g}, the threshold accepting 95% of ID test); rows in {summary['output']}",
                  flush=True)
        return summary


BASELINES = ("mahalanobis", "knn")


def user_image_size(c) -> int:
    """The size a user's images are resized to: ``data.user_image_size``, else the encoder's input size."""
    from diffjax.models import efficientnet as en

    enc = c.encoder
    return (int(c.data.user_image_size) or int(enc.image_size)
            or int(en.efficientnet_config(en.canonical_name(enc.name)).resolution))


@register_prepare_call("dlsr")
def prepare_call(task_config, workdir: str, method: str, kwargs: dict) -> dict:
    """``score``, before the model is built: the output path (``deploy.check_output``), the inputs (read
    here, passed on as ``read_inputs``) and ``threshold.json`` (readable, complete) are checked."""
    if method != "score":
        return kwargs
    inputs = kwargs["inputs"]
    deploy.check_output(kwargs.get("output") or deploy.default_output(workdir), inputs)
    images = load_user_images(inputs, resize_to=user_image_size(task_config))
    deploy.load_threshold(workdir)
    return {**kwargs, "read_inputs": images}


def _table_header(results: dict) -> str:
    """The DLSR table's first line: operating point, seeds, params, LR definition."""
    n = results.get("num_examples", {})
    lr = (f"; lr_* = S(step {results['lr_snapshot_step']} snapshot) - S(final) (authors' test_LR.py sign)"
          if results.get("lr_snapshot_step") is not None else "")
    return (f"DLSR OOD detection at t={results['score_t']} ({results['ddim_steps']} DDIM steps; scores averaged "
            f"over {results['num_seeds']} fixed noise seed(s) of score_seed={results.get('score_seed', 0)}; "
            f"{n.get('test', '?')} ID test examples; trainer's eval params, EMA when ema_decay > 0{lr}).")


@register_task("dlsr", validate=validate_task_config)
def from_config(task_config) -> DLSRTask:
    return DLSRTask(task_config)
