"""``config.sharding`` ("replicated", "tp", "fsdp", "fsdp+tp"): the pure spec functions, train steps of
the real task models under each choice equal to a single-device replicated run (the trainer's jitted
step), params / Adam moments / EMA really split, and checkpoints restored onto another mesh and choice."""

import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from diffjax.checkpoints.orbax import Checkpointer
from diffjax.cli import _load_config_file
from diffjax.tasks.base import build_task
from diffjax.train import sharding as sh
from diffjax.train import trainer
from diffjax.train.validate import ConfigError, validate_config
from tests._config_util import set_fields, small_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _abstract(shapes: dict) -> dict:
    return {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in shapes.items()}


# ------------------------------------------------------------------------------------ spec functions

def test_specs_for_each_choice():
    mesh = sh.make_mesh((2, 2))
    rules = ((r"attn/query/kernel$", (None, "model")), (r"attn/query/bias$", ("model",)))
    params = {"attn": {"query": {"kernel": jax.ShapeDtypeStruct((256, 128), np.float32),
                                 "bias": jax.ShapeDtypeStruct((128,), np.float32)}},
              **_abstract({"emb": (129, 256), "odd": (129, 127), "small": (64, 64), "scalar": ()})}

    def specs(choice, **kw):
        tree = sh.specs_for_choice(params, choice, rules, mesh, **kw)
        return {sh.path_str(p): s for p, s in jax.tree_util.tree_leaves_with_path(
            tree, is_leaf=lambda x: isinstance(x, P))}

    assert set(specs("replicated").values()) == {P()}
    tp = specs("tp")
    assert tp["attn/query/kernel"] == P(None, "model") and tp["attn/query/bias"] == P("model")
    assert tp["emb"] == P() and tp["scalar"] == P()
    fsdp = specs("fsdp")
    assert fsdp["attn/query/kernel"] == P("data")  # the largest dim
    assert fsdp["emb"] == P(None, "data")  # 129 does not divide by 2: the next dim
    assert fsdp["odd"] == P() and fsdp["small"] == P() and fsdp["scalar"] == P()  # no dim divides / < 2**14
    assert fsdp["attn/query/bias"] == P()
    assert specs("fsdp", min_elements=1)["small"] == P("data")  # the first on a tie
    both = specs("fsdp+tp")
    assert both["attn/query/kernel"] == P("data", "model")  # TP first, "data" on what is left
    assert both["emb"] == P(None, "data")
    with pytest.raises(ValueError, match="expected one of replicated, tp, fsdp, fsdp"):
        sh.specs_for_choice(params, "zero3", rules, mesh)
    # A "data" axis of size 1: fsdp is replicated.
    assert set(jax.tree_util.tree_leaves(sh.specs_for_choice(params, "fsdp", (), sh.make_mesh((1, 4))),
                                         is_leaf=lambda x: isinstance(x, P))) == {P()}


def test_stacked_layers_take_one_layer_rules_and_are_never_the_fsdp_dim():
    """A scanned stack (``layers/``, leading layer axis L) uses the per-layer rule with None prepended."""
    mesh = sh.make_mesh((2, 2))
    rules = ((r"attention/query/kernel$", (None, "model")), (r"attention/query/bias$", ("model",)))
    stacked = {"encoder": {"layers": {"attention": {"query": {
        "kernel": jax.ShapeDtypeStruct((8, 64, 128), np.float32),
        "bias": jax.ShapeDtypeStruct((8, 128), np.float32)}}}}}
    q = lambda t: t["encoder"]["layers"]["attention"]["query"]  # noqa: E731
    tp = sh.specs_for_choice(stacked, "tp", rules, mesh)
    assert q(tp)["kernel"] == P(None, None, "model") and q(tp)["bias"] == P(None, "model")
    kernel = jax.ShapeDtypeStruct((64, 128), np.float32)
    unrolled = {"encoder": {"layer_0": {"attention": {"query": {"kernel": kernel}}}}}
    assert sh.specs_for_choice(unrolled, "tp", rules, mesh)["encoder"]["layer_0"]["attention"]["query"]["kernel"] == \
        P(None, "model")
    # fsdp: the layer axis (64) is the largest dim that divides, but it is never split
    tall = {"layers": {"w": jax.ShapeDtypeStruct((64, 32, 16), np.float32)}}
    assert sh.specs_for_choice(tall, "fsdp", (), mesh, min_elements=1)["layers"]["w"] == P(None, "data")
    assert sh.specs_for_choice({"w": tall["layers"]["w"]}, "fsdp", (), mesh, min_elements=1)["w"] == P("data")
    both = sh.specs_for_choice(stacked, "fsdp+tp", rules, mesh, min_elements=1)
    assert q(both)["kernel"] == P(None, "data", "model") and q(both)["bias"] == P(None, "model")


