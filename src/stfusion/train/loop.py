"""The one training loop every neural method uses (ST-Net, HisToGene, XFuse, SpaIM).

A method supplies an ``nn.Module``, a loss function ``loss_fn(net, batch) -> Tensor`` and
an optimiser choice; :func:`fit` does the rest on Lightning: seeding, resume-safe
shuffling, per-epoch train/val loss history, early stopping on ``val_loss`` with the best
weights restored, checkpoints (``last.ckpt`` + ``best.ckpt``), a wall-clock budget and a
quiet console. :func:`predict_batches` runs a fitted net over a dataset.

Best weights are kept as an in-memory CPU copy of the state dict (also stored in the
checkpoints, so ``resume=True`` keeps them); they do not depend on ``checkpoint_dir``.

Several processes or machines (DDP): see :mod:`stfusion.train.distributed`.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from torch import nn
from torch.utils.data import DataLoader, Dataset

from stfusion.train.distributed import _SETTINGS, _start_method, make_strategy
from stfusion.train.progress_log import ProgressLog
from stfusion.train.seed import get_rng_states, make_loader, seed_everything, set_rng_states

LossFn = Callable[[nn.Module, Any], "torch.Tensor | Mapping[str, torch.Tensor]"]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning_utilities")
_NOISY_WARNINGS = (
    r".*does not have many workers.*",
    r".*GPU available but not used.*",
    r".*TPU available but not used.*",
    r".*exists and is not empty.*",
    r".*smaller than the logging interval.*",
    r".*Tensor Cores.*",
    r".*treespec, LeafSpec.*",  # torch 2.13 deprecation hit inside Lightning 2.6
    r".*`validation_step` but have no `val_dataloader`.*",
    r".*sync_dist=True.*",
    r".*static graph optimizations.*",
)
_RECORDER_FILE = "recorder.pt"


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``history`` has one dict per finished epoch (``epoch``, ``train_loss``, ``val_loss``
    — None without validation data — plus any extra terms the loss returned).
    ``best_epoch``/``best_val_loss`` are None without validation data. ``stopped_early``
    is True when early stopping ended training; ``timed_out`` when ``max_time_s`` did
    (the last history row may then cover a partial epoch).
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_loss: float | None = None
    stopped_early: bool = False
    timed_out: bool = False
    seconds: float = 0.0
    best_checkpoint: str | None = None

    @property
    def epochs_run(self) -> int:
        """Number of finished epochs (including epochs before a resume)."""
        return len(self.history)


class TrainModule(L.LightningModule):
    """Generic LightningModule: a net, a loss function and an optimiser factory.

    Parameters
    ----------
    net
        The model; ``self.net`` (its parameters are the ``net.`` entries of checkpoints).
    loss_fn
        ``loss_fn(net, batch)`` returns the scalar loss, or a mapping with key ``"loss"``
        and further scalar terms (logged as ``train_<key>``/``val_<key>``).
    optimizer_factory
        ``optimizer_factory(params) -> Optimizer``.
    scheduler_factory
        Optional ``scheduler_factory(optimizer)`` returning an LR scheduler (stepped once
        per epoch) or a Lightning scheduler config dict (e.g. with ``"monitor"`` for
        ``ReduceLROnPlateau``).
    """

    def __init__(
        self,
        net: nn.Module,
        loss_fn: LossFn,
        optimizer_factory: OptimizerFactory,
        scheduler_factory: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn
        self.optimizer_factory = optimizer_factory
        self.scheduler_factory = scheduler_factory

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.net(*args, **kwargs)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        loss, extras = _split_loss(self.loss_fn(self.net, batch))
        n = batch_size_of(batch)
        sync = self.trainer.world_size > 1  # epoch means over every process's batches
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, batch_size=n, prog_bar=True, sync_dist=sync)
        for key, value in extras.items():
            self.log(f"{stage}_{key}", value, on_step=False, on_epoch=True, batch_size=n, sync_dist=sync)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        opt = self.optimizer_factory(self.net.parameters())
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(opt)
        config = sched if isinstance(sched, Mapping) else {"scheduler": sched, "interval": "epoch"}
        return {"optimizer": opt, "lr_scheduler": config}


def _split_loss(out: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if isinstance(out, Mapping):
        if "loss" not in out:
            raise KeyError(f"loss_fn returned a mapping without 'loss' (keys {list(out)}); add the total loss as 'loss'.")
        return out["loss"], {k: v.detach() for k, v in out.items() if k != "loss"}
    return out, {}


def batch_size_of(batch: Any) -> int:
    """Leading dimension of the first tensor in ``batch`` (tensor, sequence or mapping); 1 if none."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        if isinstance(item, (torch.Tensor, Mapping, list, tuple)):
            return batch_size_of(item)
    return 1


