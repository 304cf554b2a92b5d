"""Paper 000's baselines and controls: what the text OOD table sets the diffusion scores against.

Baselines, on the task's backbone (higher = more OOD):

* ``maha_*`` / ``knn_*``: Mahalanobis and kNN on mean-pooled features [N, D]
  (``models.text_denoiser.pooled_features``) of the pretrained encoder (``*_pretrained``) and of the
  finetuned one (``*_finetuned``: the classifier's encoder when the ID set has labels, else the
  denoiser's encoder on clean tokens with the timestep conditioning of t = 0), fitted on ID train;
* ``msp`` / ``energy``: -max softmax and -logsumexp of the classifier head finetuned on the ID labels
  (trained in the same run, in the same params: ``classifier_loss``).

Controls, no trained denoiser: ``token_norm`` (mean ||E[w]||^2 of the pretrained E), ``unigram``
(mean -log p(w) under an add-one unigram model of the ID train tokens) and ``untrained`` (the deploy
score of the denoiser at init), from ``control_scores``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.text_denoiser import TextDenoiser, pooled_features
from diffjax.ood import baselines, report
from diffjax.ood.text_scores import UnigramModel, token_norm_score

BASELINES = ("maha_pretrained", "knn_pretrained", "maha_finetuned", "knn_finetuned", "msp", "energy")
CONTROLS = ("token_norm", "unigram", "untrained")


def classifier_loss(cls_model, params, batch, rng, *, dropout: bool):
    """Cross-entropy and accuracy of the ID classifier over the labelled rows (label -1: ignored):
    tokens / mask [B, L], labels [B] -> (ce, acc) scalars."""
    logits = cls_model.apply({"params": params}, batch["tokens"], batch["mask"], deterministic=not dropout,
                             rngs={"dropout": rng} if dropout else None)["cls_logits"]
    labels = batch["labels"]
    ok = (labels >= 0).astype(jnp.float32)
    nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, jnp.maximum(labels, 0)[:, None], -1)[:, 0]
    ce = jnp.sum(nll * ok) / jnp.maximum(jnp.sum(ok), 1.0)
    acc = jnp.sum((jnp.argmax(logits, -1) == labels) * ok) / jnp.maximum(jnp.sum(ok), 1.0)
    return ce, acc


class FeatureBaselines:
    """Mahalanobis / kNN / MSP / energy of the sets (module docstring); jitted feature functions kept."""

    def __init__(self, encoder, cls_model, denoiser: TextDenoiser, *, batch_size: int, knn_k: int):
        self.encoder, self.cls_model, self.denoiser = encoder, cls_model, denoiser
        self.batch_size, self.knn_k = int(batch_size), int(knn_k)
        self._fns = {}

    def _feature_fn(self, kind: str):
        if kind not in self._fns:
            enc, cls, den = self.encoder, self.cls_model, self.denoiser

            def pre(p, b, _):
                return {"feat": pooled_features(enc, p, b["tokens"], b["mask"])}

            def fin_cls(p, b, _):
                out = cls.apply({"params": p}, b["tokens"], b["mask"])
                return {"feat": pooled_features(cls, p, b["tokens"], b["mask"]), "logits": out["cls_logits"]}

            def fin_den(p, b, _):  # the denoiser's encoder on clean tokens, timestep conditioning of t = 0
                t0 = jnp.zeros(b["tokens"].shape[:1], jnp.int32)
                cond = den.apply({"params": p}, t0, method=TextDenoiser.time_cond)
                return {"feat": pooled_features(enc, p["encoder"], b["tokens"], b["mask"], cond=cond)}

            fn = {"pretrained": pre, "finetuned": fin_cls if cls is not None else fin_den}[kind]
            self._fns[kind] = jax.jit(fn)
        return self._fns[kind]

    def features(self, kind: str, params, pretrained_encoder, s, context) -> dict:
        """Pooled features [N, D] (and classifier logits [N, C]) of set ``s`` by encoder ``kind``."""
        fn = self._feature_fn(kind)
        p = (pretrained_encoder if kind == "pretrained" else
             params["classifier"] if self.cls_model is not None else params["denoiser"])
        return context.map_batches(lambda b, i: fn(p, b, i), s.inputs(), batch_size=self.batch_size)

    def scores(self, params, pretrained_encoder, sets: dict, keys, context) -> dict:
        """{set key: {baseline: [N]}} for ``keys`` (fits on ``sets["train"]``)."""
        out = {k: {} for k in keys}
        for kind in ("pretrained", "finetuned"):
            feats = {k: self.features(kind, params, pretrained_encoder, sets[k], context) for k in ["train"] + keys}
            fit = baselines.fit_mahalanobis(feats["train"]["feat"])
            for k in keys:
                out[k][f"maha_{kind}"] = baselines.mahalanobis_scores(fit, feats[k]["feat"], context=context)
                out[k][f"knn_{kind}"] = baselines.knn_score(feats["train"]["feat"], feats[k]["feat"], k=self.knn_k,
                                                            context=context)
                if kind == "finetuned" and "logits" in feats[k]:
                    lg = np.asarray(feats[k]["logits"], np.float64)
                    lse = np.logaddexp.reduce(lg, axis=-1)
                    out[k]["msp"] = -np.exp(np.max(lg, -1) - lse)  # higher = more OOD
                    out[k]["energy"] = -lse  # energy = -logsumexp(logits); higher = more OOD
        return out


def control_scores(emb: np.ndarray, sets: dict, keys, untrained_grid) -> dict:
    """{set key: {"token_norm", "unigram", "untrained": [N]}} for ``keys`` (higher = more OOD).

    emb [V, D]: the pretrained word embeddings; ``untrained_grid(key, s) -> [1, n_s, N]``: the deploy
    score of the denoiser at init at the table's t."""
    train = sets["train"]
    unigram = UnigramModel(train.tokens, train.mask, emb.shape[0])
    out = {}
    for k in keys:
        s = sets[k]
        g = untrained_grid(k, s)
        out[k] = {"token_norm": token_norm_score(emb, s.tokens, s.mask), "unigram": unigram.score(s.tokens, s.mask),
                  "untrained": report.seed_mean(g)[0]}
    return out
