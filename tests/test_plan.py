"""``python -m diffjax plan`` (diffjax/train/plan.py), ``Task.abstract_batch`` and the ``preset:NAME`` architectures.

The plan's per-device bytes are checked against a real sharded state on the same (2, 2) mesh, its FLOPs
against 6 * params * tokens and a closed form, each task's abstract batch against a real training batch,
and the presets' parameter counts against transformers' models of the same config.json (meta device).
"""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import cli
from diffjax.checkpoints import presets
from diffjax.errors import ConfigError
from diffjax.models.options import ModelOptions
from diffjax.tasks.base import build_task
from diffjax.train import plan, trainer
from tests._config_util import REPO, set_fields

GAUSS = os.path.join(REPO, "configs", "gaussian2d.py") + ":small"


def _config(name: str, overrides: dict | None = None):
    c = cli._load_config_file(os.path.join(REPO, "configs", name))
    with c.unlocked():
        set_fields(c, overrides or {})
    return c


# A 1-layer MiniLM-shaped BERT from random init (no weights read), one 16-token bucket, no length head.
TINY_BERT = {"init_from": "", "task.architecture": "embedded:minilm", "task.model.num_layers": 1,
             "task.length_mode": "fixed", "task.length_max": 0, "task.buckets": (16,), "task.gen_length": 16}


@pytest.fixture(scope="module")
def bert_plan():
    config = _config("rdm_minilm_demo.py:tiny", TINY_BERT)
    return config, plan.plan_config(config, mesh=(2, 2), accelerator="tpu-v4", utilization=0.5)


def _device_bytes(tree, device) -> int:
    return sum(s.data.nbytes for x in jax.tree_util.tree_leaves(tree) for s in x.addressable_shards
               if s.device == device)


def test_plan_state_bytes_equal_a_real_sharded_state(bert_plan):
    config, report = bert_plan
    with config.unlocked():
        config.mesh_shape = (2, 2)
    state = trainer.build(config).init_state()
    printed = plan.format_report(report)
    b = report["per_device_bytes"]
    sharded = [x for x in jax.tree_util.tree_leaves(state.params) if not x.sharding.is_fully_replicated]
    assert sharded, "the BERT rules shard some params over 'model'"
    for d in jax.devices()[:4]:
        assert _device_bytes(state.params, d) == b["params"]
        assert _device_bytes(state.opt_state, d) == b["opt_state"]
    assert b["params"] < sum(x.nbytes for x in jax.tree_util.tree_leaves(state.params))
    assert f"({b['params']:,} bytes)" in printed.splitlines()[4]
    assert b["ema"] == 0  # ema_decay 0 in this config


def test_plan_flops_close_to_6_params_tokens(bert_plan):
    config, report = bert_plan
    f = report["flops"]
    assert report["tokens_per_step"] == 4 * 16
    assert f["xla_per_device"] > 0 and f["loops"] == 0
    six_pt = 6.0 * report["params"] * report["tokens_per_step"]
    assert f["six_params_tokens"] == six_pt
    assert 0.8 < f["xla_per_device"] * 4 / six_pt < 1.5
    assert 0.8 < f["jaxpr_matmul_total"] / six_pt < 1.5
    est = report["estimate"]
    assert est["peak_flops"] == 275e12  # tpu-v4; the config's precision is fp32 (= bf16 passes on TPU)
    assert est["step_seconds"] == pytest.approx(f["xla_per_device"] / (275e12 * 0.5))
    assert est["fits"] is True
    x = report["xla_cpu_memory_per_device"]
    assert x["peak"] == x["argument"] + x["output"] - x["alias"] + x["temp"] > 0
    line = [s for s in plan.format_report(report).splitlines() if s.startswith("fits:")]
    assert line == [f"fits: yes ({x['peak'] / 2 ** 30:.2f} GiB of 32.00 GiB HBM per device)"]


