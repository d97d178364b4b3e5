"""Shuffled-label null: refit a model after permuting expression among each section's spots.

The permutation breaks the link between a spot's expression and its location/image while
keeping each section's expression distribution. A method's score is meaningful only if it
clearly beats the scores of its own shuffled refits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anndata as ad
import numpy as np

from stfusion.models.base import Model

ModelFactory = Callable[[], Model]
Summary = Callable[[ad.AnnData, ad.AnnData], float]


def permuted_copy(section: ad.AnnData, rng: np.random.Generator) -> ad.AnnData:
    """A copy of ``section`` whose expression rows (``X`` and every layer) are permuted among spots.

    Spot names, coordinates, obs annotations and images stay where they are; only the counts move.
    """
    out = section.copy()
    perm = rng.permutation(section.n_obs)
    out.X = out.X[perm]
    for key in list(out.layers.keys()):
        out.layers[key] = out.layers[key][perm]
    return out


class ShuffledNull:
    """Refits ``model_factory()`` on ``n_permutations`` shuffled copies of the training sections.

    Parameters
    ----------
    model_factory
        Callable returning a fresh, unfitted model (e.g. ``lambda: NearestNeighbourBaseline()``).
    n_permutations
        Number of shuffled refits.
    seed
        Seed of the permutations; the same seed gives the same null.
    """

    def __init__(self, model_factory: ModelFactory, n_permutations: int = 5, seed: int = 0) -> None:
        if n_permutations < 1:
            raise ValueError(f"n_permutations must be at least 1, got {n_permutations}.")
        self.model_factory = model_factory
        self.n_permutations = int(n_permutations)
        self.seed = seed
        self.models_: list[Model] | None = None

    def fit(self, train_sections: Sequence[ad.AnnData], genes: Sequence[str] | None = None) -> ShuffledNull:
        rng = np.random.default_rng(self.seed)
        self.models_ = []
        for _ in range(self.n_permutations):
            shuffled = [permuted_copy(s, rng) for s in train_sections]
            self.models_.append(self.model_factory().fit(shuffled, genes=genes))
        return self

    def predict_all(self, section: ad.AnnData) -> list[ad.AnnData]:
        """One prediction for ``section`` per shuffled refit."""
        if self.models_ is None:
            from stfusion.models.base import NotFittedError

            raise NotFittedError("ShuffledNull is not fitted: call .fit(train_sections) first.")
        return [m.predict(section) for m in self.models_]


def null_distribution(
    model_factory: ModelFactory,
    train_sections: Sequence[ad.AnnData],
    test_section: ad.AnnData,
    summary: Summary,
    n_permutations: int = 5,
    seed: int = 0,
    genes: Sequence[str] | None = None,
) -> np.ndarray:
    """``summary(prediction, test_section)`` for each of ``n_permutations`` shuffled refits."""
    null = ShuffledNull(model_factory, n_permutations=n_permutations, seed=seed).fit(train_sections, genes=genes)
    return np.array([float(summary(pred, test_section)) for pred in null.predict_all(test_section)])
