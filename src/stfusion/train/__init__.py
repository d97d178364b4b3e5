"""The one shared training loop (Lightning) every neural method trains through."""

from stfusion.train.loop import (
    FitResult,
    TrainModule,
    batch_size_of,
    fit,
    make_optimizer_factory,
    predict_batches,
    quiet_lightning,
)
from stfusion.train.seed import (
    EpochShuffleSampler,
    get_rng_states,
    make_generator,
    make_loader,
    seed_everything,
    set_rng_states,
    worker_init_fn,
)

__all__ = [
    "EpochShuffleSampler",
    "FitResult",
    "TrainModule",
    "batch_size_of",
    "fit",
    "get_rng_states",
    "make_generator",
    "make_loader",
    "make_optimizer_factory",
    "predict_batches",
    "quiet_lightning",
    "seed_everything",
    "set_rng_states",
    "worker_init_fn",
]
