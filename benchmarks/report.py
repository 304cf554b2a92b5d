"""Write BENCHMARKS.md from the benchmarks' JSON (what ``make bench`` runs last; ``make bench-report`` alone).

    python benchmarks/report.py [--results_dir benchmarks/results] [--gpu_dir DIR] [--out BENCHMARKS.md]

Reads every ``*.json`` directly in ``--results_dir`` (default ``benchmarks/results/``) and, for a GPU column,
in ``--gpu_dir`` (the OUTDIR of ``bash benchmarks/gpu.sh OUTDIR``; default ``<results_dir>/gpu`` when it holds
JSON, ``--gpu_dir none`` for no GPU column). Each JSON is what one benchmark wrote through
``benchmarks/_machine.py``'s ``write_json``: the payload plus ``"command"`` (its command line) and
``"machine"`` (CPU model, cores, ISA flags, jax / torch versions, load average, GPUs).

BENCHMARKS.md gets one section per benchmark script (in ``SCRIPTS`` order): what the ratios are taken
against, then per result file the command and machine of each run and one table of its figures, a column
per run (this machine's, and the GPU run's where ``--gpu_dir`` has the same file; else "no GPU run").
A result with no JSON yet is listed with the command that writes it; JSON files that no entry names are
rendered at the end (by their ``"benchmark"`` field, or as their scalar fields). Every figure is read
from the JSON; the few ratios computed here (compile_scan, cache_demo) are one JSON figure over another
of the same file and say so.

``MAKE_BENCH`` is the list of commands ``make bench`` runs (the Makefile repeats them; a test checks that
the two agree).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
GPU_SH = "bash benchmarks/gpu.sh OUTDIR"
NA = "—"


# ---------------------------------------------------------------------------------------------- formatting

def num(x, spec=None) -> str:
    """A number as text (``spec`` a format spec; by default about 3 significant digits); None -> —."""
    if x is None:
        return NA
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if spec:
        return format(x, spec)
    if isinstance(x, int):
        return f"{x:,}"
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    if a >= 0.01:
        return f"{x:.3f}"
    return f"{x:.2e}"


def ratio(x) -> str:
    return NA if x is None else f"**{x:.2f}×**"


def ms(seconds) -> str:
    return NA if seconds is None else f"{seconds * 1e3:,.1f} ms"


def pct(frac) -> str:
    return NA if frac is None else f"{frac:.0%}"


def gflops(flops) -> str:
    return NA if flops is None else f"{flops / 1e9:.1f} GFLOP/s"


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def command_of(d: dict) -> str:
    cmd = str(d.get("command") or "").strip()
    if not cmd:
        return "(not recorded)"
    return cmd if cmd.startswith("python") else "python " + cmd


def machine_line(m: dict | None) -> str:
    """CPU model, cores, ISA flags, jax / torch, GPUs, load average: one line from a JSON's ``"machine"``."""
    if not m:
        return "not recorded in this JSON"
    parts = [m.get("cpu_model") or "?"]
    if m.get("usable_cores") is not None:
        parts.append(f"{m['usable_cores']} usable of {m.get('cpu_count', '?')} cores")
    isa = " ".join(m.get("isa_present") or [])
    absent = " ".join(m.get("isa_absent_wide") or [])
    parts.append(f"ISA: {isa or '?'}" + (f" (absent: {absent})" if absent else ""))
    if m.get("jax_version"):
        devs = m.get("jax_devices") or []
        parts.append(f"jax {m['jax_version']}, backend {m.get('jax_backend', '?')}, "
                     f"{m.get('jax_device_count', len(devs))}× {devs[0] if devs else '?'}")
    if m.get("xla_cpu_threads") is not None:
        parts.append(f"XLA:CPU threads {m['xla_cpu_threads']}"
                     + (f" (XLA_FLAGS={m['xla_flags']!r})" if m.get("xla_flags") else ""))
    if m.get("torch_version"):
        parts.append(f"torch {m['torch_version']}, {m.get('torch_num_threads', '?')} threads"
                     + (f", CUDA {m['torch_cuda_device']}" if m.get("torch_cuda_device") else ""))
    elif m.get("torch_num_threads") is not None:
        parts.append(f"torch threads {m['torch_num_threads']}")
    gpus = [re.sub(r"\s*\(UUID:[^)]*\)", "", g) for g in (m.get("gpus_nvidia_smi") or [])]
    if gpus:
        parts.append("; ".join(gpus))
    la = m.get("load_average")
    if la:
        parts.append("load average " + " / ".join(f"{x:.2f}" for x in la) + " (1 / 5 / 15 min)")
    return " | ".join(parts)


