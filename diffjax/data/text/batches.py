"""Batches deterministic in (seed, step) for any process count: ``TextBatcher``.

The training stream is epoch-wise permutations: stream position ``k`` is example
``perm_e[k % N]`` with ``e = k // N`` and ``perm_e = np.random.default_rng([seed, e]).permutation(N)``;
global batch ``s`` is stream positions ``[s * G, (s + 1) * G)`` (``G = global_batch_size``; a batch
may straddle two epochs). It therefore depends only on (seed, s), a run resumed at ``start_step``
sees what an uninterrupted run sees, and process ``p`` of ``P`` gets rows ``[p * G/P, (p + 1) * G/P)``
of it. The whole global batch uses one bucket, the smallest holding its longest example, so the
local slices of ``P`` processes concatenate to the ``P = 1`` batch exactly.

Each yielded dict holds the ``Packer`` fields (``tokens [b, L] int32``, ``corruptible``, ``valid``,
``attention_mask [b, L] bool``, ``segment_ids [b, L] int32``, ``prompt_length``, ``target_length
[b] int32``) plus ``example_index [b] int32`` (row in the split; ``-1`` for padding) and
``example_mask [b] bool`` (False on padding rows; all True in training), ``b = G // P``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from diffjax.data.text.cache import RaggedTokens, TokenizedExamples
from diffjax.data.text.packing import Packer, PackingFormat, TruncationStats


def _local_slice(global_batch_size: int, process_index: int, process_count: int) -> slice:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, process_count={process_count})")
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by process_count {process_count}")
    b = global_batch_size // process_count
    return slice(process_index * b, (process_index + 1) * b)


class TextBatcher:
    """Training and eval batches over one packed split (see module docstring)."""

    def __init__(self, packer: Packer, *, seed: int = 0):
        self.packer = packer
        self.seed = int(seed)
        self._perms: dict[int, np.ndarray] = {}

    @property
    def stats(self) -> TruncationStats:
        return self.packer.stats

    @property
    def num_examples(self) -> int:
        return len(self.packer)

    def permutation(self, epoch: int) -> np.ndarray:
        """[N] int64: the example order of ``epoch`` (two most recent epochs memoised)."""
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def global_indices(self, step: int, global_batch_size: int) -> np.ndarray:
        """[G] int64: the example indices of global batch ``step``."""
        n = self.num_examples
        k = np.int64(step) * global_batch_size + np.arange(global_batch_size, dtype=np.int64)
        epoch, pos = k // n, k % n
        out = np.empty(global_batch_size, np.int64)
        for e in np.unique(epoch):
            sel = epoch == e
            out[sel] = self.permutation(int(e))[pos[sel]]
        return out

    def _emit(self, global_idx: np.ndarray, sl: slice) -> dict:
        length = self.packer.bucket_for(global_idx)
        local = global_idx[sl]
        batch = self.packer.pack(local, length)
        batch["example_index"] = local.astype(np.int32)
        batch["example_mask"] = local >= 0
        return batch

    def batch(self, step: int, *, global_batch_size: int, process_index: int = 0, process_count: int = 1) -> dict:
        """This process's slice of global batch ``step``."""
        sl = _local_slice(global_batch_size, process_index, process_count)
        return self._emit(self.global_indices(step, global_batch_size), sl)

    def batches(self, start_step: int, *, global_batch_size: int, process_index: int = 0,
                process_count: int = 1) -> Iterator[dict]:
        """Endless: this process's slices of global batches ``start_step, start_step + 1, ...``
        (the contract of ``Task.train_batches``)."""
        sl = _local_slice(global_batch_size, process_index, process_count)
        step = int(start_step)
        while True:
            yield self._emit(self.global_indices(step, global_batch_size), sl)
            step += 1

    def eval_batches(self, batch_size: int, *, process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
        """Once over the split in order, global batches of ``batch_size`` (``ceil(N / batch_size)`` of
        them); the last is padded with rows ``example_index == -1``, ``example_mask == False`` (all pad
        tokens, all masks False): weight per-example results by ``example_mask``."""
        sl = _local_slice(batch_size, process_index, process_count)
        n = self.num_examples
        for start in range(0, n, batch_size):
            idx = np.arange(start, start + batch_size, dtype=np.int64)
            idx[idx >= n] = -1
            yield self._emit(idx, sl)


def padding_batch(fmt: PackingFormat, length: int, batch_size: int) -> dict:
    """``batch_size`` all-padding rows at bucket ``length`` through ``TextBatcher``'s own packing: the fields,
    dtypes and shapes of a training batch of that bucket, without data (``Task.abstract_batch``)."""
    none = RaggedTokens(np.zeros(0, np.int32), np.zeros(1, np.int64))
    packer = Packer(TokenizedExamples(none, none, key="padding"), fmt, (int(length),))
    return TextBatcher(packer)._emit(np.full(int(batch_size), -1, np.int64), slice(None))
