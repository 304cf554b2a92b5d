"""Training batches of an in-memory array set, shuffled once per epoch, resumable at any step.

Example p of the stream is ``perm(p // N)[p % N]`` with ``perm(epoch)`` a permutation of the N
examples drawn from ``np.random.default_rng([seed, salt, epoch])``: the batch of a step depends only
on (seed, step), so a run resumed at ``start_step`` sees exactly the batches an uninterrupted run
would, and every process takes its own slice of the same global batch.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


def epoch_shuffled_indices(n: int, start_step: int, *, global_batch_size: int, process_index: int = 0,
                           process_count: int = 1, seed: int = 0, salt: int = 7) -> Iterator[np.ndarray]:
    """Yields this process's example indices ``[global_batch_size // process_count]`` of step
    ``start_step``, ``start_step + 1``, ... (module docstring)."""
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} must divide by process_count {process_count}")
    local = global_batch_size // process_count
    perms: dict[int, np.ndarray] = {}

    def perm(epoch):  # one permutation per epoch, a pure function of (seed, epoch)
        if epoch not in perms:
            if len(perms) > 4:
                perms.clear()
            perms[epoch] = np.random.default_rng([seed, salt, epoch]).permutation(n)
        return perms[epoch]

    step = int(start_step)
    while True:
        pos = step * global_batch_size + process_index * local + np.arange(local)
        yield np.array([perm(int(q) // n)[int(q) % n] for q in pos])
        step += 1