def column_label(m: dict | None, gpu_dir: bool) -> str:
    """The table column of one run: CPU / GPU and what it was, from the machine block."""
    m = m or {}
    backend = m.get("jax_backend")
    if backend and backend != "cpu":
        dev = m.get("torch_cuda_device") or ((m.get("jax_devices") or [""])[0].split(":", 1)[-1]) or backend
        return f"GPU ({dev})"
    cores = m.get("usable_cores")
    label = f"CPU ({cores} cores)" if cores else "CPU"
    return label + (" from --gpu_dir" if gpu_dir else "")


# ---------------------------------------------------------------------------------------------- renderers
# Each takes one JSON (a dict) and returns (rows, notes): rows = [(figure, value)], notes = [text].

Rendered = tuple  # (rows, notes)


def _torch_skip_notes(d: dict, rows: list) -> list:
    notes = [d["torch_note"]] if d.get("torch_note") else []
    for r in rows:
        if r.get("torch_skipped") and r["torch_skipped"] not in notes:
            notes.append(r["torch_skipped"])
    return notes


def render_train_step(d: dict) -> Rendered:
    rows = [("devices, steps × repeats (median)", f"{d.get('devices')} {d.get('backend', '')} devices, "
             f"{d.get('iters')} × {d.get('repeats')}")]
    for r in d.get("rows", []):
        label = f"{r['model']} ({num(r.get('params'))} params, batch {r.get('batch')}), mesh {tuple(r['mesh'])}"
        rows.append((label + ": step", f"{r['step_ms']:.3f} ms = {ratio(r.get('step_vs_1x1'))} one device"))
        rows.append((label + ": trainer loop", f"{r['loop_ms']:.3f} ms = {ratio(r.get('loop_vs_1x1'))} one device"))
    return rows, []


MODEL_NAMES = {"roberta": "RoBERTa-base", "roberta-large": "RoBERTa-large", "llama": "SmolLM2-135M-shaped"}


def render_text_models(d: dict) -> Rendered:
    rows = [("dtype; matmul peak jnp.dot / torch.matmul", f"{d.get('dtype')}; {gflops(d.get('peak_jnp_dot_flops'))} / "
             f"{gflops(d.get('peak_torch_matmul_flops'))} ({d.get('matmul_n')}² matmul, best seen)")]
    for r in d.get("results", []):
        m = MODEL_NAMES.get(r["model"], r["model"])
        rows.append((f"{m}: batch × length, torch", f"{r.get('batch')}×{r.get('length')}, torch "
                     f"{r.get('torch_device', '-')} {r.get('torch_threads', '-')} threads"))
        for what, name in (("fwd", "fwd"), ("fwdbwd", "fwd+bwd")):
            rows.append((f"{m} {name}: diffjax / PyTorch", f"{ms(r.get(f'jax_{what}_s'))} / {ms(r.get(f'torch_{what}_s'))}"))
            rows.append((f"{m} {name}: PyTorch time / diffjax time", ratio(r.get(f"{what}_speedup_vs_torch"))))
            rows.append((f"{m} {name}: % of jnp.dot peak, diffjax / PyTorch",
                         f"{pct(r.get(f'jax_{what}_frac_peak'))} / {pct(r.get(f'torch_{what}_frac_peak'))}"))
        rows.append((f"{m}: PyTorch fwd at 1 thread", ms(r.get("torch_fwd_s_1thread"))))
        rows.append((f"{m}: jit compile fwd / fwd+bwd", f"{num(r.get('jax_fwd_compile_s'))} / "
                     f"{num(r.get('jax_fwdbwd_compile_s'))} s"))
        rows.append((f"{m}: max |logit diff| diffjax vs PyTorch", num(r.get("max_abs_logit_diff"), ".1e")
                     if r.get("max_abs_logit_diff") is not None else NA))
    notes = _torch_skip_notes(d, d.get("results", []))
    notes += [f"{e['model']} failed: {e['error']}" for e in d.get("errors", [])]
    return rows, notes


def render_matmul_floor(d: dict) -> Rendered:
    rows = []
    for r in d.get("results", []):
        m = MODEL_NAMES.get(r["model"], r["model"])
        rows.append((f"{m}: batch × length, GFLOP fwd, jnp.dot peak", f"{r.get('batch')}×{r.get('length')}, "
                     f"{num(r.get('gflop_fwd'))}, {gflops(r.get('peak_jnp_dot_flops'))}"))
        for name, label in (("dots_without_attention", "dots without attention core"),
                            ("dots_with_attention", "dots with attention core (the floor)"),
                            ("diffjax_model", "diffjax model")):
            if f"{name}_fwd_s" in r:
                rows.append((f"{label}: fwd / fwd+bwd", f"{ms(r[f'{name}_fwd_s'])} ({pct(r.get(f'{name}_fwd_frac_peak'))}"
                             f" of peak) / {ms(r[f'{name}_fwdbwd_s'])} ({pct(r.get(f'{name}_fwdbwd_frac_peak'))})"))
        if "torch_fwd_s_from_json" in r:
            rows.append(("PyTorch eager full model (from text_models.json): fwd / fwd+bwd",
                         f"{ms(r['torch_fwd_s_from_json'])} / {ms(r.get('torch_fwdbwd_s_from_json'))}"))
            rows.append(("ceiling PyTorch / floor: fwd", ratio(r.get("ceiling_fwd_ratio"))))
            rows.append(("ceiling PyTorch / floor: fwd+bwd", ratio(r.get("ceiling_fwdbwd_ratio"))))
    return rows, []


