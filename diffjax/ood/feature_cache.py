"""A disk cache of extracted features: one ``.npy`` per (what produced them, which set).

``cache_path(cache_dir, prefix, ident)`` names the file ``<cache_dir>/<prefix>_<sha1(ident)[:16]>.npy``
(``ident``: a JSON-able dict of everything the features depend on, e.g. the encoder and data config
and the set's name); ``cached(path, compute)`` loads it, or computes ``[N, D]`` and writes it
atomically (a ``.tmp.npy`` renamed into place), so an interrupted run never leaves a half file.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

import numpy as np


def cache_path(cache_dir: str, prefix: str, ident: dict) -> str | None:
    """The cache file of ``ident`` under ``cache_dir``; None when ``cache_dir`` is "" (no cache)."""
    if not cache_dir:
        return None
    h = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(os.path.expanduser(cache_dir), f"{prefix}_{h}.npy")


def cached(path: str | None, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The array at ``path`` when it exists, else ``compute()`` (saved to ``path`` unless it is None)."""
    if path and os.path.exists(path):
        return np.load(path)
    out = compute()
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(path + ".tmp.npy", out)
        os.replace(path + ".tmp.npy", path)
    return out