def test_jaxpr_flops_counts_a_scan_body_length_times():
    """A scan of 8 matmuls: the jaxpr count is 8 x 2MNK (closed form); XLA's cost_analysis counts the body once."""
    def f(w, x):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=8)[0].sum()

    w, x = jax.ShapeDtypeStruct((32, 32), jnp.float32), jax.ShapeDtypeStruct((8, 32), jnp.float32)
    flops, loops = plan.jaxpr_flops(jax.make_jaxpr(f)(w, x))
    assert (flops, loops) == (8 * 2 * 8 * 32 * 32, 1)
    xla = plan._first(jax.jit(f).lower(w, x).compile().cost_analysis())["flops"]
    assert xla < flops / 4
    no_loop, loops = plan.jaxpr_flops(jax.make_jaxpr(lambda w, x: (x @ w).sum())(w, x))
    assert (no_loop, loops) == (2 * 8 * 32 * 32, 0)


ABSTRACT_CASES = [
    ("rdm_minilm_demo.py:tiny", {}),
    ("text_ood_demo.py:tiny", {}),
    ("gaussian2d.py:small", {}),
    pytest.param("ar2diff_smollm2_demo.py:tiny", {}, marks=pytest.mark.slow),
    pytest.param("dlsr_mnist_demo.py:tiny", {"task.data.n_train": 8, "task.encoder.batch_size": 8,
                                             "train.global_batch_size": 8}, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,overrides", ABSTRACT_CASES)
def test_abstract_batch_equals_a_real_training_batch(name, overrides):
    """One bucket in each config, so the real batch has the longest bucket too: shapes and dtypes equal."""
    c = _config(name, overrides)
    task = build_task(c.task, init_from=c.init_from, model_options=ModelOptions.from_config(c))
    gbs = int(c.train.global_batch_size)
    real = next(task.train_batches(0, global_batch_size=gbs))
    got = {k: (tuple(v.shape), v.dtype) for k, v in task.abstract_batch(gbs).items()}
    want = {k: (np.shape(v), jax.dtypes.canonicalize_dtype(np.asarray(v).dtype)) for k, v in real.items()}
    assert got == want
    plan_task = build_task(c.task, init_from=c.init_from, model_options=ModelOptions.from_config(c), shapes_only=True)
    assert {k: (tuple(v.shape), v.dtype) for k, v in plan_task.abstract_batch(gbs).items()} == want


@pytest.mark.parametrize("name,overrides", [
    ("text_ood_demo.py:tiny", {"task.data.id": "/nonexistent/id.txt", "task.data.ood": ("/nonexistent/o.txt",)}),
    pytest.param("ar2diff_smollm2_demo.py:tiny", {"task.stage3.data": "/nonexistent/train.jsonl"},
                 marks=pytest.mark.slow),
])
def test_plan_reads_no_data_set(name, overrides):
    """``plan`` sizes a run where its data is not (a laptop, before the TPU VM has the tfds files):
    ``shapes_only`` builds the task and its train step without opening a data set."""
    c = _config(name, overrides)
    with pytest.raises(Exception, match="nonexistent"):
        build_task(c.task, init_from=c.init_from, model_options=ModelOptions.from_config(c)).sets() \
            if "text_ood" in name else build_task(c.task, init_from=c.init_from)
    task = build_task(c.task, init_from=c.init_from, model_options=ModelOptions.from_config(c), shapes_only=True)
    batch = task.abstract_batch(int(c.train.global_batch_size))
    assert batch["tokens"].shape[0] == int(c.train.global_batch_size)
    assert jax.eval_shape(task.init_params, jax.random.PRNGKey(0))


# --------------------------------------------------------------------------------------------
# CLI: one-line errors before anything compiles, the JSON guard, the re-executed run
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,expected", [
    (["--mesh=4by2"], "--mesh='4by2' is invalid: expected DATAxMODEL"),
    (["--mesh=0x2"], "--mesh='0x2' is invalid"),
    (["--mesh=2x2", "--devices=2"], "--mesh=2x2 needs 4 devices; --devices=2"),
    (["--mesh=3x1"], "train.global_batch_size=32 does not divide by the mesh's data axis (3)"),
    (["--mesh=2x1", "--accelerator=tpu-v9"], "--accelerator='tpu-v9' is unknown; known: tpu-v4, tpu-v5e"),
    (["--mesh=2x1", "--utilization=0"], "--utilization=0.0 is invalid"),
    (["--mesh=2x1", "--workdir=/tmp/x"], "plan takes no --workdir"),
])
def test_plan_bad_input_is_one_line(args, expected, capsys, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("nothing may run"))
    assert cli.main(["diffjax", "plan", f"--config={GAUSS}", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err
    if "workdir" not in expected:
        assert err.strip().count("\n") == 0


def test_plan_json_is_never_overwritten(tmp_path, capsys, monkeypatch):
    path = tmp_path / "plan.json"
    path.write_text("keep me")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("nothing may run"))
    assert cli.main(["diffjax", "plan", f"--config={GAUSS}", "--mesh=2x1", f"--json={path}"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    with pytest.raises(plan.PlanError, match="exists"):
        plan.write_json({"a": 1}, str(path))
    assert path.read_text() == "keep me"
    plan.write_json({"a": 1}, str(path), overwrite=True)
    assert json.loads(path.read_text()) == {"a": 1}


def test_plan_cli_reexecutes_with_8_fake_devices(tmp_path):
    out = tmp_path / "plan.json"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", plan.CHILD_MARKER)}
    proc = subprocess.run([sys.executable, "-m", "diffjax", "plan", f"--config={GAUSS}", "--mesh=4x2", "--devices=8",
                           "--accelerator=h100-80gb", f"--json={out}", "--config.train.global_batch_size=16"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "plan: task gaussian2d, mesh 4x2 (8 devices), global batch 16" in proc.stdout
    assert "fits: yes (" in proc.stdout and "GiB of 74.51 GiB HBM per device)" in proc.stdout
    report = json.loads(out.read_text())
    assert report["config"]["mesh"] == [4, 2] and report["config"]["batch"]["x"] == [[16, 2], "float32"]
    assert report["estimate"]["peak_flops"] == 67e12  # fp32 on an H100
    assert report["flops"]["xla_per_device"] > 0


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------

def _hf_param_count(cfg: dict) -> int:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    kind = {"xlm-roberta": "XLMRoberta", "roberta": "Roberta", "bert": "Bert", "qwen2": "Qwen2", "llama": "Llama"}
    name = kind[cfg["model_type"]]
    head = "ForMaskedLM" if cfg["model_type"] in ("xlm-roberta", "roberta", "bert") else "ForCausalLM"
    hf_config = getattr(transformers, name + "Config")(**{k: v for k, v in cfg.items() if k != "model_type"})
    with torch.device("meta"):
        model = getattr(transformers, name + head)(hf_config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["xlm-roberta-base", "xlm-roberta-xxl", "roberta-large", "bert-base-uncased",
                                  "qwen2.5-0.5b", "smollm2-135m"])
def test_preset_param_count_equals_transformers(name):
    from diffjax.checkpoints import hf

    cfg = presets.preset_config("preset:" + name)
    assert hf.read_hf_config("preset:" + name) == cfg
    model = presets.preset_model("preset:" + name)
    params = jax.eval_shape(lambda: hf.family_module(cfg["model_type"]).init_params(model, jax.random.PRNGKey(0)))
    ours = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
    assert ours == _hf_param_count(cfg)
    if name == "xlm-roberta-xxl":
        assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"]) == (48, 4096, 32)
        assert (cfg["intermediate_size"], cfg["vocab_size"], cfg["max_position_embeddings"]) == (16384, 250880, 514)
        assert 10.6e9 < ours < 10.8e9


def test_masked_lm_from_a_preset_needs_no_tokenizer_file():
    c = _config("rdm_minilm_demo.py:tiny", {"init_from": "", "task.architecture": "preset:xlm-roberta-base",
                                            "task.model.num_layers": 1})
    task = build_task(c.task, init_from=c.init_from)
    assert task.model.config.vocab_size == 250002 and task.mask_id == 250001
    assert task.abstract_batch(8)["tokens"].shape == (8, 32)
    with pytest.raises(ConfigError, match="task.tokenizer"):
        next(task.train_batches(0, global_batch_size=8))


def test_preset_errors():
    c = _config("rdm_minilm_demo.py:tiny", {"init_from": "preset:xlm-roberta-xxl"})
    with pytest.raises(ConfigError, match="architecture without weights"):
        build_task(c.task, init_from=c.init_from)
    c = _config("rdm_minilm_demo.py:tiny", {"init_from": "", "task.architecture": "preset:xlm-roberta-xxxl"})
    with pytest.raises(ConfigError, match="not a known preset; known: preset:xlm-roberta-xxl"):
        build_task(c.task, init_from=c.init_from)