def render_dlsr(d: dict) -> Rendered:
    rows = [("batch, timing; matmul peak jnp.dot / torch.matmul",
             f"{d.get('batch', NA)}, median of {d.get('iters', NA)}; {gflops(d.get('peak_jnp_dot_flops'))} / "
             f"{gflops(d.get('peak_torch_matmul_flops'))}")]
    for r in d.get("rows", []):
        v = f"{r['variant']} @{r.get('res')} (D {r.get('D')})"
        rows.append((f"{v}: diffjax img/s", num(r.get("jax_img_s"), ".1f")))
        rows.append((f"{v}: PyTorch img/s ({r.get('torch_threads', '-')} threads)", num(r.get("torch_img_s"), ".1f")
                     if r.get("torch_img_s") is not None else NA))
        one = r.get("torch_img_s_1thr")
        if one is not None:
            rows.append((f"{v}: PyTorch img/s at 1 thread", num(one, ".1f")))
        rows.append((f"{v}: diffjax / PyTorch", ratio(r.get("ratio"))))
        if r.get("z0_max_abs_diff") is not None:
            rows.append((f"{v}: max |diff| features / LFDN", f"{r['z0_max_abs_diff']:.1e} / "
                         f"{r.get('lfdn_max_abs_diff', float('nan')):.1e}"))
    for s in d.get("sweep", []):
        rows.append((f"sweep {s['variant']}, {s.get('examples')} examples, {s.get('n_t')} t, {s.get('how')}: "
                     "one call over all t / single-t call",
                     f"{num(s.get('all_t_s'))} s / {ms(s.get('single_t_s'))}: per t {ratio(s.get('per_t_over_single'))} "
                     "a single-t call"))
    return rows, _torch_skip_notes(d, d.get("rows", []))


DECODERS = {"topk": "top-k", "thr": "threshold, whole row", "thr:none": "threshold in blocks, no cache",
            "thr:prefix": "threshold in blocks, prefix cache", "thr:dual": "threshold in blocks, dual cache"}


def render_generation(d: dict) -> Rendered:
    rs = d.get("rows", [])
    first = rs[0] if rs else {}
    rows = [("batch, steps at most; torch", f"{first.get('batch', NA)}, {first.get('steps', NA)}; "
             f"{d.get('torch_device', NA)} {d.get('torch_threads', NA)} threads")]
    for r in rs:
        label = f"{r['model']} L={r['length']} {DECODERS.get(r['decoder'], r['decoder'])}"
        jx, tt = r.get("jax", {}), r.get("torch", {})
        rows.append((f"{label}: tokens/s diffjax / PyTorch", f"{num(jx.get('tokens_per_s'), '.1f')} / "
                     f"{num(tt.get('tokens_per_s'), '.1f') if tt else NA}"))
        rows.append((f"{label}: diffjax / PyTorch", ratio(r.get("speedup"))))
        rows.append((f"{label}: calls per token; same tokens", f"{num(jx.get('calls_per_token'), '.3f')}; "
                     f"{num(r.get('token_agreement'), '.3f') if 'token_agreement' in r else NA}"))
    return rows, _torch_skip_notes(d, rs)


def render_compile_scan(d: dict) -> Rendered:
    rows = [("family, layers, width", f"{d.get('family')}, {d.get('layers')}, {d.get('width')}")]
    by = {}
    for r in d.get("rows", []):
        by.setdefault((r.get("precision"), r.get("remat")), {})[bool(r.get("scan_layers"))] = r
    for (prec, remat), pair in by.items():
        u, s = pair.get(False), pair.get(True)
        label = f"{prec}, remat {remat}"
        rows.append((f"{label}: compile s unrolled / scanned",
                     f"{num(u and u['compile_s'])} / {num(s and s['compile_s'])}"))
        if u and s and s.get("compile_s"):
            rows.append((f"{label}: unrolled compile / scanned compile (computed here)",
                         ratio(u["compile_s"] / s["compile_s"])))
        rows.append((f"{label}: step ms unrolled / scanned", f"{num(u and u['step_ms'])} / {num(s and s['step_ms'])}"))
    return rows, []


