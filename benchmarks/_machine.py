"""Which machine a benchmark ran on, and what its matmul can do: one helper for every benchmark.

* ``machine_info(torch_threads=None, import_torch=False) -> dict``: CPU model, the ISA flags that matter
  for matmul speed (present and absent), CPU counts (``os.cpu_count()`` and the cores this process may
  use, ``os.sched_getaffinity``), JAX version / backend / devices, ``XLA_FLAGS`` and the number of
  threads XLA:CPU uses, torch version and threads (torch is imported only with ``import_torch=True``
  or when the caller already imported it: some benchmarks keep torch in a child process so that its
  thread pool does not compete with XLA's), load average.
* ``jnp_matmul_peak`` / ``torch_matmul_peak``: best-of-``repeats`` FLOP/s of an [n, n] @ [n, n]
  matmul (what the hardware can do; on a shared machine the median mostly measures the other processes).
* ``print_machine(info)``: two readable lines; ``write_json(path, payload, info)``: the payload plus
  ``{"machine": info, "command": the command line}``, parent dirs created.
* ``torch_cuda_fp32_like_jax()``: torch's float32 matmul precision on CUDA set to XLA:GPU's (TF32 by default).

JAX is imported lazily (inside the functions), so a torch-only child process can use the torch helpers.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time

# ISA extensions that decide how fast a CPU matmul can be (x86 names as in /proc/cpuinfo; Arm's asimd/sve/sme).
MATMUL_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512dq", "avx512bw", "avx512vl",
                "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
                "asimd", "asimdhp", "sve", "sve2", "sme", "bf16", "i8mm")
_WIDE = ("avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def usable_cores() -> int:
    """Cores this process may run on (cgroup / taskset affinity), ``os.cpu_count()`` where unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def xla_cpu_threads() -> tuple[int, list[str]]:
    """(threads XLA:CPU uses for one op, the thread-related flags found in ``XLA_FLAGS``).

    XLA:CPU runs one intra-op (Eigen) thread per core it can see, i.e. ``usable_cores()``, unless
    ``--xla_cpu_multi_thread_eigen=false`` (1 thread) or an ``intra_op_parallelism_threads=N`` flag says otherwise."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if re.search(r"thread|intra_op|inter_op", f)]
    n = usable_cores()
    for f in flags:
        if re.search(r"multi_thread_eigen(=false|=0)", f):
            n = 1
        m = re.search(r"intra_op_parallelism_threads=(\d+)", f)
        if m and int(m.group(1)) > 0:
            n = int(m.group(1))
    return n, flags


def _cpuinfo() -> tuple[str, set]:
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if not model and key in ("model name", "Model name", "Hardware"):
                    model = val.strip()
                elif not flags and key in ("flags", "Features"):
                    flags = set(val.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def _gpu_info() -> list[str]:
    """``nvidia-smi -L`` lines if available (no CUDA import)."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    try:
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        return [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
    except Exception:  # noqa: BLE001
        return []


def machine_info(torch_threads=None, import_torch=False, with_jax=True) -> dict:
    """A JSON-able description of this machine (see the module docstring).

    ``torch_threads``: the thread count torch used where the caller knows it (e.g. from a child process);
    ``import_torch``: import torch here to report its version, threads and CUDA device (otherwise torch is
    reported only if already imported); ``with_jax=False``: do not import JAX (a torch-only child)."""
    model, flags = _cpuinfo()
    threads, thread_flags = xla_cpu_threads()
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": model,
        "isa_present": [f for f in MATMUL_FLAGS if f in flags],
        "isa_absent_wide": [f for f in _WIDE if f not in flags] if platform.machine() in ("x86_64", "AMD64") else [],
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "xla_cpu_threads": threads,
        "xla_thread_flags": thread_flags,
        "jax_platforms_env": os.environ.get("JAX_PLATFORMS"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpus_nvidia_smi": _gpu_info(),
    }
    if with_jax:
        import jax

        devs = jax.devices()
        info.update(jax_version=jax.__version__, jax_backend=jax.default_backend(),
                    jax_devices=[f"{d.platform}:{getattr(d, 'device_kind', '')}" for d in devs],
                    jax_device_count=len(devs), jax_default_matmul_precision=str(jax.config.jax_default_matmul_precision))
    if import_torch or "torch" in sys.modules:
        try:
            import torch
        except ImportError:
            info["torch_version"] = None
        else:
            info.update(torch_version=torch.__version__, torch_num_threads=torch.get_num_threads(),
                        torch_cuda=torch.cuda.is_available(),
                        torch_float32_matmul_precision=torch.get_float32_matmul_precision())
            if torch.cuda.is_available():
                info.update(torch_cuda_device=torch.cuda.get_device_name(0),
                            torch_cuda_matmul_allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32))
    if torch_threads is not None:
        info["torch_num_threads"] = torch_threads
    return info


