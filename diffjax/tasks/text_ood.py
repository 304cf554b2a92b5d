"""Text OOD detection by embedding diffusion (papers.md §1, paper 000): the method, bound to ``OODTask``.

A pretrained BERT-family encoder (``config.init_from``, ``tasks/text_ood_backbone.py``) is finetuned on
ID text as a Gaussian denoiser of its own token embeddings scaled to ``x0_std`` per dimension
(``models.text_denoiser.TextDenoiser``; linear betas, T = 1000, x0-prediction, loss
``ld_weight * L_d + lc_weight * L_c``: ``ood.text_scores.diffusion_loss``). A sentence's score at t
is L_d, L_c or L_d + L_c of one x0 prediction, averaged over ``num_seeds`` fixed noise draws keyed
by a hash of its tokens (the same sentence gets the same score anywhere), so a set is scored in length groups,
each at the shortest width that holds its rows (``data.text_ood_sets.length_groups``). The MSP / energy
baselines' classifier trains in the same step for its first ``classifier_steps`` steps (``lax.cond``: then no
forward, no gradient).

Timesteps follow the signal: the grid (``sweep_ts``, or ``sweep_num_ts`` steps evenly spaced in log
SNR up to the t where nearest-embedding rounding of x_t on held-out ID falls below
``sweep_min_rounding_acc``) and, with ``score_t = 0``, the score's t are chosen on **held-out ID
only** (``ood.text_scores.pick_score_t``; ``score_t_by = "rounding"``: the largest grid t where rounding of
x_t still recovers ``score_t_min_rounding_acc`` of the held-out ID tokens; ``"rise"``: the first grid t
where the deploy loss has risen by ``score_t_rise`` of its rise over the grid). Controls and baselines beside the scores: ``tasks/text_ood_baselines.py``.

``OODTask`` writes results.json (plus ``by_t``, ``controls``, ``threshold``), results_table.txt, roc.png,
threshold.json (95% of held-out ID), sweep.json / sweep.png and the ``score`` rows. Sets:
``data.text_ood_sets``; fields: ``TextOODConfig`` (``tasks/text_ood_fields.py``; configs/text_ood_demo.py).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.data import text_ood_sets as tdata
from diffjax.diffusion.schedules import gaussian_schedule
from diffjax.models import bert
from diffjax.models import text_denoiser as tdn
from diffjax.ood import deploy, report, sweep as sweep_lib, text_scores as ts_lib
from diffjax.ood.text_scores import by_t_rows, choose_score_t, pick_score_t  # noqa: F401 (held-out-ID rules)
from diffjax.runtime import log
from diffjax.tasks import text_ood_baselines as tb
from diffjax.tasks.base import batch_shapes, register_prepare_call, register_task
from diffjax.tasks.ood_task import OODTask, ood_prepare_call
from diffjax.tasks.text_ood_backbone import TextBackbone, backbone_name, backbone_source
from diffjax.tasks.text_ood_fields import TextOODConfig


def read_user_texts(c, inputs: str):
    """A user's ``.txt`` / ``.jsonl`` inputs -> (ids, texts) (``data.text_ood_sets.read_inputs``)."""
    return tdata.read_inputs(inputs, c.score_text_field)