def render_ar_vs_diffusion(d: dict) -> Rendered:
    rows = [("model, K steps, N samples, prompt", f"{d.get('model')}, {d.get('steps')}, {d.get('samples')}, "
             f"{d.get('prompt_length')} tokens")]
    for r in d.get("rows", []):
        label = f"B={r['batch']} T={r['target_length']}"
        rows.append((f"{label}: tokens/s AR / diffusion", f"{num(r.get('ar_tokens_per_s'), '.1f')} / "
                     f"{num(r.get('diffusion_tokens_per_s'), '.1f')}"))
        rows.append((f"{label}: AR time / diffusion time", ratio(r.get("ratio_ar_over_diffusion"))))
    for b, t in (d.get("crossover_length") or {}).items():
        rows.append((f"B={b}: diffusion faster from T =", NA if t is None else str(t)))
    return rows, []


def render_text_ood_scoring(d: dict) -> Rendered:
    rows = [("sentences, batch, seeds, length; torch", f"{d.get('n_sentences')}, {d.get('batch')}, {d.get('seeds')}, "
             f"{d.get('length')}; {d.get('torch_device')} {d.get('torch_threads')} threads"),
            ("max relative score diff diffjax vs PyTorch", num(d.get("max_rel_diff_jax_vs_torch"), ".1e")
             if d.get("max_rel_diff_jax_vs_torch") is not None else NA)]
    for key in sorted((k for k in d if re.fullmatch(r"t\d+", k)), key=lambda k: int(k[1:])):
        r = d[key]
        label = f"{key[1:]} timestep(s) ({r.get('scores_per_sentence')} scores a sentence)"
        rows.append((f"{label}: sentences/s diffjax / PyTorch", f"{num(r.get('jax_sentences_per_s'), '.1f')} / "
                     f"{num(r.get('torch_sentences_per_s'), '.1f') if 'torch_sentences_per_s' in r else NA}"))
        rows.append((f"{label}: PyTorch time / diffjax time", ratio(r.get("jax_over_torch"))))
    return rows, _torch_skip_notes(d, [])


def render_text_data(d: dict) -> Rendered:
    rows = []
    for label, r in (d.get("data") or {}).items():
        rows.append((f"{label}: seconds; examples/s; tokens/s" + ("; batches/s" if "batches_per_s" in r else ""),
                     f"{num(r.get('seconds'), '.3f')}; {num(r.get('examples_per_s'), ',.0f')}; "
                     f"{num(r.get('tokens_per_s'), ',.0f')}" + (f"; {num(r['batches_per_s'], '.1f')}"
                                                                if "batches_per_s" in r else "")))
    m = d.get("model") or {}
    if m:
        rows.append((f"MiniLM fwd+bwd [{m.get('batch')},{m.get('length')}]: step; steps/s; compile",
                     f"{num(m.get('step_ms'), '.1f')} ms; {num(m.get('steps_per_s'), '.2f')}; {num(m.get('compile_s'))} s"))
    rows.append(("data batches/s / train steps/s", ratio(d.get("ratio_batches_per_step"))))
    return rows, []


CACHE_VARIANTS = {"topk50": "50-step top-k, no cache", "thr:none": "threshold in blocks, no cache",
                  "thr:prefix": "threshold in blocks, prefix cache", "thr:dual": "threshold in blocks, dual cache"}


def render_cache_demo(d: dict) -> Rendered:
    rows = []
    rs = d.get("rows", [])
    rounds = {r.get("round", 0) for r in rs}
    for r in rs:
        label = CACHE_VARIANTS.get(r["variant"], r["variant"]) + (f" (round {r.get('round', 0)})" if len(rounds) > 1 else "")
        rows.append((f"{label}: tokens/s; calls per token; decode s",
                     f"{num(r.get('tokens_per_s'), '.2f')}; {num(r.get('calls_per_token'), '.2f')}; {num(r.get('seconds'))}"
                     + (" (compile included)" if r.get("includes_compile") else "")))
        rows.append((f"{label}: BLEU; SQuAD F1; exact match", f"{num(r.get('bleu'), '.2f')}; "
                     f"{num(r.get('squad_f1'), '.3f')}; {num(r.get('exact_match'), '.3f')}"))
        base = next((b for b in rs if b["variant"] == "topk50" and b.get("round", 0) == r.get("round", 0)), None)
        if base and r is not base and base.get("tokens_per_s"):
            rows.append((f"{label}: tokens/s over 50-step top-k's (computed here)",
                         ratio(r["tokens_per_s"] / base["tokens_per_s"])))
    return rows, []