def test_sharding_field_is_validated_and_resumable():
    c = small_config(sharding="zero3")
    with pytest.raises(ConfigError, match=r"sharding='zero3' is invalid.*one of replicated, tp, fsdp, fsdp\+tp"):
        validate_config(c)
    from diffjax.train.workdir import config_differences, config_to_dict

    old = config_to_dict(small_config(mesh_shape=(4, 1)))
    old.pop("sharding")  # a config.json written before the field existed
    new = config_to_dict(small_config(sharding="fsdp+tp", mesh_shape=(2, 2)))
    assert config_differences(old, new) == []


# ------------------------------------------------------------------------------------ train-step parity

def _config(name: str, overrides: dict):
    c = _load_config_file(os.path.join(REPO, "configs", name))
    with c.unlocked():
        set_fields(c, {"optimizer.warmup_steps": 0, **overrides})
    return c


def _train(config, task, mesh_shape, sharding, steps):
    """``steps`` steps of the trainer's jitted step with ``sharding`` on ``mesh_shape`` ->
    (state, [loss per step], params before the first step as numpy)."""
    with config.unlocked():
        config.mesh_shape, config.sharding = mesh_shape, sharding
    setup = trainer.build(config, task=task)
    state = setup.init_state()
    p0 = jax.device_get(state.params)
    gbs = int(config.train.global_batch_size)
    batches = task.train_batches(0, global_batch_size=gbs)
    losses = []
    for _ in range(steps):
        state, metrics = setup.train_step(state, setup.context.global_batch(next(batches), gbs))
        losses.append(float(metrics["loss"]))
    return state, losses, p0


def _split(arr) -> bool:
    """True when this process's first shard of ``arr`` is smaller than the global array."""
    return arr.addressable_shards[0].data.shape != arr.shape


def _leaves(tree) -> dict:
    return {sh.path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


ALL_CHOICES = (((4, 1), "fsdp"), ((2, 2), "tp"), ((2, 2), "fsdp+tp"))
COMBINED = (((2, 2), "fsdp+tp"),)  # the other families: the combined layout only (CI time; BERT runs all three)


def _check_against_replicated(config, task, steps=2, *, big=2 ** 14, choices=ALL_CHOICES):
    """Each choice on its mesh trains to the single-device replicated run (loss per step, params,
    Adam moments) to 1e-5; under fsdp every leaf of >= ``big`` elements with a dim dividing by 4 is
    split (params, both Adam moments, EMA); under tp / fsdp+tp the TP table splits something."""
    ref, ref_losses, p0 = _train(config, task, (1, 1), "replicated", steps)
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(jax.tree_util.tree_leaves(p0), jax.tree_util.tree_leaves(ref.params)))
    assert moved > 1e-4  # the steps moved the params: the comparison is not vacuous
    ref_params, ref_opt = _leaves(ref.params), _leaves(ref.opt_state)
    for mesh_shape, choice in choices:
        state, losses, _ = _train(config, task, mesh_shape, choice, steps)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5, err_msg=f"{choice} {mesh_shape}")
        params, opt = _leaves(state.params), _leaves(state.opt_state)
        for k, v in params.items():
            np.testing.assert_allclose(np.asarray(v), np.asarray(ref_params[k]), rtol=1e-5, atol=1e-5,
                                       err_msg=f"{choice} {mesh_shape} {k}")
        for k, v in opt.items():
            np.testing.assert_allclose(np.asarray(v), np.asarray(ref_opt[k]), rtol=1e-5, atol=1e-5,
                                       err_msg=f"{choice} {mesh_shape} opt {k}")
        split = {k for k, v in params.items() if _split(v)}
        if choice == "fsdp":
            expected = {k for k, v in params.items() if v.size >= big and any(d % 4 == 0 for d in v.shape)}
            assert expected and split == expected, (sorted(expected), sorted(split))
            for k in expected:  # the Adam moments (mu, nu) and the EMA of each split param are split too
                moments = [o for path, o in opt.items() if path.endswith("/" + k) and o.shape == params[k].shape]
                assert len(moments) == 2 and all(_split(o) for o in moments), k
                if state.ema_params is not None:
                    assert _split(_leaves(state.ema_params)[k]), k
        else:
            assert split, f"{choice}: the TP table split nothing"


