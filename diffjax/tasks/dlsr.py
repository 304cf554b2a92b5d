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
call per example chunk) -> ``sweep.png`` + ``sweep.json``; it scores the same examples with the same
seeds and params as ``evaluate`` (``DLSRTask.scoring_setup``), so its value at ``score_t`` is the
table's (``sweep.json["at_score_t"]``).

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

from diffjax.data.images import ImageSet
from diffjax.diffusion import gaussian
from diffjax.diffusion.schedules import gaussian_schedule
from diffjax.models.lfdn import LFDN
from diffjax.ood import baselines, features as feat, metrics, scores as scores_lib, sweep as sweep_lib
from diffjax.tasks.base import Task, register_task


def _cfg_to_dict(c) -> dict:
    return json.loads(c.to_json()) if hasattr(c, "to_json") else dict(c)


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Data and encoder


def load_sets(data) -> tuple[ImageSet, ImageSet, dict[str, ImageSet]]:
    """``config.task.data`` -> (ID train, ID test, {ood_name: ImageSet})."""
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
    raise ValueError(f"unknown task.data.kind {data.kind!r}; expected 'mnist_demo' or 'tfds'")


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
            train, test, ood = load_sets(self.c.data)
            self._sets = {"train": train, "test": test, **{f"ood/{k}": v for k, v in ood.items()}}
        return self._sets

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

    def _scores(self, params, z0, ts, num_seeds, per_layer, early=None, chunk=None):
        """{score: [n_t, n_s, (L,) N]} for the final params, plus lr_* when early params are given."""
        keys = sweep_lib.seed_keys(int(self.c.score_seed), int(num_seeds))
        fn = self._sweep_fn(per_layer)
        out = sweep_lib.sweep_chunked(fn, params, z0, ts, keys, chunk=chunk)
        if early is not None:
            e = sweep_lib.sweep_chunked(fn, early, z0, ts, keys, chunk=chunk)
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

    def evaluate(self, params, rng, workdir, snapshots=None, **kwargs):
        del rng, kwargs
        t0 = time.time()
        c = self.c
        early = self._early(snapshots)
        ts = [int(c.score_t)]
        z = {k: self.z0(k, params) for k in self.sets()}
        score = {}
        for k in self.sets():
            if k == "train":
                continue
            s = self._scores(params, z[k], ts, c.num_seeds, True, early, chunk=int(c.score_chunk))
            score[k] = {name: sweep_lib.seed_mean(v)[0] for name, v in s.items()}  # seed-averaged [N] / [L, N]
        # baselines on the same z_0
        base = {}
        if "mahalanobis" in c.baselines:
            fit = baselines.fit_mahalanobis(z["train"])
            base["mahalanobis"] = {k: np.asarray(baselines.mahalanobis_score(fit, jnp.asarray(z[k]))) for k in score}
        if "knn" in c.baselines:
            base["knn"] = {k: baselines.knn_score(z["train"], z[k], k=int(c.knn_k)) for k in score}
        for b, per in base.items():
            for k in score:
                score[k][b] = per[k]

        fused = [n for n in score["test"] if not n.endswith("_layers")]
        results = {"fpr95_convention": metrics.FPR95_CONVENTION, "score_t": int(c.score_t),
                   "ddim_steps": int(c.ddim_steps), "num_seeds": int(c.num_seeds), "score_seed": int(c.score_seed),
                   "lr_snapshot_step": int(c.lr_snapshot_step) if early is not None else None,
                   "metrics": {}, "per_layer": {}}
        for ood in self.ood_names:
            kk = f"ood/{ood}"
            results["metrics"][ood] = {n: metrics.ood_metrics(score["test"][n], score[kk][n]) for n in fused}
            results["per_layer"][ood] = {
                n: [metrics.ood_metrics(score["test"][n][l], score[kk][n][l])["auroc"] for l in range(len(self.dims))]
                for n in score["test"] if n.endswith("_layers")}
        results["average"] = {n: {m: float(np.mean([results["metrics"][o][n][m] for o in self.ood_names]))
                                  for m in ("auroc", "fpr95", "aupr_in", "aupr_out")} for n in fused}
        results["num_examples"] = {k: int(len(v)) for k, v in self.sets().items()}
        results["eval_seconds"] = time.time() - t0
        table = format_table(results, self.ood_names, fused, self.dims)
        if jax.process_index() == 0:
            print(table, flush=True)
            os.makedirs(workdir, exist_ok=True)
            with open(os.path.join(workdir, "results_table.txt"), "w") as f:
                f.write(table + "\n")
            plot_rocs(score, self.ood_names, fused, os.path.join(workdir, "roc.png"))
        return results

    def sweep(self, params, rng, workdir, snapshots=None, **kwargs):
        del rng, kwargs
        t0 = time.time()
        c = self.c
        early = self._early(snapshots)
        ts = [int(t) for t in c.sweep_ts]
        setup = self.scoring_setup()
        n_max = setup["max_examples"]
        out = {}
        for k in self.sets():
            if k == "train":
                continue
            z = self.z0(k, params)[:n_max]
            s = self._scores(params, z, ts, setup["num_seeds"], True, early, chunk=setup["chunk"])
            out[k] = {n: v for n, v in s.items() if not n.endswith("_layers")}
        names = list(out["test"])
        curves, res = {}, {"ts": ts, "auroc": {}, "best_t": {}, "num_seeds": setup["num_seeds"],
                           "score_seed": setup["score_seed"], "ddim_steps": int(c.ddim_steps)}
        for ood in self.ood_names:
            res["auroc"][ood] = {}
            for n in names:
                a = sweep_lib.sweep_auroc(out["test"][n], out[f"ood/{ood}"][n])
                res["auroc"][ood][n] = [float(x) for x in a]
                res["best_t"].setdefault(ood, {})[n] = {"t": ts[int(np.argmax(a))], "auroc": float(np.max(a))}
                curves.setdefault(f"ID test vs {ood}", {})[n] = a
        res["sweep_seconds"] = time.time() - t0
        res["num_examples_per_set"] = {k: int(v["mse"].shape[-1]) for k, v in out.items()}
        if int(c.score_t) in ts:  # the table's operating point; equal to results.json when setups match
            i = ts.index(int(c.score_t))
            res["at_score_t"] = {"t": int(c.score_t), "auroc": {o: {n: v[i] for n, v in d.items()}
                                                               for o, d in res["auroc"].items()},
                                 "same_examples_and_seeds_as_evaluate": setup["max_examples"] is None
                                 and setup["num_seeds"] == int(c.num_seeds)}
        if jax.process_index() == 0:
            os.makedirs(workdir, exist_ok=True)
            sweep_lib.plot_sweep(ts, curves, os.path.join(workdir, "sweep.png"),
                                 title=f"DLSR AUROC vs t ({c.ddim_steps} DDIM steps, eta={c.ddim_eta}, "
                                       f"mean of {setup['num_seeds']} noise seed(s))")
            print("sweep: best t per OOD set and score: " + "; ".join(
                f"{o}/{n}: t={v['t']} AUROC={v['auroc']:.4f}" for o, d in res["best_t"].items() for n, v in d.items()),
                flush=True)
        return res