def render_text_ood_probe(d: dict) -> Rendered:
    rows = [("steps, lr, overrides", f"{d.get('steps')}, {d.get('lr')}, {' '.join(d.get('overrides') or []) or 'none'}")]
    for r in d.get("rows", []):
        for t, v in r.items():
            if t != "step" and isinstance(v, dict):
                rows.append((f"step {r['step']} t={t}: swap; cos; L_d (mean predictor)",
                             f"{num(v.get('swap'), '.3f')}; {num(v.get('cos'), '.3f')}; {num(v.get('ld'), '.0f')} "
                             f"({num(v.get('ld_mean'), '.0f')})"))
    return rows, []


def render_generic(d: dict) -> Rendered:
    """The payload's scalar fields, and each row's (a list of dicts under any key) on one line."""
    rows = []
    for k, v in d.items():
        if k in ("machine", "command"):
            continue
        if isinstance(v, (int, float, str, bool)) or v is None:
            rows.append((k, num(v)))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                rows.append((f"{k}[{i}]", ", ".join(f"{a}={num(b)}" for a, b in x.items()
                                                   if isinstance(b, (int, float, str, bool)))))
    return rows, []


RENDERERS: dict[str, Callable[[dict], Rendered]] = {
    "train_step": render_train_step, "text_models": render_text_models, "matmul_floor": render_matmul_floor,
    "dlsr_throughput": render_dlsr, "generation": render_generation, "compile_scan": render_compile_scan,
    "ar_vs_diffusion": render_ar_vs_diffusion, "text_ood_scoring": render_text_ood_scoring,
    "text_data": render_text_data, "cache_demo": render_cache_demo, "text_ood_probe": render_text_ood_probe,
}


# ---------------------------------------------------------------------------------------------- what runs

@dataclass
class Run:
    """One result file: ``name``.json in the results dir (written by ``command``), its GPU twin(s) in --gpu_dir."""
    name: str
    command: str | None  # None: not run here (e.g. GPU only, from gpu.sh)
    gpu_names: tuple = ()  # the file names (no .json) gpu.sh writes for the same measurement
    make_bench: bool = True
    needs: str = ""  # why make bench does not run it


@dataclass
class Script:
    name: str
    what: str
    reference: str  # what each ratio is taken against
    runs: list = field(default_factory=list)
    tool: bool = False  # writes no JSON (a tool, not a benchmark)