def test_masked_lm_bert_choices_equal_replicated():
    """BERT (MiniLM's architecture, 1 small layer, random init; its 30522-word embedding kept)."""
    import ml_collections

    small = ml_collections.ConfigDict(dict(num_layers=1, hidden_size=64, num_heads=4, intermediate_size=128))
    config = _config("rdm_minilm_demo.py:tiny", {"sharding_rules": (), "init_from": "",  # the task's own table
                                                 "task.architecture": "embedded:minilm", "task.model": small})
    task = build_task(config.task)
    assert task.sharding_rules and task.sharding_rules[0][0].startswith("(.*/)?embeddings")
    _check_against_replicated(config, task)


@pytest.fixture()
def small_fsdp_leaves(monkeypatch):
    """The tiny models' kernels are under 2**14 elements: let fsdp split leaves from 1024 on."""
    monkeypatch.setattr(sh, "FSDP_MIN_ELEMENTS", 1024)
    return 1024


def _ar2diff(tmp_path, **task_fields):
    config = _config("ar2diff_smollm2_demo.py:tiny", {"task.cache_dir": str(tmp_path), "task.eval_examples": 8,
                                                      **{f"task.{k}": v for k, v in task_fields.items()}})
    return config, build_task(config.task, init_from=config.init_from)


def test_ar2diff_llama_choices_equal_replicated(tmp_path, small_fsdp_leaves):
    config, task = _ar2diff(tmp_path)
    assert task.sharding_rules[0][0].startswith("self_attn/")  # the Llama table
    _check_against_replicated(config, task, big=small_fsdp_leaves, choices=COMBINED)


@pytest.mark.slow
def test_ar2diff_t5_choices_equal_replicated(tmp_path, small_fsdp_leaves):
    import ml_collections

    model = ml_collections.ConfigDict(dict(
        vocab_size=49152, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, dropout_rate=0.0,
        tie_word_embeddings=True, pad_token_id=2, eos_token_id=2, decoder_start_token_id=2))
    config, task = _ar2diff(tmp_path, arch="encoder_decoder", model=model, target_length=8)
    assert "cross_attention" in task.sharding_rules[0][0]  # the T5 table
    _check_against_replicated(config, task, big=small_fsdp_leaves, choices=COMBINED)


def test_dlsr_lfdn_choices_equal_replicated(small_fsdp_leaves):
    config = _config("dlsr_mnist_demo.py:tiny", {})
    task = build_task(config.task)
    rng = np.random.default_rng(0)
    task._raw["train"] = rng.normal(size=(64, sum(task.dims))).astype(np.float32)  # no encoder run needed
    assert config.ema_decay > 0 and task.sharding_rules  # EMA params mirror the params' shardings
    _check_against_replicated(config, task, big=small_fsdp_leaves, choices=(((4, 1), "fsdp"),))


