"""llama.cpp GGUF files (llama / mistral / qwen2 architectures) -> HF-named tensors + config -> ``Llama``.

``read_gguf(file)`` dequantises every tensor with numpy (``gguf.GGUFReader`` + ``gguf.quants.dequantize``;
F32/F16/BF16/Q4_0/Q4_1/Q8_0/K-quants ...), renames them to transformers' ``LlamaForCausalLM`` keys and
builds a config.json-style dict from the GGUF metadata, so the same family module
(``diffjax.checkpoints.hf_llama``) and the same strict check as ``load_hf_checkpoint`` apply.

llama.cpp's converter permutes the rows of ``attn_q`` / ``attn_k`` for the "llama" architecture (its RoPE
rotates adjacent pairs (2i, 2i+1); HF's ``rotate_half`` pairs i with i + hd/2): within each head the
rows [i0, j0, i1, j1, ...] are stored interleaved. ``unpermute_qk`` undoes it (Qwen2 GGUFs are not
permuted). Tied models have no ``output.weight``; ``tie_word_embeddings`` is set from its absence.

GGUF name                     HF key
token_embd.weight             model.embed_tokens.weight
output_norm.weight            model.norm.weight
output.weight                 lm_head.weight
blk.N.attn_norm.weight        model.layers.N.input_layernorm.weight
blk.N.ffn_norm.weight         model.layers.N.post_attention_layernorm.weight
blk.N.attn_{q,k,v}.{weight,bias}  model.layers.N.self_attn.{q,k,v}_proj.{weight,bias}
blk.N.attn_output.weight      model.layers.N.self_attn.o_proj.weight
blk.N.ffn_{gate,up,down}.weight   model.layers.N.mlp.{gate,up,down}_proj.weight
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.checkpoints import hf as hf_lib
from diffjax.checkpoints import hf_llama

ARCHITECTURES = ("llama", "mistral", "qwen2")
_PERMUTED = ("llama", "mistral")

_NAMES = (
    (r"token_embd\.weight", "model.embed_tokens.weight"),
    (r"output_norm\.weight", "model.norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", r"model.layers.\1.input_layernorm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"blk\.(\d+)\.attn_(q|k|v)\.(weight|bias)", r"model.layers.\1.self_attn.\2_proj.\3"),
    (r"blk\.(\d+)\.attn_output\.(weight|bias)", r"model.layers.\1.self_attn.o_proj.\2"),
    (r"blk\.(\d+)\.ffn_(gate|up|down)\.(weight|bias)", r"model.layers.\1.mlp.\2_proj.\3"),
)


def _import_gguf():
    try:
        import gguf  # noqa: PLC0415
    except ImportError as e:
        raise ImportError("Reading GGUF files needs the `gguf` package (pip install gguf; it is numpy-only).") from e
    return gguf


def hf_name(gguf_name: str) -> str | None:
    """The transformers key for a GGUF tensor name (None if it has none)."""
    for pat, rep in _NAMES:
        if re.fullmatch(pat, gguf_name):
            return re.sub(pat, rep, gguf_name)
    return None


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undoes llama.cpp's Q/K row permutation. w: [n_heads * hd, ...] -> same shape, HF row order.

    llama.cpp stores, per head, rows ``reshape(2, hd/2).swapaxes`` (interleaved halves); we reshape to
    [heads, hd/2, 2, ...] and swap back to [heads, 2, hd/2, ...].
    """
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _meta(reader) -> dict:
    out = {}
    for k, f in reader.fields.items():
        if k.startswith("tokenizer.ggml.") and k.split(".")[-1] in ("tokens", "token_type", "merges", "scores"):
            out[k] = len(f.data)  # only the size matters here
            continue
        try:
            out[k] = f.contents()
        except Exception:  # noqa: BLE001  (exotic field types: not needed for the config)
            pass
    return out