class TextOODTask(OODTask):
    name = "text_ood"
    sharding_rules = bert.SHARDING_RULES  # the encoder's (its paths end the same in the denoiser)
    baseline_names, control_names = tb.BASELINES, tb.CONTROLS
    score_names = ts_lib.SCORE_NAMES
    threshold_set = "heldout"
    threshold_in_results = True
    read_user_inputs = staticmethod(read_user_texts)

    def __init__(self, c: TextOODConfig, arch_source: str | None = None, model_options=None,
                 shapes_only: bool = False):
        """``arch_source``: ``config.init_from``'s HF dir (``build_task``); None: ``task.architecture``.
        ``shapes_only`` (``plan``): no data set is read; the classifier baselines' head (with a label field)
        is sized for 2 classes, a stand-in for the ID labels' count (D x 2 params)."""
        from diffjax.data.text import load_tokenizer

        self.c, self.shapes_only = c, bool(shapes_only)
        self.path, pretrained = backbone_source(arch_source, c.architecture)
        self.tok = load_tokenizer(self.path)
        self.schedule = gaussian_schedule("linear", int(c.num_diffusion_steps))
        self.label_names = self._label_names()
        self.backbone = TextBackbone(self.path, num_layers=int(c.num_layers), dropout=float(c.dropout),
                                     num_labels=len(self.label_names), seed=int(c.data.seed), pretrained=pretrained,
                                     options=model_options)
        self.encoder, self.cls_model = self.backbone.encoder, self.backbone.classifier
        self.num_layers = self.backbone.num_layers
        self.model = tdn.TextDenoiser(self.encoder.config, time_mult=int(c.time_mult), dtype=self.encoder.dtype,
                                      param_dtype=self.encoder.param_dtype)
        self.baselines = tb.FeatureBaselines(self.encoder, self.cls_model, self.model,
                                             batch_size=int(c.feature_batch), knn_k=int(c.knn_k))
        self._fns, self._grid = {}, None
        self._sweep_memo: dict = {}  # the last params' sweep grids (evaluate's by_t and sweep share them)

    # -- data and params ----------------------------------------------------------------------
    def _label_names(self) -> list:
        """The ID classes (sorted label values of the ID train split); [] when there are no labels."""
        if not self.c.data.label_field:
            return []
        if self.shapes_only:
            return ["<class 0>", "<class 1>"]
        self.sets()
        return list(self._train_labels)

    def build_sets(self) -> dict:
        """{"heldout", "test", "train", "ood/<name>": PackedSet} (``data.text_ood_sets.all_sets``)."""
        sets, self._train_labels = tdata.all_sets(self.c.data, self.tok)
        return sets

    def init_params(self, rng):
        """Fresh params (pure: the trainer jits it onto the shardings); a pretrained backbone's weights come
        through ``config.init_from`` (``pretrained_readers``, per shard)."""
        x = jnp.zeros((1, 4, self.encoder.config.hidden_size), jnp.float32)
        fresh = self.model.init(rng, x, jnp.ones((1,), jnp.int32), jnp.ones((1, 4), bool))["params"]
        tree = self.backbone.init_tree()
        return {**tree, "denoiser": {**fresh, **tree["denoiser"]}}

    def pretrained_params(self, path: str) -> dict:
        """``config.init_from`` read whole (an HF dir without safetensors weights): the backbone's weights."""
        return self.backbone.pretrained_tree(path)

    def pretrained_readers(self, path: str):
        """``config.init_from`` per shard: the backbone's weights as per-slice readers (None: read whole)."""
        return self.backbone.leaf_readers(path)

    def untrained_params(self) -> dict:
        """The untrained control's params: the denoiser at init (seed ``data.seed``) on the backbone's weights."""
        fresh = self.init_params(jax.random.PRNGKey(int(self.c.data.seed)))
        return {**fresh, "denoiser": {**fresh["denoiser"], "encoder": self.backbone.params("encoder")}}

    # -- training -----------------------------------------------------------------------------
    def loss_fn(self, params, batch, rng):
        c = self.c
        d_rng, c_rng = jax.random.split(rng)
        loss, m = ts_lib.diffusion_loss(self.model, params["denoiser"], batch["tokens"], batch["mask"], d_rng,
                                        schedule=self.schedule, ld_weight=float(c.ld_weight),
                                        lc_weight=float(c.lc_weight), x0_std=float(c.x0_std),
                                        lc_learnt_scale=bool(c.lc_learnt_scale), prediction=c.prediction,
                                        dropout=float(c.dropout) > 0)
        if self.cls_model is not None:  # the classifier baselines' CE, while batch["cls_on"] (classifier_steps)
            def train_classifier(p):
                return tb.classifier_loss(self.cls_model, p, batch, c_rng, dropout=float(c.dropout) > 0)

            def frozen(p):  # no forward, no gradient: a cond runs one branch (forward and backward)
                return jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)

            ce, acc = jax.lax.cond(jnp.any(batch["cls_on"]), train_classifier, frozen, params["classifier"])
            loss = loss + ce
            m = {**m, "loss": loss, "cls_ce": ce, "cls_acc": acc}
        return loss, m

    def train_batches(self, start_step, *, global_batch_size, process_index=0, process_count=1):
        from diffjax.data.text import TextBatcher

        train = self.sets()["train"]
        batcher = TextBatcher(train.packer, seed=int(self.c.data.seed))
        batches = batcher.batches(start_step, global_batch_size=global_batch_size, process_index=process_index,
                                  process_count=process_count)
        for step, b in enumerate(batches, start=int(start_step)):
            yield self._train_fields(b, train, step)

    def _train_fields(self, b: dict, train, step: int) -> dict:
        """A ``TextBatcher`` batch of the ID train set at ``step`` -> the fields ``loss_fn`` reads; ``cls_on`` [B]:
        whether the classifier baselines train at this step (``classifier_steps``; 0 = always)."""
        out = {"tokens": b["tokens"], "mask": b["valid"]}
        if self.cls_model is not None:
            out["labels"] = train.labels[b["example_index"]]
            n = int(self.c.classifier_steps)
            out["cls_on"] = np.full(b["tokens"].shape[:1], n == 0 or step < n)
        return out

    def abstract_batch(self, global_batch_size):
        from diffjax.data.text import padding_batch
        from diffjax.data.text.packing import PackingFormat

        b = padding_batch(PackingFormat.for_tokenizer(self.tok, "bert"), max(self.c.data.buckets), global_batch_size)
        out = {"tokens": b["tokens"], "mask": b["valid"]}  # ``_train_fields`` of a batch, without the data
        if self.cls_model is not None:
            out["labels"] = np.zeros(b["tokens"].shape[:1], np.int32)
            out["cls_on"] = np.ones(b["tokens"].shape[:1], bool)
        return batch_shapes(out)

    # -- scoring (the OODTask hooks) ----------------------------------------------------------
    def score_set(self, params, key, s, ts, *, num_seeds, seed, stage, context, snapshots=None,
                  max_examples=None, names=None):
        """{"ld", "lc", "ld_lc" (+ "cos_x0", "rounding_acc" for held-out ID in the sweep): [n_t, n_s, N]}."""
        diagnostics = stage == "sweep" and key == "heldout"
        if ("sweep", diagnostics) not in self._fns:
            c = self.c
            score_fn = ts_lib.make_score_fn(self.model, self.schedule, x0_std=float(c.x0_std),
                                            lc_learnt_scale=bool(c.lc_learnt_scale), prediction=c.prediction,
                                            row_batch=int(c.lc_row_batch) or None, diagnostics=diagnostics)
            self._fns[("sweep", diagnostics)] = sweep_lib.make_score_sweep(score_fn, t_batch_size=1)
        memo_key = None
        if stage == "sweep":  # by_t (evaluate) and the sweep score held-out ID and the OOD sets on the same grid
            memo_key = (deploy.params_fingerprint(params["denoiser"]), key, tuple(int(t) for t in ts),
                        int(num_seeds), int(seed), max_examples)
            if memo_key in self._sweep_memo:
                return self._sweep_memo[memo_key]
            self._sweep_memo = {k: v for k, v in self._sweep_memo.items() if k[0] == memo_key[0]}
        keys = sweep_lib.seed_keys(int(seed), int(num_seeds))
        inputs, ids, grid = s.inputs(max_examples), s.ids[:max_examples], {}
        groups = (tdata.length_groups(inputs["mask"], min_rows=int(self.c.score_chunk))
                  or [(inputs["mask"].shape[1], np.arange(len(ids)))])
        for width, rows in groups:  # short rows at a shorter width (scores are padding-independent)
            part = sweep_lib.sweep_chunked(self._fns[("sweep", diagnostics)], params["denoiser"],
                                           {k: v[rows, :width] for k, v in inputs.items()}, ts, keys,
                                           chunk=int(self.c.score_chunk), context=context, ids=ids[rows])
            for k, v in part.items():
                grid.setdefault(k, np.zeros(v.shape[:-1] + (len(ids),), v.dtype))[..., rows] = v
        if memo_key is not None:
            self._sweep_memo[memo_key] = grid
        return grid

    def user_set(self, read, inputs):
        ids, texts = read
        return ids, tdata.pack_texts(inputs, texts, self.tok, self.c.data.buckets)

    def sweep_timesteps(self) -> list[int]:
        """``sweep_ts``, or ``sweep_num_ts`` steps evenly spaced in log SNR from t = 1 up to the first
        t whose model-free rounding accuracy of x_t on held-out ID falls below ``sweep_min_rounding_acc``."""
        c = self.c
        if tuple(c.sweep_ts):
            return sorted(int(t) for t in c.sweep_ts)
        if self._grid is None:
            from diffjax.diffusion.schedules import log_snr_timesteps

            full = log_snr_timesteps(self.schedule, 2 * int(c.sweep_num_ts))
            below = [t for t, a in zip(full, self.rounding_curve(full)) if a < float(c.sweep_min_rounding_acc)]
            t_max = below[0] if below else full[-1]
            self._grid = log_snr_timesteps(self.schedule, int(c.sweep_num_ts), 1, t_max)
            log(f"text_ood: timestep grid {self._grid} (log-SNR spaced; rounding accuracy of x_t on held-out ID "
                f"falls below {float(c.sweep_min_rounding_acc):g} at t={t_max})")
        return self._grid

    def rounding_curve(self, ts) -> list[float]:
        """``ood.text_scores.rounding_curve`` on held-out ID (pretrained E, ``sweep_max_examples`` sentences)."""
        c, s = self.c, self.sets()["heldout"]
        n = int(c.sweep_max_examples) or None
        emb = self.backbone.word_embeddings()
        return ts_lib.rounding_curve(emb, s.tokens[:n], s.mask[:n], s.ids[:n], ts, self.schedule,
                                     x0_std=float(c.x0_std), seed=int(c.score_seed),
                                     row_batch=int(c.lc_row_batch) or None)

    def operating_point(self, params, context, snapshots) -> dict:
        c = self.c
        ts, n, sets = self.sweep_timesteps(), int(c.sweep_max_examples) or None, self.sets()
        grids = {k: self.score_set(params, k, sets[k], ts, num_seeds=int(c.sweep_num_seeds) or int(c.num_seeds),
                                   seed=int(c.score_seed), stage="sweep", context=context, max_examples=n)
                 for k in ["heldout"] + [f"ood/{o}" for o in self.ood_names]}  # by_t: the sweep's sample
        by_t = by_t_rows(ts, grids, c.deploy_score)
        score_t, rule = pick_score_t(c, ts, by_t)
        log(f"text_ood: score_t = {score_t} ({rule})")
        return {"score_t": score_t, "score_t_rule": rule, "by_t": by_t}

    def extra_scores(self, params, score_t, keys, context, snapshots) -> dict:
        c, sets, out = self.c, self.sets(), {k: {} for k in keys}
        if c.controls:
            untrained = self.untrained_params()
            emb = np.asarray(self.backbone.word_embeddings())

            def untrained_grid(k, s):  # [1, n_s, N]: the deploy score of the denoiser at init
                return self.score_set(untrained, k, s, [score_t], num_seeds=int(c.num_seeds), seed=int(c.score_seed),
                                      stage="evaluate", context=context)[c.deploy_score]

            for k, v in tb.control_scores(emb, sets, keys, untrained_grid).items():
                out[k].update(v)
        if c.baselines:
            pretrained = self.backbone.params("encoder")
            for k, v in self.baselines.scores(params, pretrained, sets, list(keys), context).items():
                out[k].update({n: s for n, s in v.items() if n in c.baselines or n.split("_")[0] in c.baselines})
        return out

    def result_entries(self, params, point, table, snapshots) -> dict:
        c, emb = self.c, tdn.embedding_matrix(params["denoiser"])
        return {"score_t_rule": point["score_t_rule"], "backbone": backbone_name(self.path), "x0_std": float(c.x0_std),
                "embedding_scale": float(tdn.embedding_scale(emb, float(c.x0_std))),
                "rounding_logit_scale": float(tdn.rounding_logit_scale(params["denoiser"], bool(c.lc_learnt_scale))),
                "deploy_score": c.deploy_score, "by_t": point["by_t"],
                "controls": {o: {n: table["metrics"][o][n]["auroc"] for n in tb.CONTROLS if n in table["average"]}
                             for o in self.ood_names} if c.controls else {}}

    def heldout_label(self) -> str:
        d = self.c.data  # no held-out split: n_heldout examples carved from the shuffled train split
        return f"{d.id} {d.id_heldout_split or f'(held out of {d.id_train_split})'}"

    def table_header(self, results) -> list[str]:
        c, by_t = self.c, results["by_t"]
        header = [f"Text OOD (paper 000) ID {c.data.id}: diffusion scores at t={results['score_t']} "
                  f"({results['score_t_rule']}; one x0 prediction, mean of {c.num_seeds} fixed noise draws), "
                  f"{len(self.sets()['test'])} ID test sentences; baselines on the same backbone "
                  f"({os.path.basename(self.path.rstrip('/'))}, {self.num_layers} layers).",
                  "Controls: token_norm = mean ||E[w]||^2, unigram = mean -log p(w) of the ID train unigrams "
                  "(both model-free), untrained = the denoiser's score at init.",
                  "by t (held-out ID cos(x0_hat, x0), rounding accuracy of x_t; mean " + c.deploy_score +
                  " ID / " + " / ".join(self.ood_names) + "):"]
        return header + [f"  t={r['t']:<5} cos {r['cos_x0']:.3f}  round {r['rounding_acc']:.3f}  loss "
                         f"{r['id_loss']:.4g} / " + " / ".join(f"{v:.4g}" for v in r["ood_loss"].values())
                         for r in by_t]

    def sweep_entries(self, ts, grids) -> dict:
        return {"by_t": by_t_rows(ts, grids, self.c.deploy_score)}

    def sweep_score_t(self, ts, res) -> int:
        """The deploy t: fixed, or the same held-out-ID rule as evaluate (the same grid and by_t sample)."""
        return pick_score_t(self.c, ts, res["by_t"])[0]

    def sweep_figure(self, ts, res, num_seeds):
        curves = report.sweep_curves(res)
        for panel in curves.values():  # what survives at t (model-free) and what the denoiser recovers
            panel["rounding acc. of x_t (ID)"] = [r["rounding_acc"] for r in res["by_t"]]
            panel["cos(x0_hat, x0) (ID)"] = [r["cos_x0"] for r in res["by_t"]]
        return curves, (f"Text OOD (paper 000) AUROC vs t (mean of {num_seeds} noise draws), "
                        "with held-out ID rounding accuracy and cos(x0_hat, x0)"), min(ts) >= 1


register_prepare_call("text_ood")(ood_prepare_call(read_user_texts))


@register_task("text_ood", config=TextOODConfig)
def from_config(cfg: TextOODConfig, arch_source: str | None = None, model_options=None,
                shapes_only: bool = False) -> TextOODTask:
    return TextOODTask(cfg, arch_source, model_options, shapes_only)