# ------------------------------------------------------------------------------------ resharding restore

def test_fsdp_checkpoint_restores_onto_other_meshes_and_resumes(tmp_path):
    """Saved by the trainer on (4,1) "fsdp"; restored on (2,2) "fsdp+tp" and (1,1) with identical
    values and the new layout; training then resumes there and ends where an uninterrupted run does."""
    common = {"task.model.hidden": 128, "train.checkpoint_every": 2, "train.eval_at_end": False,
              "optimizer.warmup_steps": 0, "optimizer.schedule": "constant"}  # lr not tied to num_steps
    saved_cfg = small_config(mesh_shape=(4, 1), sharding="fsdp", **{**common, "train.num_steps": 2})
    wd = str(tmp_path / "run")
    saved = trainer.train(saved_cfg, wd)
    kernel = saved.params["hidden_1"]["kernel"]  # [128, 128]: split over "data" on (4,1)
    assert kernel.sharding.spec == P("data") and _split(kernel)
    saved_leaves = _leaves(jax.device_get(saved))

    for mesh_shape, choice in (((2, 2), "fsdp+tp"), ((1, 1), "tp")):
        setup = trainer.build(small_config(mesh_shape=mesh_shape, sharding=choice, **common))
        ckpt = Checkpointer(os.path.join(wd, "checkpoints"))
        try:
            restored = ckpt.restore(2, setup.abstract_state)
        finally:
            ckpt.close()
        for k, v in _leaves(restored).items():
            np.testing.assert_array_equal(np.asarray(v), np.asarray(saved_leaves[k]), err_msg=k)
            assert v.sharding.is_equivalent_to(_leaves(setup.state_shardings)[k], v.ndim), k
        k2 = restored.params["hidden_1"]["kernel"]
        assert len(k2.sharding.mesh.devices.flat) == mesh_shape[0] * mesh_shape[1]
        if choice == "fsdp+tp":  # mlp.SHARDING_RULES: hidden kernels (None, "model"), then "data" on dim 0
            assert k2.sharding.spec == P("data", "model")

    # resume the (4,1) fsdp workdir on (2,2) fsdp+tp, to step 4
    resumed = trainer.train(small_config(mesh_shape=(2, 2), sharding="fsdp+tp", **{**common, "train.num_steps": 4}), wd)
    straight = trainer.train(small_config(mesh_shape=(4, 1), sharding="fsdp", **{**common, "train.num_steps": 4}),
                             str(tmp_path / "straight"))
    assert int(resumed.step) == 4
    for a, b in zip(jax.tree_util.tree_leaves(resumed.params), jax.tree_util.tree_leaves(straight.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_fsdp_step_gathers_weights_not_activations():
    """Under fsdp the compiled step all-gathers the split weights; the activations stay split over
    "data" on the batch: no all-to-all and no all-gather of a batch-sized [64, 256] activation
    (without the constraint XLA followed the kernels' "data" split into the activations: 4 all-to-alls,
    one [64, 256] all-gather)."""
    import re

    config = small_config(mesh_shape=(4, 1), sharding="fsdp", **{"task.model.hidden": 256,
                                                                 "train.global_batch_size": 64})
    setup = trainer.build(config)
    state = setup.init_state()
    assert state.params["hidden_1"]["kernel"].sharding.spec == P("data")
    batch = setup.context.global_batch(next(setup.task.train_batches(0, global_batch_size=64)), 64)
    hlo = setup.train_step.lower(state, batch).compile().as_text()
    assert re.search(r"\ball-gather(-start)?\(", hlo)  # the weights
    assert not re.search(r"\ball-to-all(-start)?\(", hlo)
    assert not re.search(r"f32\[64,256\]\{[0-9,]+\} all-gather", hlo)


# ------------------------------------------------------------------------------------ init_from per shard

def _save_tiny_hf(kind: str, d: str) -> str:
    import torch
    import transformers

    torch.manual_seed(0)
    if kind == "bert":
        cfg = transformers.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=64)
        model = transformers.BertForMaskedLM(cfg)
    else:
        cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(d, safe_serialization=True)
    return d


def _save_tiny_gguf(d: str, qtype: str | None) -> str:
    """A tiny llama GGUF (Q / K rows permuted as llama.cpp's converter does; ``qtype`` e.g. "Q8_0")."""
    import gguf

    from tests.test_gguf import make_hf, write_gguf

    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "tiny.gguf")
    write_gguf(make_hf("llama", False), path, "llama", None if qtype is None else getattr(gguf.GGMLQuantizationType,
                                                                                          qtype))
    return path