def format_table(results: dict, ood_names, fused, dims) -> str:
    """The printed evaluation table: one row per (OOD set, score), then the averages."""
    n = results.get("num_examples", {})
    lr = (f"; lr_* = S(step {results['lr_snapshot_step']} snapshot) - S(final) (authors' test_LR.py sign)"
          if results.get("lr_snapshot_step") is not None else "")
    lines = [f"DLSR OOD detection at t={results['score_t']} ({results['ddim_steps']} DDIM steps; scores averaged "
             f"over {results['num_seeds']} fixed noise seed(s) of score_seed={results.get('score_seed', 0)}; "
             f"{n.get('test', '?')} ID test examples; trainer's eval params, EMA when ema_decay > 0{lr}).",
             "OOD = positive, higher score = more OOD.",
             metrics.FPR95_CONVENTION + ".",
             f"{'OOD set':<18} {'score':<24} {'AUROC':>7} {'FPR95':>7} {'AUPR-In':>8} {'AUPR-Out':>9}"]
    rows = [(o, results["metrics"][o]) for o in ood_names] + [("average", results["average"])]
    for o, per in rows:
        lines.append("-" * 77)
        for n in fused:
            m = per[n]
            tag = " (baseline)" if n in ("mahalanobis", "knn") else ""
            lines.append(f"{o:<18} {n + tag:<24} {m['auroc']:7.4f} {m['fpr95']:7.4f} {m['aupr_in']:8.4f} "
                         f"{m['aupr_out']:9.4f}")
    if results.get("per_layer"):
        lines.append("-" * 77)
        lines.append(f"per-layer AUROC (layers of {len(dims)} stages, channels {tuple(dims)}):")
        for o in ood_names:
            for n, vals in results["per_layer"][o].items():
                lines.append(f"  {o:<16} {n:<24} " + " ".join(f"{v:.3f}" for v in vals))
    return "\n".join(lines)


def plot_rocs(score: dict, ood_names, fused, path: str) -> None:
    """ROC curves (fraction of ID flagged vs fraction of OOD flagged), one panel per OOD set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ood_names), figsize=(4.2 * len(ood_names), 4), squeeze=False)
    for ax, o in zip(axes[0], ood_names):
        for n in fused:
            fpr, tpr = metrics.roc_curve(score["test"][n], score[f"ood/{o}"][n])
            auc = metrics.ood_metrics(score["test"][n], score[f"ood/{o}"][n])["auroc"]
            ax.plot(fpr, tpr, lw=1.2, ls="--" if n in ("mahalanobis", "knn") else "-", label=f"{n} ({auc:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6)
        ax.set_title(f"ID test vs {o}", fontsize=9)
        ax.set_xlabel("ID flagged (FPR)")
        ax.set_ylabel("OOD flagged (TPR)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@register_task("dlsr")
def from_config(task_config) -> DLSRTask:
    return DLSRTask(task_config)