SCRIPTS = [
    Script("train_step", "the sharded jitted train step (gaussian2d MLP denoiser + AdamW + clipping + EMA) on a mesh of "
           "fake CPU devices, and the trainer loop around it (host batch -> global array -> step -> lagged NaN check)",
           "**one device**: each ratio is the time on the mesh over the same step on mesh (1, 1) in the same run "
           "(> 1 = slower). Fake CPU devices share the host's cores, so on CPU this measures the cost of sharding "
           "and dispatch, not a speed-up; the tiny model's rows are the dispatch overhead per step.",
           [Run("train_step", "benchmarks/train_step.py")]),
    Script("text_models", "forward and forward+backward (token cross-entropy) of a RoBERTa-base and a "
           "SmolLM2-135M-shaped model, random weights made by transformers and loaded into diffjax",
           "**PyTorch eager**: transformers' model with the same weights, in a child process that never imports "
           "JAX, at as many threads as XLA:CPU uses (on a GPU: CUDA, float32 matmuls in TF32 as XLA:GPU does). "
           "Ratio = PyTorch time / diffjax time (> 1 = diffjax faster). % of peak = analytic FLOP/s over the best "
           "square `jnp.dot` / `torch.matmul` measured on the same machine.",
           [Run("text_models", "benchmarks/text_models.py --repeats 3", ("text_models", "text_models_float32")),
            Run("text_models_bfloat16", None, ("text_models_bfloat16",), make_bench=False,
                needs="gpu.sh runs it, on a GPU only")]),
    Script("matmul_floor", "the text step reduced to its dots (same projections, feed-forward, attention-core "
           "products, tied head + CE; no norms, RoPE, activations, softmax) next to the real diffjax model",
           "**a floor under XLA:CPU's kernels**: the dots-only step is the least any formulation can take here; "
           "ceiling = PyTorch eager's full step (read from `benchmarks/results/text_models.json`, another run) / "
           "that floor = the most diffjax can be ahead of PyTorch with these dot kernels. % of peak: of `jnp.dot`.",
           [Run("matmul_floor_llama", "benchmarks/matmul_floor.py --model llama --json "
                "benchmarks/results/matmul_floor_llama.json"),
            Run("matmul_floor_roberta", "benchmarks/matmul_floor.py --model roberta --json "
                "benchmarks/results/matmul_floor_roberta.json")]),
    Script("dlsr_throughput", "end-to-end image OOD: images -> EfficientNet features -> GAP + z-score -> LFDN DDIM "
           "reconstruction -> MSE + MFsim scores, img/s; and the vmapped timestep sweep",
           "**PyTorch eager**: the same pipeline (efficientnet_pytorch / efficientnet_lite_pytorch + a torch LFDN with "
           "the same weights, outputs checked to agree) in a child process, at as many threads as XLA:CPU uses. "
           "Ratio = diffjax img/s / PyTorch img/s (> 1 = diffjax faster). Sweep: one jitted call over all t against "
           "**a single-t call** (per-t cost / single-t cost).",
           [Run("dlsr_throughput", "benchmarks/dlsr_throughput.py --batch 16 --iters 3 --variants lite0,b4",
                ("dlsr_throughput",))]),
    Script("generation", "masked-diffusion decoding tokens/s and model calls per token (top-k; confidence threshold; "
           "threshold in blocks with K/V cache none / prefix / dual), random weights in MiniLM's shape",
           "**PyTorch eager**: the same algorithm as a Python loop around transformers' `*ForMaskedLM` with the same "
           "weights (with a cache: Fast-dLLM's form), each side in its own subprocess, equal threads. Ratio = diffjax "
           "tokens/s / PyTorch tokens/s (> 1 = diffjax faster); same tokens = fraction of identical output tokens.",
           [Run("generation", "benchmarks/generation.py --models=minilm --lengths=256 --batch=2 --steps=48 "
                "--repeats=1 --decoders=topk,thr,thr:none,thr:prefix,thr:dual", ("generation",))]),
    Script("compile_scan", "compile time (trace + XLA compile) and step time of one train step (loss, grads, Adam), "
           "layers unrolled vs scanned (`config.scan_layers`), per remat policy, for a deep tiny model",
           "**the unrolled stack**: ratio = unrolled compile time / scanned compile time of the same model, remat and "
           "precision in the same run (computed here from the JSON's two figures).",
           [Run("compile_scan", "benchmarks/compile_scan.py --family bert --layers 24")]),
    Script("ar_vs_diffusion", "autoregressive decoding with the KV cache vs K-step diffusion refinement (paper 001), "
           "same Llama model and weights",
           "**AR decoding with the KV cache** (one jitted prefill + `lax.while_loop`): ratio = AR time / diffusion "
           "time for the same batch B and target length T (> 1 = diffusion faster); best of the repeats.",
           [Run("ar_vs_diffusion", "benchmarks/ar_vs_diffusion.py --lengths 16 32 64 --batches 1 4",
                ("ar_vs_diffusion",))]),
    Script("text_ood_scoring", "text OOD scoring (paper 000) sentences/s at 1 and 16 timesteps: the real "
           "all-MiniLM-L6-v2 encoder, L_d + L_c",
           "**PyTorch eager, Python loop**: transformers' BertModel with the same weights and noise, looping over "
           "timesteps and batches, against diffjax's one jitted vmapped sweep; scores checked to agree first. "
           "Ratio = PyTorch time / diffjax time (> 1 = diffjax faster), equal threads.",
           [Run("text_ood_scoring", "benchmarks/text_ood_scoring.py", ("text_ood_scoring",))]),
    Script("text_data", "the text input pipeline (tokenise, cache, pack, batch) against the train step it feeds",
           "**the train step**: ratio = data batches/s / MiniLM fwd+bwd steps/s at the same batch (> 1 = the input "
           "pipeline keeps up).",
           [Run("text_data", "benchmarks/text_data.py", ("text_data",))]),
    Script("cache_demo", "decoding speed and quality of a trained masked-LM run by decoder and K/V cache",
           "**the paper's 50-step top-k without a cache** in the same run: ratio = tokens/s over top-k's "
           "(computed here from the JSON's two figures).",
           [Run("cache_demo", "benchmarks/cache_demo.py --workdir=workdirs/rdm --gen_length=256 --examples=32 "
                "--repeats=1", make_bench=False, needs="it needs a trained run in workdirs/rdm, README \"Fast decoding\"")]),
    Script("text_ood_probe", "a diagnostic, not a speed benchmark: does the text-OOD denoiser use its input "
           "(swap test, cosine to x_0, L_d against the mean-embedding predictor) while it trains",
           "**the mean-embedding predictor** (a model-free floor for L_d); no speed ratio.",
           [Run("text_ood_probe", "benchmarks/text_ood_probe.py", make_bench=False,
                needs="a diagnostic: it trains the demo denoiser")]),
    Script("ab_step", "paired A/B of a model file at a git revision vs the working tree, one process, alternating "
           "calls", "the same file at `--rev` (old / new time, > 1 = the working tree faster). Prints only.",
           [Run("ab_step", "benchmarks/ab_step.py", make_bench=False, needs="a tool: prints, writes no JSON")], tool=True),
    Script("profile_step", "XLA's per-op profile of a jitted fwd+bwd, grouped by op kind and model path",
           "no ratio: thread time per op. Prints only.",
           [Run("profile_step", "benchmarks/profile_step.py", make_bench=False, needs="a tool: prints, writes no JSON")],
           tool=True),
]