def gguf_config(meta: dict, tensor_names) -> dict:
    """A config.json-style dict (model_type, sizes, rope, token ids) from GGUF metadata."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"GGUF architecture {arch!r} is not supported; diffjax reads {ARCHITECTURES}.")
    a = lambda key, default=None: meta.get(f"{arch}.{key}", default)  # noqa: E731
    heads = int(a("attention.head_count"))
    hidden = int(a("embedding_length"))
    cfg = {
        "model_type": "mistral" if arch == "mistral" else arch,
        "vocab_size": int(a("vocab_size", meta.get("tokenizer.ggml.tokens", 0))),
        "hidden_size": hidden,
        "intermediate_size": int(a("feed_forward_length")),
        "num_hidden_layers": int(a("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(a("attention.head_count_kv", heads)),
        "head_dim": int(a("attention.key_length", a("rope.dimension_count", hidden // heads))),
        "max_position_embeddings": int(a("context_length", 2048)),
        "rms_norm_eps": float(a("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(a("rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "hidden_act": "silu",
    }
    if arch == "mistral":
        cfg["sliding_window"] = a("attention.sliding_window")
    rope_dims = a("rope.dimension_count")
    if rope_dims is not None and int(rope_dims) != cfg["head_dim"]:
        raise ValueError(f"GGUF rotates {rope_dims} of {cfg['head_dim']} head dims (partial RoPE); diffjax's Llama "
                         "rotates the whole head.")
    scaling = a("rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise ValueError(f"GGUF rope scaling {scaling!r} is not supported (only 'linear').")
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(a("rope.scaling.factor"))}
    if "rope_freqs.weight" in tensor_names:
        raise ValueError("This GGUF has rope_freqs.weight (Llama 3.1-style frequency factors), which the GGUF reader "
                         "does not map yet; convert the original HF checkpoint instead.")
    return cfg


def read_gguf(file: str) -> tuple[dict[str, np.ndarray], dict]:
    """Dequantised tensors with transformers' names (float32, PyTorch [out, in] layout) and a config dict.

    Unknown GGUF tensors keep their GGUF name, so the strict check reports them.
    """
    gguf = _import_gguf()
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no GGUF file at {file!r}.")
    reader = gguf.GGUFReader(file)
    meta = _meta(reader)
    names = [t.name for t in reader.tensors]
    cfg = gguf_config(meta, names)
    permute = meta["general.architecture"] in _PERMUTED
    tensors = {}
    for t in reader.tensors:
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape(tuple(int(s) for s in reversed(t.shape)))  # GGUF lists dims innermost first
        key = hf_name(t.name) or t.name
        if permute and re.fullmatch(r"blk\.\d+\.attn_q\.(weight|bias)", t.name):
            w = unpermute_qk(w, cfg["num_attention_heads"])
        elif permute and re.fullmatch(r"blk\.\d+\.attn_k\.(weight|bias)", t.name):
            w = unpermute_qk(w, cfg["num_key_value_heads"])
        tensors[key] = w
    return tensors, cfg


def load_gguf_checkpoint(file: str, *, dtype=jnp.float32, **overrides):
    """A GGUF file -> ``(Llama module, params)``, strictly (one error listing missing / unexpected / mis-shaped
    keys). ``overrides`` are ``LlamaConfig`` fields (e.g. ``attention="prefix"``)."""
    tensors, cfg = read_gguf(file)
    model = hf_llama.model_from_hf_config(cfg, dtype, **overrides)
    tensors = hf_llama.canonicalize_keys(tensors, model)
    expected = hf_lib.expected_hf_shapes(hf_llama, model)
    hf_lib.check_tensors(tensors, expected, ignored_patterns=hf_llama.IGNORED_KEYS, model_type=cfg["model_type"],
                         source=f"{file} (gguf)")
    params = hf_llama.hf_to_params({k: v for k, v in tensors.items() if k in expected}, model)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)
    return model, params


def load_gguf_tokenizer(file: str, **kwargs):
    """transformers' tokenizer rebuilt from the GGUF's vocabulary, merges and chat template (needs ``gguf``)."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    return AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(file)), gguf_file=os.path.basename(file),
                                         **kwargs)