# ---------------------------------------------------------------- callbacks


class _Recorder(Callback):
    """Per-epoch history, in-memory best weights and RNG states (saved in checkpoints)."""

    def __init__(self, export_dir: Path | None = None) -> None:
        self.history: list[dict[str, Any]] = []
        self.best_epoch: int | None = None
        self.best_val_loss: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.export_dir = export_dir  # fork/spawn DDP: rank 0 writes its results here for the caller

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.export_dir is not None and trainer.is_global_zero:
            state = {k: v for k, v in self.state_dict().items() if k != "rng"}
            torch.save(state, self.export_dir / _RECORDER_FILE)

    def import_results(self) -> None:
        """Take over rank 0's history and best weights (fork/spawn DDP), when it wrote them."""
        path = None if self.export_dir is None else self.export_dir / _RECORDER_FILE
        if path is not None and path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.history, self.best_epoch = list(state["history"]), state["best_epoch"]
            self.best_val_loss, self.best_state = state["best_val_loss"], state["best_state"]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row = _epoch_row(trainer)
        self.history.append(row)
        val = row["val_loss"]
        if val is not None and np.isfinite(val) and (self.best_val_loss is None or val < self.best_val_loss):
            self.best_epoch, self.best_val_loss = row["epoch"], val
            net = pl_module.net  # type: ignore[attr-defined]
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "best_state": self.best_state,
            "rng": get_rng_states(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
        self.best_epoch = state_dict["best_epoch"]
        self.best_val_loss = state_dict["best_val_loss"]
        self.best_state = state_dict["best_state"]
        set_rng_states(state_dict["rng"])


class _LogLines(Callback):
    """Without a progress bar: a log line at every tenth of the epochs (:mod:`.progress_log`)."""

    def __init__(self) -> None:
        self.lines: ProgressLog | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.lines = ProgressLog("training", int(trainer.max_epochs or 1), unit="epoch", done=trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.lines is not None and trainer.is_global_zero:
            row = _epoch_row(trainer)
            self.lines.update(row["epoch"] + 1, train_loss=row["train_loss"], val_loss=row["val_loss"])


def _epoch_row(trainer: L.Trainer) -> dict[str, Any]:
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    row: dict[str, Any] = {
        "epoch": int(trainer.current_epoch),
        "train_loss": metrics.pop("train_loss", None),
        "val_loss": metrics.pop("val_loss", None),
    }
    row.update(sorted(metrics.items()))
    return row


# ---------------------------------------------------------------- fit


def make_optimizer_factory(
    optimizer: str | OptimizerFactory, lr: float, weight_decay: float = 0.0
) -> OptimizerFactory:
    """``"adam"``, ``"adamw"``, ``"sgd"`` (momentum 0.9, as in ST-Net) or a callable returned as is."""
    if callable(optimizer):
        return optimizer
    name = str(optimizer).lower()
    if name == "adam":
        return lambda p: torch.optim.Adam(p, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {optimizer!r}; use 'adam', 'adamw', 'sgd' or a callable params -> Optimizer.")


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info logs and routine warnings inside the block only.

    Logger levels are restored afterwards; the warning filters are scoped by
    :func:`warnings.catch_warnings`. Real problems (errors, other warnings) still show.
    """
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for pattern in _NOISY_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            for lg in loggers:
                lg.setLevel(logging.WARNING)
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _resume_path(checkpoint_dir: Path | None, resume: bool) -> str | None:
    if not resume:
        return None
    if checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (the folder holding last.ckpt); pass checkpoint_dir=...")
    last = checkpoint_dir / "last.ckpt"
    return str(last) if last.is_file() else None


def _callbacks(
    has_val: bool, patience: int | None, checkpoint_dir: Path | None, progress: bool, export_dir: Path | None = None
) -> tuple[_Recorder, EarlyStopping | None, ModelCheckpoint | None, list[Callback]]:
    recorder = _Recorder(export_dir)
    callbacks: list[Callback] = [recorder]
    stopper = ckpt = None
    if patience is not None and has_val:
        stopper = EarlyStopping(monitor="val_loss", patience=int(patience), mode="min", check_on_train_epoch_end=True)
        callbacks.append(stopper)
    if checkpoint_dir is not None:
        ckpt = ModelCheckpoint(
            dirpath=checkpoint_dir,
            filename="best",
            monitor="val_loss" if has_val else None,
            mode="min",
            save_top_k=1,
            save_last=True,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        callbacks.append(ckpt)
    callbacks.append(TQDMProgressBar() if progress else _LogLines())
    return recorder, stopper, ckpt, callbacks


def fit(
    net: nn.Module,
    loss_fn: LossFn,
    train_data: Dataset | DataLoader,
    val_data: Dataset | DataLoader | None = None,
    *,
    optimizer: str | OptimizerFactory = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    scheduler: SchedulerFactory | None = None,
    epochs: int = 50,
    batch_size: int = 32,
    collate_fn: Callable | None = None,
    seed: int = 0,
    early_stopping_patience: int | None = None,
    restore_best: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    max_time_s: float | None = None,
    num_workers: int = 0,
    accelerator: str = "cpu",
    devices: int | str | list[int] = 1,
    num_nodes: int = 1,
    strategy: str | Any = "auto",
    gradient_clip_val: float | None = None,
    log_every_n_steps: int = 50,
    logger: Any = False,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train ``net`` in place with ``loss_fn(net, batch)``; return the loss history.

    Seeds python/numpy/torch from ``seed`` first and shuffles by (seed, epoch), so the
    same call on an identically initialised net gives identical losses and weights
    (initialise the net after :func:`seed_everything` to make that part reproducible too).
    With ``val_data``: ``val_loss`` is logged per epoch, early stopping uses
    ``early_stopping_patience`` epochs without improvement, and the net ends with the
    weights of the best validation epoch (in-memory copy; ``restore_best=False`` keeps
    the last). ``checkpoint_dir`` writes ``last.ckpt`` and ``best.ckpt``;
    ``resume=True`` continues from ``last.ckpt`` up to ``epochs`` in total (starts fresh
    when there is none). ``max_time_s`` is a wall-clock budget. Datasets become
    DataLoaders with ``batch_size``/``collate_fn``/``num_workers``; DataLoaders are used
    as given (their shuffling is then the caller's business). ``accelerator``,
    ``devices``, ``num_nodes``, ``strategy``, ``logger`` and ``trainer_kwargs`` go to
    :class:`lightning.Trainer`. ``progress=False`` shows no bar and logs a line (``stfusion``
    logger, INFO) at every tenth of the epochs instead.
    """
    start = time.perf_counter()
    settings = _SETTINGS.get() or {}
    accelerator = settings.get("accelerator", accelerator)
    devices, num_nodes = settings.get("devices", devices), settings.get("num_nodes", num_nodes)
    strategy = make_strategy(settings.get("strategy", strategy), accelerator)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    ckpt_path = _resume_path(ckpt_dir, resume)
    seed_everything(seed)
    train_loader = make_loader(train_data, batch_size, shuffle=True, seed=seed, collate_fn=collate_fn, num_workers=num_workers)
    val_loader = None
    if val_data is not None:
        val_loader = make_loader(val_data, batch_size, shuffle=False, seed=seed, collate_fn=collate_fn, num_workers=num_workers)
    module = TrainModule(net, loss_fn, make_optimizer_factory(optimizer, lr, weight_decay), scheduler)
    with tempfile.TemporaryDirectory(prefix="stfusion-ddp-") as export:
        forked = _start_method(strategy) in ("fork", "spawn", "forkserver")
        recorder, stopper, ckpt, callbacks = _callbacks(
            val_loader is not None, early_stopping_patience, ckpt_dir, progress, Path(export) if forked else None
        )
        _run_trainer(
            module, train_loader, val_loader, callbacks, ckpt_path,
            max_epochs=int(epochs), max_time=timedelta(seconds=max_time_s) if max_time_s is not None else None,
            accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy, logger=logger,
            enable_checkpointing=ckpt is not None, enable_progress_bar=progress, default_root_dir=ckpt_dir,
            gradient_clip_val=gradient_clip_val, log_every_n_steps=log_every_n_steps, **dict(trainer_kwargs or {}),
        )  # fmt: skip
        recorder.import_results()
    timed = max_time_s is not None
    return _finish(net, recorder, stopper, ckpt, restore_best, epochs, timed, time.perf_counter() - start)


def _run_trainer(module: TrainModule, train_loader, val_loader, callbacks, ckpt_path, **kwargs: Any) -> None:
    with quiet_lightning():
        trainer = L.Trainer(callbacks=callbacks, enable_model_summary=False, num_sanity_val_steps=0, **kwargs)
        trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)


def _finish(
    net: nn.Module,
    recorder: _Recorder,
    stopper: EarlyStopping | None,
    ckpt: ModelCheckpoint | None,
    restore_best: bool,
    epochs: int,
    timed: bool,
    seconds: float,
) -> FitResult:
    if restore_best and recorder.best_state is not None:
        net.load_state_dict(recorder.best_state)
    stopped = stopper is not None and stopper.stopping_reason != EarlyStoppingReason.NOT_STOPPED
    return FitResult(
        history=recorder.history,
        best_epoch=recorder.best_epoch,
        best_val_loss=recorder.best_val_loss,
        stopped_early=stopped,
        timed_out=timed and not stopped and len(recorder.history) < epochs,
        seconds=seconds,
        best_checkpoint=(ckpt.best_model_path or None) if ckpt is not None else None,
    )


# ---------------------------------------------------------------- predict


def _default_forward(net: nn.Module, batch: Any) -> Any:
    if isinstance(batch, (list, tuple)):
        return net(batch[0])
    if isinstance(batch, Mapping):
        raise TypeError("batches are mappings; pass forward=lambda net, batch: net(batch[...]) to predict_batches.")
    return net(batch)


def _to_device(batch: Any, device: torch.device) -> Any:
    from lightning.fabric.utilities.apply_func import move_data_to_device

    return move_data_to_device(batch, device)


def predict_batches(
    net: nn.Module,
    data: Dataset | DataLoader,
    batch_size: int = 64,
    collate_fn: Callable | None = None,
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor | list[Any]:
    """Run ``net`` over ``data`` in eval mode without gradients, in dataset order.

    ``forward(net, batch)`` computes one batch's output (default: ``net(batch)``, or
    ``net(batch[0])`` when batches are tuples/lists such as ``(x, y)``). Batches go to
    ``device`` (default: where the net's parameters are). Tensor outputs are
    concatenated on the CPU along dim 0; other outputs come back as a list per batch.
    The net's train/eval mode is restored afterwards.
    """
    forward = forward or _default_forward
    params = list(net.parameters())
    dev = torch.device(device) if device is not None else (params[0].device if params else torch.device("cpu"))
    loader = make_loader(data, batch_size, shuffle=False, collate_fn=collate_fn)
    was_training = net.training
    net.eval()
    outputs: list[Any] = []
    try:
        with torch.no_grad():
            for batch in loader:
                out = forward(net, _to_device(batch, dev))
                outputs.append(out.detach().cpu() if isinstance(out, torch.Tensor) else out)
    finally:
        net.train(was_training)
    if outputs and all(isinstance(o, torch.Tensor) for o in outputs):
        return torch.cat(outputs, dim=0)
    return outputs