# What `make bench` runs, in this order (text_models before matmul_floor: the floor reads text_models.json).
MAKE_BENCH = [r.command for s in SCRIPTS for r in s.runs if r.make_bench and r.command]


# ---------------------------------------------------------------------------------------------- the document

def load_dir(path: str | None) -> dict:
    """{file name without .json: payload} of the JSON files directly in ``path`` (unreadable ones skipped)."""
    out = {}
    if not path or not os.path.isdir(path):
        return out
    for f in sorted(glob.glob(os.path.join(path, "*.json"))):
        try:
            with open(f) as fh:
                d = json.load(fh)
        except (OSError, ValueError) as e:
            print(f"report.py: skipped {f}: {e}", file=sys.stderr)
            continue
        if isinstance(d, dict):
            out[os.path.splitext(os.path.basename(f))[0]] = d
    return out


def gpu_failures(path: str | None) -> dict:
    """{benchmark name: line} from gpu.sh's failures.txt (FAIL / SKIP lines)."""
    out = {}
    f = os.path.join(path, "failures.txt") if path else None
    if f and os.path.exists(f):
        for line in open(f):
            m = re.match(r"(FAIL|SKIP) ([\w.-]+):", line.strip())
            if m:
                out[m.group(2)] = line.strip()
    return out


def rel(path: str) -> str:
    p = os.path.abspath(path)
    return os.path.relpath(p, ROOT) if p.startswith(ROOT + os.sep) else p


def renderer_for(script: str | None, d: dict) -> Callable[[dict], Rendered]:
    return RENDERERS.get(script or "") or RENDERERS.get(str(d.get("benchmark", ""))) or render_generic


def table(columns: list) -> list:
    """``columns`` = [(label, rows)]: one markdown table, a row per figure (first-seen order), a column per run."""
    labels, values = [], []
    for _, rows in columns:
        vals = {}
        for k, v in rows:
            if k not in vals:
                vals[k] = v
            if k not in labels:
                labels.append(k)
        values.append(vals)
    out = ["| figure | " + " | ".join(cell(c) for c, _ in columns) + " |",
           "|---|" + "---|" * len(columns)]
    for k in labels:
        out.append(f"| {cell(k)} | " + " | ".join(cell(v.get(k, NA)) for v in values) + " |")
    return out


def render_run(script: Script, run: Run, cpu: dict | None, gpu: dict | None, gpu_name: str | None,
               results_dir: str, gpu_dir: str | None, fails: dict) -> list:
    lines = []
    columns, notes = [], []
    path = os.path.join(rel(results_dir), run.name + ".json")
    if cpu is not None:
        lines.append(f"- Command: `{command_of(cpu)}` → `{path}`")
        lines.append(f"- Machine: {machine_line(cpu.get('machine'))}")
        label = column_label(cpu.get("machine"), False)
        rows, n = renderer_for(script.name, cpu)(cpu)
        columns.append((label, rows))
        notes += [f"{label}: {x}" for x in n] + ([f"{label}: partial (cut short): the rows finished before"]
                                                  if cpu.get("partial") else [])
    elif run.command and run.make_bench:
        lines.append(f"- No result yet in `{rel(results_dir)}`: `python {run.command}` writes `{path}` (`make bench` runs it).")
    elif run.command:
        lines.append(f"- No result yet (not run by `make bench`: {run.needs}): `python {run.command}` writes `{path}`.")
    else:
        lines.append(f"- Not run on this machine: {run.needs}.")
    if gpu is not None:
        gpath = os.path.join(rel(gpu_dir), gpu_name + ".json")
        lines.append(f"- GPU command: `{command_of(gpu)}` → `{gpath}`")
        lines.append(f"- GPU machine: {machine_line(gpu.get('machine'))}")
        label = column_label(gpu.get("machine"), True)
        if any(label == c for c, _ in columns):
            label += " (2)"
        rows, n = renderer_for(script.name, gpu)(gpu)
        columns.append((label, rows))
        notes += [f"{label}: {x}" for x in n] + ([f"{label}: partial (cut short by gpu.sh's timeout): the rows "
                                                  "finished before"] if gpu.get("partial") else [])
    else:
        fail = next((fails[g] for g in run.gpu_names if g in fails), None)
        if fail:
            lines.append(f"- GPU: no GPU result; gpu.sh's failures.txt says: `{fail}`")
        elif run.gpu_names:
            lines.append(f"- GPU: no GPU run (`{GPU_SH}` writes `{run.gpu_names[-1]}.json`; then "
                         "`python benchmarks/report.py --gpu_dir OUTDIR`).")
        else:
            lines.append("- GPU: no GPU run (gpu.sh does not run this one).")
    if columns:
        lines.append("")
        lines += table(columns)
    if notes:
        lines.append("")
        lines += [f"Note, {x}" for x in notes]
    return lines