def _best_flops(fn, n, repeats):
    fn()  # warm-up (compile)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def jnp_matmul_peak(n=2048, dtype="float32", repeats=10) -> float:
    """Best-of-``repeats`` FLOP/s of a jitted [n, n] @ [n, n] ``jnp`` matmul on JAX's default device."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(jnp.dtype(dtype))
    f = jax.jit(lambda x: x @ x)
    return _best_flops(lambda: f(a).block_until_ready(), n, repeats)


def torch_matmul_peak(n=2048, repeats=10, dtype="float32", device="cpu") -> float:
    """Best-of-``repeats`` FLOP/s of ``torch.matmul`` [n, n] @ [n, n] (no grad) on ``device``, at torch's
    current thread count (set it first)."""
    import torch

    a = torch.randn(n, n).to(device=device, dtype=getattr(torch, str(dtype)))
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def mm():
        with torch.no_grad():
            a @ a
        sync()

    return _best_flops(mm, n, repeats)


def torch_cuda_fp32_like_jax() -> str:
    """Set torch's float32 matmul precision on CUDA to what XLA:GPU does for float32 dots and return it.

    JAX's default on recent NVIDIA GPUs is TF32 (``jax_default_matmul_precision`` unset; torch's default is
    full float32, "highest"), so a float32 comparison would otherwise pit TF32 against true float32.
    ``JAX_DEFAULT_MATMUL_PRECISION=highest|float32`` -> "highest", ``bfloat16`` -> "medium", else "high" (TF32)."""
    import torch

    jp = (os.environ.get("JAX_DEFAULT_MATMUL_PRECISION") or "").lower()
    prec = "highest" if jp in ("highest", "float32", "f32_f32_f32") else "medium" if jp in ("bfloat16", "fastest") else "high"
    torch.set_float32_matmul_precision(prec)
    return prec


def default_matmul_n(backend: str) -> int:
    """Matrix size for the peak: 2048 on CPU; 8192 on accelerators (2048 is too small to fill a GPU)."""
    return 2048 if backend == "cpu" else 8192


def print_machine(info: dict) -> None:
    """Two readable lines."""
    absent = info.get("isa_absent_wide") or []
    isa = " ".join(info.get("isa_present", []))
    print(f"machine: {info['cpu_model']} | {info['usable_cores']} usable of {info['cpu_count']} cores | ISA: {isa}"
          + (f" (absent: {' '.join(absent)})" if absent else "")
          + (f" | load {info['load_average'][0]:.1f}" if info.get("load_average") else ""))
    parts = []
    if "jax_version" in info:
        parts.append(f"jax {info['jax_version']} backend {info['jax_backend']} devices "
                     f"{info['jax_device_count']}x {info['jax_devices'][0] if info['jax_devices'] else '-'}")
    parts.append(f"XLA:CPU threads {info['xla_cpu_threads']}" + (f" XLA_FLAGS={info['xla_flags']!r}" if info['xla_flags'] else ""))
    if "torch_version" in info:
        parts.append(f"torch {info['torch_version']} threads {info.get('torch_num_threads', '-')}"
                     + (f" cuda {info['torch_cuda_device']}" if info.get("torch_cuda_device") else ""))
    elif "torch_num_threads" in info:
        parts.append(f"torch threads {info['torch_num_threads']}")
    if info.get("gpus_nvidia_smi"):
        parts.append("; ".join(info["gpus_nvidia_smi"]))
    print("         " + " | ".join(parts), flush=True)


def default_json_path(name: str) -> str:
    """benchmarks/results/<name>.json"""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"{name}.json")


def write_json(path: str, payload: dict, info: dict | None = None) -> str:
    """Write ``payload`` + ``{"machine": info, "command": " ".join(sys.argv)}`` to ``path`` (parent dirs
    created; ``info`` defaults to ``machine_info()``). Returns the path."""
    out = dict(payload)
    out.setdefault("machine", info if info is not None else machine_info())
    out.setdefault("command", " ".join(sys.argv))
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2, default=str)
    print(f"wrote {path}", flush=True)
    return path
