"""benchmarks/_machine.py and one benchmark's JSON (text_models --tiny, one model, one repeat: ~15 s)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def test_machine_info_and_text_models_json(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import _machine

    info = _machine.machine_info()
    for key in ("cpu_model", "isa_present", "cpu_count", "usable_cores", "xla_cpu_threads", "xla_flags",
                "jax_version", "jax_backend", "jax_devices", "load_average"):
        assert key in info, key
    assert info["usable_cores"] >= 1 and info["xla_cpu_threads"] >= 1
    out = tmp_path / "tm.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "text_models.py"), "--tiny", "--repeats", "1",
                    "--models", "llama", "--json", str(out)], check=True, env=env, cwd=ROOT, timeout=300)
    d = json.loads(out.read_text())
    assert d["machine"]["cpu_model"] and d["command"].endswith(str(out))
    assert d["peak_jnp_dot_flops"] > 0 and d["peak_torch_matmul_flops"] > 0
    r = d["results"][0]
    assert r["model"] == "llama" and r["torch_threads"] == d["torch_threads"] and r["max_abs_logit_diff"] < 1e-3


def test_ab_step_compares_a_model_file_at_a_revision_with_the_working_tree():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import ab_step

    res = ab_step.main(["--tiny", "--model", "roberta", "--file", "diffjax/models/bert.py", "--rev", "HEAD",
                        "--repeats", "1"])
    assert set(res) == {"fwd", "fwd+bwd"}
    assert all(r["old_ms"] > 0 and r["new_ms"] > 0 and r["ratio"] > 0 for r in res.values())


def test_matmul_floor_times_the_skeleton_and_the_model(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import matmul_floor

    row = matmul_floor.main(["--tiny", "--repeats", "1", "--json", str(tmp_path / "mf.json")])
    for name in ("dots_without_attention", "dots_with_attention", "diffjax_model"):
        assert row[f"{name}_fwd_s"] > 0 and row[f"{name}_fwdbwd_s"] > 0
    assert "ceiling_fwdbwd_ratio" not in row  # the committed JSON is for the full-size model, not --tiny
    assert json.loads((tmp_path / "mf.json").read_text())["machine"]["cpu_model"]
