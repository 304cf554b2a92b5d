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


def _machine_block(backend="cpu", device="cpu:cpu", gpus=()):
    return {"cpu_model": "Test CPU 9000", "usable_cores": 2, "cpu_count": 4, "isa_present": ["avx2", "fma"],
            "isa_absent_wide": ["amx_tile"], "jax_version": "0.0.test", "jax_backend": backend, "jax_devices": [device],
            "jax_device_count": 1, "xla_cpu_threads": 2, "xla_flags": "", "load_average": [1.25, 0.5, 0.25],
            "gpus_nvidia_smi": list(gpus)}


def test_report_renders_commands_machines_ratios_and_a_gpu_column(tmp_path):
    import report

    cpu, gpu = tmp_path / "results", tmp_path / "gpu"
    cpu.mkdir(), gpu.mkdir()
    tm_row = {"model": "roberta", "batch": 8, "length": 128, "torch_device": "cpu", "torch_threads": 2,
              "jax_fwd_s": 1.5, "torch_fwd_s": 1.8, "fwd_speedup_vs_torch": 1.2, "jax_fwdbwd_s": 4.5,
              "torch_fwdbwd_s": 5.1, "fwdbwd_speedup_vs_torch": 1.1333}
    (cpu / "text_models.json").write_text(json.dumps({
        "benchmark": "text_models", "dtype": "float32", "results": [tm_row], "errors": [],
        "command": "benchmarks/text_models.py --repeats 3", "machine": _machine_block()}))
    (gpu / "text_models_float32.json").write_text(json.dumps({
        "benchmark": "text_models", "dtype": "float32", "results": [dict(tm_row, fwd_speedup_vs_torch=3.75)],
        "errors": [], "command": "benchmarks/text_models.py --batch 32 --json /x/text_models_float32.json",
        "machine": _machine_block("gpu", "gpu:NVIDIA H100", ["GPU 0: NVIDIA H100 (UUID: GPU-123)"])}))
    (cpu / "train_step.json").write_text(json.dumps({
        "benchmark": "train_step", "devices": 4, "iters": 20, "repeats": 3, "backend": "cpu",
        "rows": [{"model": "tiny", "params": 100, "batch": 8, "mesh": [4, 1], "step_ms": 2.0, "step_vs_1x1": 8.5,
                  "loop_ms": 3.0, "loop_vs_1x1": 4.25}],
        "command": "benchmarks/train_step.py", "machine": _machine_block()}))
    (cpu / "something_new.json").write_text(json.dumps({"benchmark": "something_new", "speed": 12.5,
                                                        "command": "benchmarks/x.py --fast"}))
    out = tmp_path / "BENCHMARKS.md"
    text = report.main(["--results_dir", str(cpu), "--gpu_dir", str(gpu), "--out", str(out)])
    assert out.read_text() == text and "do not edit by hand" in text
    tm = text[text.index("## text_models"):text.index("## matmul_floor")]
    assert "`python benchmarks/text_models.py --repeats 3`" in tm
    assert "Test CPU 9000 | 2 usable of 4 cores | ISA: avx2 fma (absent: amx_tile)" in tm and "load average 1.25" in tm
    assert "PyTorch eager" in tm  # what the ratio is taken against
    assert "| figure | CPU (2 cores) | GPU (NVIDIA H100) |" in tm
    assert "| RoBERTa-base fwd: PyTorch time / diffjax time | **1.20×** | **3.75×** |" in tm
    assert "--json /x/text_models_float32.json" in tm and "UUID" not in tm
    ts = text[text.index("## train_step"):text.index("## text_models")]
    assert "**8.50×** one device" in ts and "no GPU run" in ts and "one device" in ts
    dlsr = text[text.index("## dlsr_throughput"):text.index("## generation")]  # no JSON: listed with its command
    assert "No result yet" in dlsr and "`python benchmarks/dlsr_throughput.py --batch 16 --iters 3 --variants lite0,b4`" in dlsr
    assert "### something_new" in text and "| speed | 12.50 |" in text  # unknown JSON: the generic fallback


def test_report_make_bench_runs_the_reports_command_list():
    import report

    with open(os.path.join(ROOT, "Makefile")) as f:
        mk = f.read()
    recipe = mk[mk.index("\nbench:"):].split("\n\n")[0]
    ran = [ln.strip().split(None, 1)[1] for ln in recipe.splitlines()[1:] if ln.startswith("\t$(PY) ")]
    assert ran[:-1] == report.MAKE_BENCH and ran[-1].startswith("benchmarks/report.py")
    for cmd in report.MAKE_BENCH:  # every script make bench runs writes its JSON through _machine.write_json
        with open(os.path.join(ROOT, cmd.split()[0])) as f:
            assert "_machine.write_json(" in f.read(), cmd
