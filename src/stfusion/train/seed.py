"""Reproducibility: seeding, RNG state capture, resume-safe shuffling and seeded DataLoaders."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler


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
        process-wide switch (it stays on after the call), mainly useful on GPU where some
        kernels (e.g. scatter/index_add backward) are non-deterministic; common CPU ops
        are deterministic already. Off by default.
    """
    from lightning import seed_everything as _l_seed

    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be in [0, 2**32 - 1], got {seed}; pass a non-negative 32-bit integer.")
    _l_seed(int(seed), workers=False, verbose=False)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def worker_init_fn(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: seed numpy and python in each worker process.

    Torch seeds every worker with ``base_seed + worker_id`` (``base_seed`` drawn from the
    DataLoader's generator). Recent torch also seeds numpy/``random`` there; this makes it
    explicit and version-independent by deriving both from the worker's torch seed, so a
    seeded DataLoader generator makes worker-side augmentation reproducible.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (for ``DataLoader(generator=...)``)."""
    return torch.Generator().manual_seed(int(seed))


def get_rng_states() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states, storable with ``torch.save(weights_only)``."""
    np_state = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore states from :func:`get_rng_states`."""
    random.setstate(states["python"])
    name, key, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


class EpochShuffleSampler(Sampler[int]):
    """Random order determined by (seed, epoch) alone, so a resumed run shuffles exactly
    like an uninterrupted one. Lightning calls :meth:`set_epoch` before every epoch;
    without it each pass uses the next epoch number.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        mixed = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]
        self.epoch += 1
        order = torch.randperm(self.n, generator=make_generator(int(mixed)))
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(
    data: Dataset | DataLoader,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """A seeded DataLoader for ``data`` (returned unchanged when it already is one).

    Shuffling uses :class:`EpochShuffleSampler`; the loader's own seeded generator only
    sets worker base seeds (with ``num_workers > 0`` worker-side randomness, e.g.
    augmentation, is reproducible for a full run but not bit-exact across a resume).
    """
    if isinstance(data, DataLoader):
        return data
    gen = make_generator(seed)
    sampler = None
    if shuffle and not isinstance(data, IterableDataset):
        sampler = EpochShuffleSampler(len(data), seed)  # type: ignore[arg-type]
    return DataLoader(
        data,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        generator=gen,
        worker_init_fn=worker_init_fn if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
    )
