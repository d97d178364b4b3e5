"""Seeding: one call seeds python, numpy and torch; DataLoader workers get derived seeds."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed python's ``random``, numpy and torch (CPU and all CUDA devices) from ``seed``.

    Wraps :func:`lightning.seed_everything` quietly (no "Seed set to" message). Like it,
    this sets the ``PL_GLOBAL_SEED`` environment variable so spawned DDP processes reuse
    the seed.

    Parameters
    ----------
    seed
        Any integer in ``[0, 2**32 - 1]``.
    deterministic
        Also call ``torch.use_deterministic_algorithms(True, warn_only=True)``. This is a
        process-wide switch (it stays on after the call) and is only needed on GPU: on CPU
        every op stfusion uses is already deterministic. Off by default.
    """
    from lightning import seed_everything as _l_seed

    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be in [0, 2**32 - 1], got {seed}; pass a non-negative 32-bit integer.")
    _l_seed(int(seed), workers=False, verbose=False)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def worker_init_fn(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: seed numpy and python in each worker process.

    Torch already seeds every worker with ``base_seed + worker_id``, where ``base_seed`` is
    drawn from the DataLoader's generator; numpy and ``random`` would otherwise start from
    the same state in every worker (forked copies). This derives both from torch's seed, so
    a seeded DataLoader generator makes augmentation in workers reproducible.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (for ``DataLoader(generator=...)``)."""
    return torch.Generator().manual_seed(int(seed))