def build(results_dir: str, gpu_dir: str | None) -> str:
    cpu_all, gpu_all = load_dir(results_dir), load_dir(gpu_dir)
    fails = gpu_failures(gpu_dir)
    used_cpu, used_gpu = set(), set()
    out = ["# Benchmarks", "",
           "<!-- Generated by `make bench` (benchmarks/report.py); do not edit by hand. -->", "",
           "Generated by `make bench` from the JSON each benchmark script writes; do not edit by hand "
           "(`make bench-report` re-renders it from the JSON already there). Every figure below is read from the "
           "JSON file named beside it, written by the command shown with it; the two kinds of ratio marked "
           "\"computed here\" divide two figures of the same file. On a shared machine the load average in the "
           "machine line says how busy it was.", "",
           f"- Results: `{rel(results_dir)}` ({len(cpu_all)} JSON files)",
           (f"- GPU results: `{rel(gpu_dir)}` ({len(gpu_all)} JSON files; written by `{GPU_SH}`)" if gpu_dir and gpu_all
            else f"- GPU results: none (`{GPU_SH}` on a GPU machine, then `python benchmarks/report.py --gpu_dir "
                 "OUTDIR`)"),
           "- `make bench` runs, in this order (with the venv's python), then `python benchmarks/report.py`:", "",
           "```bash"] + [f"python {c}" for c in MAKE_BENCH] + ["```", ""]
    for s in SCRIPTS:
        out += [f"## {s.name}", "", f"`benchmarks/{s.name}.py`: {s.what}.", "", f"Reference: {s.reference}", ""]
        for run in s.runs:
            cpu = cpu_all.get(run.name)
            gname = next((g for g in run.gpu_names if g in gpu_all), None)
            if s.tool and cpu is None and gname is None:
                out += [f"Not run by `make bench` ({run.needs}): `python {run.command}`.", ""]
                continue
            if len(s.runs) > 1:
                out += [f"### {run.name}", ""]
            used_cpu.add(run.name)
            used_gpu.add(gname)
            out += render_run(s, run, cpu, gpu_all.get(gname) if gname else None, gname, results_dir, gpu_dir, fails)
            out.append("")
    others = [(n, d, False) for n, d in cpu_all.items() if n not in used_cpu]
    others += [(n, d, True) for n, d in gpu_all.items() if n not in used_gpu]
    if others:
        out += ["## Other results", "", "JSON files that no benchmark above names, rendered by their "
                "`\"benchmark\"` field (or their scalar fields).", ""]
        for n, d, is_gpu in others:
            where = rel(gpu_dir) if is_gpu else rel(results_dir)
            label = column_label(d.get("machine"), is_gpu)
            rows, notes = renderer_for(None, d)(d)
            out += [f"### {n}" + (" (GPU dir)" if is_gpu else ""), "",
                    f"- Command: `{command_of(d)}` → `{os.path.join(where, n + '.json')}`",
                    f"- Machine: {machine_line(d.get('machine'))}", ""] + table([(label, rows)])
            out += ([""] + [f"Note, {label}: {x}" for x in notes] if notes else []) + [""]
    return "\n".join(out).rstrip() + "\n"


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results_dir", default=RESULTS, help="the JSON of this machine's runs (default benchmarks/results)")
    ap.add_argument("--gpu_dir", default=None, help="a GPU run's JSON (gpu.sh's OUTDIR; default <results_dir>/gpu "
                    "when it holds JSON; 'none': no GPU column)")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--commands", action="store_true", help="print make bench's commands and exit")
    a = ap.parse_args(argv)
    if a.commands:
        print("\n".join(MAKE_BENCH))
        return ""
    gpu_dir = a.gpu_dir
    if gpu_dir is None:
        default = os.path.join(a.results_dir, "gpu")
        gpu_dir = default if glob.glob(os.path.join(default, "*.json")) else None
    elif gpu_dir.lower() == "none":
        gpu_dir = None
    text = build(a.results_dir, gpu_dir)
    with open(a.out, "w") as f:
        f.write(text)
    print(f"wrote {a.out}")
    return text


if __name__ == "__main__":
    main()