@pytest.mark.parametrize("kind,scanned", [("bert", False), ("llama", False), ("bert", True), ("llama", True),
                                          ("gguf", False), ("gguf-q8", True)],
                         ids=["bert", "llama", "bert-scanned", "llama-scanned", "gguf", "gguf-q8-scanned"])
def test_init_from_hf_reads_each_shard_only(tmp_path, monkeypatch, kind, scanned):
    """An HF safetensors dir (transformers' save_pretrained) or a GGUF file (F32, or Q8_0: dequantised per
    slice) loads into "fsdp+tp" shards equal to the whole load (``load_hf_checkpoint`` /
    ``load_gguf_checkpoint``), and every slice read is the size of one shard, never a whole split param.
    A scanned run (``config.scan_layers``: ``.../layers/x`` of shape ``[L, ...]``) gets the stacked whole
    load, each layer's slice read from its unrolled tensor."""
    from diffjax.checkpoints import hf_slices
    from diffjax.checkpoints.gguf import load_gguf_checkpoint
    from diffjax.checkpoints.hf import load_hf_checkpoint
    from diffjax.models.scan import stack_layers, unrolled_paths
    from diffjax.train import init_from as init_from_lib

    if kind.startswith("gguf"):
        d = _save_tiny_gguf(str(tmp_path / kind), "Q8_0" if kind.endswith("q8") else None)
        model, unrolled = load_gguf_checkpoint(d)
        family = "llama"
    else:
        d = _save_tiny_hf(kind, str(tmp_path / kind))
        model, unrolled = load_hf_checkpoint(d)
        family = kind
    whole = stack_layers(unrolled, {"bert": "encoder/layer_", "llama": "layers_"}[family]) if scanned else unrolled
    mesh = sh.make_mesh((2, 2))
    rules = {"bert": "diffjax.models.bert", "llama": "diffjax.models.llama"}[family]
    shardings = sh.param_shardings(whole, __import__(rules, fromlist=["x"]).SHARDING_RULES, mesh, "fsdp+tp",
                                   min_elements=256)
    fresh = jax.device_put(jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), whole), shardings)
    asked = []  # (param path, requested slice shape)
    leaf_readers = hf_slices.leaf_readers

    def recording(path):
        def wrap(p, r):
            def read(index):
                out = r.read(index)
                asked.append((p, out.shape))
                return out
            return hf_slices.LeafReader(r.hf_key, r.shape, read)
        return {p: wrap(p, r) for p, r in leaf_readers(path).items()}

    monkeypatch.setattr(hf_slices, "leaf_readers", recording)

    # the default pretrained_params / pretrained_readers: the model's own tree
    params, report = init_from_lib.init_params_from(d, _params_only_task(whole), fresh, shardings)
    assert not report.fresh and report.loaded == sorted(_leaves(whole))
    got, want, sh_of = _leaves(params), _leaves(whole), _leaves(shardings)
    for k, v in want.items():
        assert got[k].sharding == sh_of[k], k
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(v), err_msg=k)
    shard_shape = {k: v.addressable_shards[0].data.shape for k, v in got.items()}
    assert sum(shard_shape[k] != v.shape for k, v in got.items()) >= 3  # embeddings, attention, MLP kernels
    assert not scanned or any("/layers/" in f"/{k}" for k in want)
    served = {k: k for k in want}  # the path a read was for -> the run's param (a scanned one: its layers' paths)
    for k, v in want.items():
        for paths in unrolled_paths(k, v.shape[0] if v.ndim else 0).values():
            served.update(dict.fromkeys(paths, k))
    assert {served[p] for p, _ in asked} == set(want)
    for p, part in asked:  # every read is one shard of its param (of a scanned one: one layer of a shard)
        k = served[p]
        assert part == (shard_shape[k] if p == k else shard_shape[k][1:]), (p, part)
    assert any(part != want[served[p]].shape[p != served[p]:] for p, part in asked)


