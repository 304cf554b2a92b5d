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

The file is never trusted: ``gguf_layout`` walks the whole header with bounds checks (magic, version,
counts, every string and array length against the bytes left, value / tensor types, at most 4 dims,
alignment) and checks every tensor's extent (block-aligned rows, aligned offset, inside the file, no two
overlapping) *before* ``gguf.GGUFReader`` sees it -- that reader loops on a huge array count and slices
past the end silently. Any problem, and missing or mistyped metadata, is one ``CheckpointFormatError``
naming the file. Quantised tensors (Q4/Q8/K-quants ...) are a supported format: they are dequantised to
float32, never refused as "integer weights".
"""

from __future__ import annotations

import math
import mmap
import os
import re
import struct

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.checkpoints import hf as hf_lib
from diffjax.checkpoints import hf_llama
from diffjax.checkpoints.errors import CheckpointFormatError

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


_MAX_DIMS = 4  # GGML_MAX_DIMS
# GGUF value type -> (struct code, size); 8 = string, 9 = array
_SCALARS = {0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4), 6: ("f", 4), 7: ("?", 1),
            10: ("Q", 8), 11: ("q", 8), 12: ("d", 8)}


class _Bad(Exception):
    pass


class _Cursor:
    """Bounds-checked reads from a mapped file (every read says what it was reading when it ran out)."""

    def __init__(self, buf, endian: str):
        self.buf, self.pos, self.end, self.e = buf, 0, len(buf), endian

    def take(self, fmt: str, size: int, what: str):
        if self.pos + size > self.end:
            raise _Bad(f"truncated: the file ends inside {what} (offset {self.pos}, file size {self.end})")
        (v,) = struct.unpack_from(self.e + fmt, self.buf, self.pos)
        self.pos += size
        return v

    def string(self, what: str, decode: bool = True):
        n = self.take("Q", 8, f"the length of {what}")
        if n > self.end - self.pos:
            raise _Bad(f"{what} claims {n} bytes at offset {self.pos} but only {self.end - self.pos} remain")
        raw = self.buf[self.pos: self.pos + n]
        self.pos += n
        if not decode:
            return None
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad(f"{what} at offset {self.pos - n} is not UTF-8") from None

    def value(self, vtype: int, what: str, depth: int = 0):
        if vtype in _SCALARS:
            return self.take(*_SCALARS[vtype], what)
        if vtype == 8:
            return self.string(what)
        if vtype == 9:
            if depth >= 3:
                raise _Bad(f"{what} nests arrays more than 3 deep")
            itype = self.take("I", 4, f"the item type of {what}")
            n = self.take("Q", 8, f"the length of {what}")
            min_item = _SCALARS[itype][1] if itype in _SCALARS else 8 if itype == 8 else 12 if itype == 9 else None
            if min_item is None:
                raise _Bad(f"{what} has unknown item type {itype}")
            if n * min_item > self.end - self.pos:
                raise _Bad(f"{what} claims {n} items at offset {self.pos}; the file cannot hold them")
            if itype in _SCALARS:  # skip (values of long arrays are read by gguf.GGUFReader)
                self.pos += n * min_item
                return None
            for i in range(n):
                self.value(itype, f"item {i} of {what}", depth + 1) if itype == 9 else self.string(f"item {i} of {what}", decode=False)
            return None
        raise _Bad(f"{what} has unknown value type {vtype}")


def gguf_layout(file: str) -> dict[str, tuple[int, int, int, tuple[int, ...]]]:
    """Validates a GGUF file's header and tensor extents without trusting any count in it.

    Returns {tensor name: (ggml type, absolute data offset, n_bytes, dims innermost first)}. Raises ONE
    ``CheckpointFormatError`` naming the file and the first problem found.
    """
    gguf = _import_gguf()
    size = os.path.getsize(file)
    if size < 24:
        raise CheckpointFormatError(file, f"not a GGUF file: {size} bytes, shorter than the 24-byte GGUF header.")
    with open(file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            return _layout(buf, size, gguf)
        except _Bad as e:
            raise CheckpointFormatError(file, f"corrupt GGUF file: {e}.") from None


def _layout(buf, size, gguf):
    if bytes(buf[:4]) != b"GGUF":
        raise _Bad(f"wrong magic {bytes(buf[:4])!r} (a GGUF file starts with b'GGUF')")
    (version,) = struct.unpack_from("<I", buf, 4)
    endian = "<"
    if version & 0xFFFF == 0:  # written on a host of the other byte order
        endian, version = ">", struct.unpack_from(">I", buf, 4)[0]
    if version not in (2, 3):
        raise _Bad(f"GGUF version {version}; diffjax reads versions 2 and 3")
    c = _Cursor(buf, endian)
    c.pos = 8
    n_tensors = c.take("Q", 8, "the tensor count")
    n_kv = c.take("Q", 8, "the metadata count")
    if n_kv * 13 > size - c.pos or n_tensors * 24 > size - c.pos:
        raise _Bad(f"the header claims {n_kv} metadata entries and {n_tensors} tensors; a {size}-byte file "
                   "cannot hold them")
    alignment, keys = 32, set()
    for i in range(n_kv):
        key = c.string(f"the key of metadata entry {i}")
        if key in keys:
            raise _Bad(f"metadata key {key!r} appears twice")
        keys.add(key)
        vtype = c.take("I", 4, f"the type of {key!r}")
        v = c.value(vtype, f"metadata {key!r}")
        if key == "general.alignment":
            if vtype != 4 or v == 0 or v & (v - 1):
                raise _Bad(f"general.alignment must be a uint32 power of two; found {v!r} (type {vtype})")
            alignment = v
    infos, names = [], set()
    for i in range(n_tensors):
        name = c.string(f"the name of tensor {i}")
        if name in names:
            raise _Bad(f"tensor {name!r} appears twice")
        names.add(name)
        n_dims = c.take("I", 4, f"the rank of tensor {name!r}")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise _Bad(f"tensor {name!r} has {n_dims} dimensions (1 to {_MAX_DIMS} allowed)")
        dims = tuple(c.take("Q", 8, f"the dims of tensor {name!r}") for _ in range(n_dims))
        gtype = c.take("I", 4, f"the type of tensor {name!r}")
        offset = c.take("Q", 8, f"the data offset of tensor {name!r}")
        infos.append((name, dims, gtype, offset))
    data_start = c.pos + (-c.pos % alignment)
    out, spans = {}, []
    for name, dims, gtype, offset in infos:
        try:
            qtype = gguf.GGMLQuantizationType(gtype)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise _Bad(f"tensor {name!r} has unknown ggml type {gtype}") from None
        if dims[0] % block:
            raise _Bad(f"tensor {name!r}: its row of {dims[0]} is not a multiple of the {qtype.name} block size {block}")
        n_bytes = math.prod(dims) // block * type_size
        if offset % alignment:
            raise _Bad(f"tensor {name!r}: data offset {offset} is not a multiple of the alignment {alignment}")
        begin = data_start + offset
        if begin + n_bytes > size:
            raise _Bad(f"tensor {name!r} ({qtype.name} x {list(dims)}, {n_bytes} bytes at offset {begin}) runs past "
                       f"the end of the {size}-byte file (truncated?)")
        out[name] = (gtype, begin, n_bytes, dims)
        if n_bytes:
            spans.append((begin, begin + n_bytes, name))
    spans.sort()
    for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise _Bad(f"tensors {n0!r} and {n1!r} overlap in the file")
    return out


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


_META_KINDS = {  # GGUF metadata field (after "{arch}.") -> required?; every value read must be a number
    "attention.head_count": True, "embedding_length": True, "feed_forward_length": True, "block_count": True,
    "vocab_size": False, "attention.head_count_kv": False, "attention.key_length": False,
    "rope.dimension_count": False, "context_length": False, "attention.layer_norm_rms_epsilon": False,
    "rope.freq_base": False, "rope.scaling.factor": False, "attention.sliding_window": False,
}


def gguf_config(meta: dict, tensor_names, source: str = "GGUF metadata") -> dict:
    """A config.json-style dict (model_type, sizes, rope, token ids) from GGUF metadata.

    Missing or mistyped metadata is one ``CheckpointFormatError`` (file ``source``) naming every field.
    """
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointFormatError(source, f"GGUF architecture {arch!r:.60} is not supported; diffjax reads {ARCHITECTURES}.")
    problems = []
    for key, required in _META_KINDS.items():
        v = meta.get(f"{arch}.{key}")
        if v is None:
            if required:
                problems.append(f"required metadata {arch}.{key} is missing")
        elif isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
            problems.append(f"metadata {arch}.{key} must be a number; found {v!r:.60}")
        elif key != "rope.scaling.factor" and not key.startswith(("attention.layer_norm", "rope.freq")) and (
                v != int(v) or v < 0 or (required and v == 0)):
            problems.append(f"metadata {arch}.{key} must be a {'positive' if required else 'non-negative'} integer; found {v!r}")
    if problems:
        raise CheckpointFormatError(source, "malformed GGUF metadata: " + "; ".join(problems) + ".")
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
        raise CheckpointFormatError(source, f"GGUF rotates {rope_dims} of {cfg['head_dim']} head dims (partial RoPE); diffjax's Llama "
                         "rotates the whole head.")
    scaling = a("rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear" or a("rope.scaling.factor") is None:
            raise CheckpointFormatError(source, f"GGUF rope scaling {scaling!r:.40} is not supported (only 'linear' "
                                        "with rope.scaling.factor).")
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(a("rope.scaling.factor"))}
    if "rope_freqs.weight" in tensor_names:
        raise CheckpointFormatError(source, "This GGUF has rope_freqs.weight (Llama 3.1-style frequency factors), which the GGUF reader "
                         "does not map yet; convert the original HF checkpoint instead.")
    return cfg


class GGUFTensor:
    """One GGUF tensor as transformers names and lays it out (float32, PyTorch [out, in], Q/K rows in HF order),
    read lazily: ``tensor[index]`` dequantises only the rows ``index[0]`` selects (for a permuted Q/K, the
    whole heads those rows fall in), so a per-shard load (``checkpoints.hf_slices``) never dequantises a whole
    weight. ``np.asarray(tensor)`` reads all of it. ``shape`` / ``ndim`` / ``dtype`` as numpy's."""

    dtype = np.dtype(np.float32)

    def __init__(self, file: str, name: str, data: np.ndarray, qtype, shape: tuple[int, ...], heads: int | None):
        self.file, self.name, self.data, self.qtype, self.heads = file, name, data, qtype, heads
        self.shape = tuple(int(s) for s in shape)
        self.ndim = len(self.shape)

    def _rows(self, start: int, stop: int) -> tuple[int, np.ndarray]:
        """``(first, rows)``: rows ``first:last`` (axis 0) dequantised, in HF order, covering ``start:stop``
        (a vector is read whole; a permuted Q/K in whole heads, as its rows are permuted within each head)."""
        gguf = _import_gguf()
        if self.ndim > 1 and stop <= start:
            return start, np.zeros((0,) + self.shape[1:], np.float32)
        if self.ndim == 1:
            start, stop, data = 0, self.shape[0], self.data
        else:
            if self.heads:
                hd = self.shape[0] // self.heads
                start, stop = start // hd * hd, -(-stop // hd) * hd
            data = self.data.reshape(self.shape[0], -1)[start:stop]
        try:
            w = np.asarray(gguf.quants.dequantize(data, self.qtype), dtype=np.float32).reshape(
                (stop - start,) + self.shape[1:])
        except Exception as e:  # noqa: BLE001  (an unsupported quant type or damaged block data)
            raise CheckpointFormatError(self.file, f"tensor {self.name!r} ({self.qtype.name} x {list(self.shape)}) "
                                        f"cannot be dequantised ({type(e).__name__}: {str(e)[:120]}).") from None
        if self.heads:
            w = unpermute_qk(w, w.shape[0] // (self.shape[0] // self.heads))
        return start, w

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (self.ndim - len(index))
        if not isinstance(index[0], slice) or index[0].step not in (None, 1):  # ints / strides: the axis whole
            return self._rows(0, self.shape[0])[1][index]
        start, stop, _ = index[0].indices(self.shape[0])
        first, rows = self._rows(start, max(start, stop))
        return rows[start - first:max(start, stop) - first][(slice(None),) + index[1:]]

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def gguf_tensors(file: str) -> tuple[dict[str, GGUFTensor], dict]:
    """``({transformers key: GGUFTensor}, config dict)`` of a GGUF file, every header and metadata check done,
    no tensor data read yet (``GGUFTensor``). Unknown GGUF tensors keep their GGUF name, so the strict check
    reports them."""
    gguf = _import_gguf()
    file = os.fspath(file)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no GGUF file at {file!r}.")
    layout = gguf_layout(file)  # everything GGUFReader would trust, checked first
    try:
        reader = gguf.GGUFReader(file)
        meta = _meta(reader)
    except Exception as e:  # noqa: BLE001  (gguf raises many types on a damaged file; all mean "corrupt")
        raise CheckpointFormatError(file, f"corrupt GGUF file ({type(e).__name__}: {str(e)[:200]}).") from None
    names = [t.name for t in reader.tensors]
    if sorted(names) != sorted(layout):
        raise CheckpointFormatError(file, "corrupt GGUF file: gguf.GGUFReader found other tensors than the header lists.")
    cfg = gguf_config(meta, names, source=file)
    hf_lib.check_hf_config(cfg, hf_llama.CONFIG_FIELDS, file)
    permute = meta["general.architecture"] in _PERMUTED
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(s) for s in reversed(t.shape))  # GGUF lists dims innermost first
        heads = None
        if permute and re.fullmatch(r"blk\.\d+\.attn_q\.(weight|bias)", t.name):
            heads = cfg["num_attention_heads"]
        elif permute and re.fullmatch(r"blk\.\d+\.attn_k\.(weight|bias)", t.name):
            heads = cfg["num_key_value_heads"]
        if heads is not None and shape[0] % (2 * heads):
            raise CheckpointFormatError(file, f"tensor {t.name!r} has {shape[0]} rows, which {heads} heads of "
                                        "even size cannot split (metadata and tensor disagree).")
        tensors[hf_name(t.name) or t.name] = GGUFTensor(file, t.name, t.data, t.tensor_type, shape, heads)
    return tensors, cfg


def read_gguf(file: str) -> tuple[dict[str, np.ndarray], dict]:
    """Dequantised tensors with transformers' names (float32, PyTorch [out, in] layout) and a config dict
    (``gguf_tensors``, every tensor read whole)."""
    tensors, cfg = gguf_tensors(file)
    return {k: np.asarray(t) for k, t in tensors.items()}, cfg


def gguf_architecture(file: str, *, dtype=jnp.float32, **overrides):
    """The ``Llama`` module a GGUF file's metadata describes, no tensor data read (``load_gguf_checkpoint``'s
    model)."""
    return hf_llama.model_from_hf_config(gguf_tensors(file)[1], dtype, **overrides)


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
