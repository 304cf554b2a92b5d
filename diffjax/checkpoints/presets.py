"""Named architectures without weights: ``preset:NAME`` wherever an architecture is named.

A preset is the ``config.json`` dict of a published Hugging Face model (the values of its hub config),
read by the same family readers as a model dir (``checkpoints/hf_bert.py``, ``hf_llama.py``), plus its
tokenizer's special token ids. It serves a random init (``task.architecture="preset:xlm-roberta-xxl"``
with ``config.init_from=""``) and ``python -m diffjax plan``, which sizes a run before any weights or
hardware exist. It has no weights (``init_from=preset:NAME`` is an error) and no vocabulary: its stand-in
tokenizer (``PresetTokenizer``) knows the special ids only and refuses to encode text (set
``task.tokenizer`` to a real one to train on data).

XLM-R XL / XXL (paper 002's largest models) are pre-LayerNorm transformers (HF ``xlm-roberta-xl``); the
presets read them with the post-LN ``xlm-roberta`` reader: the same matmuls and parameter count up to one
final LayerNorm (2 x hidden), which is what a plan measures.
"""

from __future__ import annotations

import copy

PREFIX = "preset:"

_XLMR = dict(model_type="xlm-roberta", architectures=["XLMRobertaForMaskedLM"], hidden_act="gelu",
             hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, layer_norm_eps=1e-5,
             max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
             position_embedding_type="absolute")
_XLMR_SPECIAL = dict(pad=1, mask=250001, bos=0, eos=2, cls=0, sep=2)


def _xlmr(layers: int, hidden: int, heads: int, intermediate: int, vocab: int) -> dict:
    return dict(_XLMR, num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                intermediate_size=intermediate, vocab_size=vocab)


# name -> (config.json dict, special token ids of its tokenizer)
PRESETS: dict[str, tuple[dict, dict]] = {
    # facebook/xlm-roberta-xxl and -xl (paper 002): vocab padded to 250880 (the tokenizer has 250002 ids)
    "xlm-roberta-xxl": (_xlmr(48, 4096, 32, 16384, 250880), _XLMR_SPECIAL),
    "xlm-roberta-xl": (_xlmr(36, 2560, 32, 10240, 250880), _XLMR_SPECIAL),
    "xlm-roberta-large": (_xlmr(24, 1024, 16, 4096, 250002), _XLMR_SPECIAL),
    "xlm-roberta-base": (_xlmr(12, 768, 12, 3072, 250002), _XLMR_SPECIAL),
    "roberta-large": (dict(_xlmr(24, 1024, 16, 4096, 50265), model_type="roberta",
                           architectures=["RobertaForMaskedLM"]),
                      dict(pad=1, mask=50264, bos=0, eos=2, cls=0, sep=2)),
    "bert-base-uncased": (dict(model_type="bert", architectures=["BertForMaskedLM"], hidden_act="gelu",
                               hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, layer_norm_eps=1e-12,
                               max_position_embeddings=512, type_vocab_size=2, pad_token_id=0,
                               position_embedding_type="absolute", num_hidden_layers=12, hidden_size=768,
                               num_attention_heads=12, intermediate_size=3072, vocab_size=30522),
                          dict(pad=0, mask=103, bos=None, eos=None, cls=101, sep=102)),
    # AR2Diff (paper 001) decoders
    "qwen2.5-0.5b": (dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=151936,
                          hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                          num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                          rope_theta=1000000.0, tie_word_embeddings=True, hidden_act="silu",
                          bos_token_id=151643, eos_token_id=151643, use_sliding_window=False),
                     dict(pad=151643, mask=None, bos=None, eos=151643, cls=None, sep=None)),
    "smollm2-135m": (dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=49152,
                          hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                          num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
                          rope_theta=100000.0, tie_word_embeddings=True, hidden_act="silu", bos_token_id=1,
                          eos_token_id=2),
                     dict(pad=2, mask=None, bos=1, eos=2, cls=None, sep=None)),
}


def is_preset(spec) -> bool:
    """True for ``"preset:NAME"`` (any NAME; ``preset_config`` checks it)."""
    return isinstance(spec, str) and spec.strip().startswith(PREFIX)


def preset_name(spec: str) -> str:
    """``"preset:NAME"`` -> ``NAME``; ``ConfigError`` listing the presets when NAME is unknown."""
    from diffjax.errors import ConfigError

    name = spec.strip()[len(PREFIX):]
    if name not in PRESETS:
        raise ConfigError(f"architecture {spec!r} is not a known preset; known: "
                          + ", ".join(PREFIX + k for k in PRESETS))
    return name


def preset_config(spec: str) -> dict:
    """The ``config.json`` dict of preset ``spec`` (a copy)."""
    return copy.deepcopy(PRESETS[preset_name(spec)][0])


def preset_model(spec: str, **overrides):
    """The Flax module of preset ``spec`` (its family's ``model_from_hf_config``; no params)."""
    from diffjax.checkpoints.hf import family_module

    cfg = preset_config(spec)
    return family_module(cfg["model_type"]).model_from_hf_config(cfg, **overrides)


class PresetTokenizer:
    """A tokenizer stand-in of a preset: the special ids and the vocabulary size, no vocabulary.

    Enough for a task to build its model, packing format and loss (``python -m diffjax plan``); encoding
    or decoding text raises, naming the fix."""

    def __init__(self, spec: str):
        self.spec = spec
        name = preset_name(spec)
        config, special = PRESETS[name]
        self._size = int(config["vocab_size"])
        for k, v in special.items():
            setattr(self, f"{k}_token_id", v)

    def __len__(self) -> int:
        return self._size

    def _refuse(self, *args, **kwargs):
        from diffjax.errors import ConfigError

        raise ConfigError(f"{self.spec} is an architecture without a tokenizer: it cannot read text; set "
                          f"--config.task.tokenizer=HF_DIR (the model's tokenizer) to train or evaluate on data")

    __call__ = decode = get_vocab = _refuse