def _record_orbax_restores(monkeypatch) -> list:
    """Makes the whole-tree host reads of ``init_from`` fail and records every orbax restore's output."""
    import orbax.checkpoint as ocp

    from diffjax.train import init_from as init_from_lib

    def whole_read(*a, **k):
        raise AssertionError("the whole-tree host read was used")

    monkeypatch.setattr(init_from_lib, "_restore_checkpoint_params", whole_read)
    monkeypatch.setattr(init_from_lib, "_restore_snapshot", whole_read)
    restored = []
    real_restore = ocp.Checkpointer.restore

    def recording(self, *a, **k):
        out = real_restore(self, *a, **k)
        restored.append(out)
        return out

    monkeypatch.setattr(ocp.Checkpointer, "restore", recording)
    return restored


def _params_only_task(params):
    """A ``Task`` whose ``init_params`` returns ``params`` (the rest unused)."""
    from diffjax.tasks.base import Task

    class ParamsOnly(Task):
        def init_params(self, rng):
            return params

        def loss_fn(self, params, batch, rng):
            raise NotImplementedError

        def train_batches(self, start_step, **kw):
            raise NotImplementedError

    return ParamsOnly()


@pytest.mark.parametrize("source", ["checkpoint", "snapshot"])
def test_init_from_workdir_restores_each_shard_where_it_lives(tmp_path, monkeypatch, source):
    """``init_from=WORKDIR`` (a checkpoint) or ``WORKDIR:STEP`` (a snapshot) restores into the run's "fsdp+tp"
    shards through orbax: only the params the run loads are read (no optimizer state, no unused param), each
    straight onto its sharding; never the whole-tree host read. Values equal the saved ones, a param the
    source lacks keeps its fresh init, the dtype is the run's."""
    from diffjax.checkpoints import orbax as ckpt_lib
    from diffjax.train import init_from as init_from_lib
    from diffjax.train.state import TrainState

    rng = np.random.default_rng(0)
    saved = {"encoder": {"embed": rng.normal(size=(64, 32)).astype(np.float32),
                         "dense": {"kernel": rng.normal(size=(32, 64)).astype(np.float32),
                                   "bias": rng.normal(size=(64,)).astype(np.float32)}},
             "old_head": {"kernel": rng.normal(size=(32, 3)).astype(np.float32)}}
    workdir = str(tmp_path / "src")
    if source == "checkpoint":
        state = TrainState(step=np.int32(7), params=saved, opt_state={"mu": saved}, rng=jax.random.PRNGKey(0),
                           ema_params=None)
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
        ckpt.save(7, state)
        ckpt.close()
        spec = workdir
    else:
        ckpt_lib.save_snapshot(workdir, 0, saved)
        spec = workdir + ":0"
    mesh = sh.make_mesh((2, 2))
    run = {"encoder": {"embed": np.zeros((64, 32), np.float32),
                       "dense": {"kernel": np.zeros((32, 64), np.float32), "bias": np.zeros((64,), np.float32)}},
           "new_head": {"kernel": np.full((32, 5), 0.5, np.float32)}}
    specs = {"encoder": {"embed": P("data", "model"), "dense": {"kernel": P("data", "model"), "bias": P("model")}},
             "new_head": {"kernel": P()}}
    shardings = jax.tree_util.tree_map(lambda s: jax.sharding.NamedSharding(mesh, s), specs)
    fresh = jax.device_put(run, shardings)
    fresh["encoder"]["dense"]["bias"] = fresh["encoder"]["dense"]["bias"].astype(np.float16)

    restored = _record_orbax_restores(monkeypatch)
    params, report = init_from_lib.init_params_from(spec, _params_only_task(run), fresh, shardings)
    assert report.loaded == ["encoder/dense/bias", "encoder/dense/kernel", "encoder/embed"]
    assert report.fresh == ["new_head/kernel"] and report.unused == ["old_head/kernel"]
    (tree,) = restored
    prefix = "params/" if source == "checkpoint" else ""
    assert sorted(_leaves(tree)) == [prefix + p for p in report.loaded]  # no opt_state, no old_head
    for p, leaf in _leaves(tree).items():  # restored on the run's sharding, not gathered first
        assert leaf.sharding == _leaves(shardings)[p[len(prefix):]], p
    got, want, sh_of = _leaves(params), _leaves(saved), _leaves(shardings)
    for p in report.loaded:
        assert got[p].sharding == sh_of[p], p
        np.testing.assert_allclose(np.asarray(got[p], np.float32), want[p], rtol=1e-3 if "bias" in p else 0)
    assert got["encoder/dense/bias"].dtype == np.float16
    assert got["encoder/embed"].addressable_shards[0].data.shape == (32, 16)
    np.testing.assert_array_equal(np.asarray(got["new_head/kernel"]), run["new_head"]["kernel"])


