"""Test set-up: 4 fake CPU devices (set before jax is imported), fp32 matmuls, no network."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent XLA compilation cache for the whole run, its xdist workers and the subprocesses tests start
# (CLI runs, SIGKILL / multi-process tests): the tiny configs compile the same programs in many files, and
# compiling is most of a tiny test's time (a tiny text-OOD train + eval + score: 136 s cold, 56 s warm).
# Keyed by JAX on the HLO, the jax / XLA versions, the flags and the devices, so a stale entry is never used.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_ROOT, ".pytest_cache", "jax_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))  # bytes, least recently used evicted

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
