"""Training on several processes or machines (DDP) through the shared loop.

Pass ``devices``/``num_nodes``/``strategy`` to :func:`stfusion.train.loop.fit`,
or wrap code that trains (e.g. ``model.fit(sections)``, whose methods do not expose them) in
:func:`trainer_settings`. ``strategy="ddp"`` on the CPU is DDP over gloo started by Lightning's
default launcher, which re-runs the current command once per extra process (the right choice for
``stfusion fit --strategy ddp``, and under ``torchrun``/SLURM); every process then runs the whole
script, so only :func:`is_global_zero` should write outputs. ``"ddp_fork"`` forks the workers
from the calling process instead (POSIX, CPU only; set ``OMP_NUM_THREADS=1`` before torch starts:
forking after torch has started its OpenMP thread pool can deadlock the children) and
``"ddp_spawn"`` starts fresh interpreters (needs a picklable net and loss function). With fork
and spawn the history and best weights come back from rank 0 to the caller.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

DDP_STRATEGIES = {"ddp": "popen", "ddp_fork": "fork", "ddp_spawn": "spawn"}  # name -> Lightning start method
# Trainer settings for code that trains without exposing them (see trainer_settings); scoped per context.
_SETTINGS: ContextVar[dict[str, Any] | None] = ContextVar("stfusion_trainer_settings", default=None)


@contextmanager
def trainer_settings(
    *, devices: int | str | list[int] | None = None, num_nodes: int | None = None, strategy: str | Any | None = None,
    accelerator: str | None = None,
) -> Iterator[None]:
    """Train with these Lightning settings inside the block (every :func:`fit` call there).

    For methods whose ``fit`` does not expose them, e.g.
    ``with trainer_settings(devices=2, strategy="ddp"): STNet().fit(sections)``.
    Settings left at None keep what the caller of :func:`fit` passed. Scoped to the block
    (a :class:`contextvars.ContextVar`), so concurrent code is not affected.
    """
    given = {"devices": devices, "num_nodes": num_nodes, "strategy": strategy, "accelerator": accelerator}
    merged = {**(_SETTINGS.get() or {}), **{k: v for k, v in given.items() if v is not None}}
    token = _SETTINGS.set(merged)
    try:
        yield
    finally:
        _SETTINGS.reset(token)


def make_strategy(strategy: str | Any, accelerator: str = "cpu") -> str | Any:
    """Lightning strategy for ``strategy``: the DDP names become a ``DDPStrategy`` (gloo on the CPU).

    ``"ddp"`` re-runs the command per process (Lightning's default launcher), ``"ddp_fork"``
    forks from this process, ``"ddp_spawn"`` starts fresh interpreters. Other values
    (``"auto"``, a Strategy object) are returned unchanged.
    """
    if not isinstance(strategy, str) or strategy not in DDP_STRATEGIES:
        return strategy
    from lightning.pytorch.strategies import DDPStrategy

    backend = "gloo" if str(accelerator) == "cpu" or not torch.cuda.is_available() else None
    return DDPStrategy(process_group_backend=backend, start_method=DDP_STRATEGIES[strategy])


def is_global_zero() -> bool:
    """True in the process that should write outputs: rank 0 of a DDP run, or any single process.

    After :func:`fit` with ``strategy="ddp"`` every process runs the rest of the script;
    guard saving with this (``stfusion fit`` does).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0 and (
        int(os.environ.get("NODE_RANK", "0") or 0) == 0
    )


def _start_method(strategy: Any) -> str | None:
    return getattr(strategy, "_start_method", None)