@pytest.mark.parametrize("direction", ["unrolled-to-scanned", "scanned-to-unrolled"])
def test_init_from_workdir_relays_out_layer_stacks_per_shard(tmp_path, monkeypatch, direction):
    """A workdir whose layer stack is laid out otherwise than the run's (``config.scan_layers``) is restored
    per shard too: each source param with the sharding that makes the relayout local (an unrolled layer: the
    scanned param's spec without the layer axis; a scanned stack: ``P(None, *spec)`` of the unrolled layer),
    then stacked / sliced on the devices into the run's shardings; never the whole-tree host read. A source
    layer past the run's count is not read and is listed unused. Values equal ``stack_layers`` /
    ``unstack_layers`` of the saved tree."""
    from diffjax.checkpoints import orbax as ckpt_lib
    from diffjax.models.scan import stack_layers
    from diffjax.train import init_from as init_from_lib

    rng = np.random.default_rng(0)
    layers = {f"layer_{i}": {"dense": {"kernel": rng.normal(size=(32, 64)).astype(np.float32),
                                       "bias": rng.normal(size=(64,)).astype(np.float32)}} for i in range(4)}
    unrolled = {"encoder": {**layers}, "embed": rng.normal(size=(64, 32)).astype(np.float32)}
    three = {"encoder": {k: v for k, v in layers.items() if k != "layer_3"}, "embed": unrolled["embed"]}
    scanned = stack_layers(three, "encoder/layer_")
    saved, want = (unrolled, scanned) if direction == "unrolled-to-scanned" else (scanned, three)
    workdir = str(tmp_path / "src")
    ckpt_lib.save_snapshot(workdir, 0, saved)
    mesh = sh.make_mesh((2, 2))
    if direction == "unrolled-to-scanned":
        specs = {"encoder": {"layers": {"dense": {"kernel": P(None, "data", "model"), "bias": P(None, "model")}}},
                 "embed": P("data", "model")}
    else:
        specs = {"encoder": {f"layer_{i}": {"dense": {"kernel": P("data", "model"), "bias": P("model")}}
                             for i in range(3)}, "embed": P("data", "model")}
    shardings = jax.tree_util.tree_map(lambda s: jax.sharding.NamedSharding(mesh, s), specs)
    fresh = jax.device_put(jax.tree_util.tree_map(np.zeros_like, want), shardings)

    restored = _record_orbax_restores(monkeypatch)
    params, report = init_from_lib.init_params_from(workdir + ":0", _params_only_task(want), fresh, shardings)
    assert report.loaded == sorted(_leaves(want)) and not report.fresh
    assert report.unused == (["encoder/layer_3/dense/bias", "encoder/layer_3/dense/kernel"]
                             if direction == "unrolled-to-scanned" else [])
    (tree,) = restored
    if direction == "unrolled-to-scanned":  # each layer restored split as one layer of the scanned param
        assert "layer_3" not in tree["encoder"]
        assert tree["encoder"]["layer_1"]["dense"]["kernel"].sharding.spec == P("data", "model")
        assert tree["encoder"]["layer_1"]["dense"]["kernel"].addressable_shards[0].data.shape == (16, 32)
    else:  # the stack restored split as each unrolled layer, the layer axis whole
        assert tree["encoder"]["layers"]["dense"]["kernel"].sharding.spec == P(None, "data", "model")
        assert tree["encoder"]["layers"]["dense"]["kernel"].addressable_shards[0].data.shape == (3, 16, 32)
    got, sh_of = _leaves(params), _leaves(shardings)
    for p, v in _leaves(want).items():
        assert got[p].sharding == sh_of[p], p
        np.testing.assert_array_equal(np.asarray(got[p]), v, err_msg=p)


