"""The one shared training loop (Lightning) every neural method trains through."""

from stfusion.train.loop import (
    EpochShuffleSampler,
    FitResult,
    TrainModule,
    batch_size_of,
    fit,
    make_loader,
    make_optimizer_factory,
    predict_batches,
    quiet_lightning,
)
from stfusion.train.seed import make_generator, seed_everything, worker_init_fn

__all__ = [
    "EpochShuffleSampler",
    "FitResult",
    "TrainModule",
    "batch_size_of",
    "fit",
    "make_generator",
    "make_loader",
    "make_optimizer_factory",
    "predict_batches",
    "quiet_lightning",
    "seed_everything",
    "worker_init_fn",
]