# ------------------------------------------------------------------------------------ fsdp inside a scanned stack

@pytest.mark.parametrize("remat", ["full", "none"])
def test_scanned_stack_fsdp_gathers_one_layer_at_a_time(small_fsdp_leaves, remat):
    """A scanned BERT stack under fsdp / fsdp+tp: equal to the replicated run (loss, params, Adam moments to
    1e-5), and the compiled step all-gathers each layer's weights inside the loop (per-layer shapes), never
    a whole stacked ``[L, ...]`` kernel (``models.scan.gather_layer_params``); the weights' gradients are
    reduced in the loop too (no all-reduce of a stacked kernel)."""
    import re

    import ml_collections

    from diffjax.models.options import ModelOptions

    layers = 3
    small = ml_collections.ConfigDict(dict(num_layers=layers, hidden_size=64, num_heads=4, intermediate_size=128))
    config = _config("rdm_minilm_demo.py:tiny", {"sharding_rules": (), "init_from": "",
                                                 "task.architecture": "embedded:minilm", "task.model": small,
                                                 "scan_layers": True, "remat": remat})
    task = build_task(config.task, model_options=ModelOptions(scan_layers=True, remat=remat))
    _check_against_replicated(config, task, big=small_fsdp_leaves, choices=(((4, 1), "fsdp"), ((2, 2), "fsdp+tp")))
    with config.unlocked():
        config.mesh_shape, config.sharding = (4, 1), "fsdp"
    setup = trainer.build(config, task=task)
    state = setup.init_state()
    (query,) = [v for k, v in _leaves(state.params).items() if k.endswith("layers/attention/query/kernel")]
    assert query.shape == (layers, 64, 64) and query.sharding.spec == P(None, "data")
    gbs = int(config.train.global_batch_size)
    batch = setup.context.global_batch(next(task.train_batches(0, global_batch_size=gbs)), gbs)
    hlo = setup.train_step.lower(state, batch).compile().as_text()
    gathered = re.findall(r"= (f32\[[0-9,]*\])\S* all-gather(?:-start)?\(", hlo)
    assert "f32[1,64,64]" in gathered or "f32[64,64]" in gathered, gathered  # one layer's kernel
    stacked = f"f32[{layers},64,64]"
    assert stacked not in gathered, gathered
    reduced = [line for line in hlo.split("\n") if re.search(r" (all-reduce|reduce-scatter)(-start)?\(", line)]
    assert not any(stacked in line for line in reduced), "a stacked kernel's gradient reduced whole"
