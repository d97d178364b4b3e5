"""Evaluation protocols: which data a method sees and what it is scored on.

Each protocol yields :class:`Fold` objects: the training data, the data to predict, and
the truth to score against. Histology protocols work on sections (AnnData); the gene
k-fold protocol works on a (reference, spatial) pair.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import anndata as ad
import numpy as np

from stfusion import _constants as K
from stfusion.errors import StfusionError


@dataclass
class Fold:
    """One train/test split of a protocol."""

    name: str
    train: list[ad.AnnData]
    test: ad.AnnData
    hidden_genes: list[str] | None = None  # gene k-fold: genes to impute
    extra: dict = field(default_factory=dict)


def _sid(section: ad.AnnData) -> str:
    return str(section.uns.get(K.STFUSION, {}).get(K.SECTION_ID, "section"))


def leave_one_section_out(sections: Sequence[ad.AnnData]) -> Iterator[Fold]:
    """Train on all sections but one, test on that one, for each section."""
    if len(sections) < 2:
        raise StfusionError("leave-one-section-out needs at least two sections.")
    for i, test in enumerate(sections):
        yield Fold(name=_sid(test), train=[s for j, s in enumerate(sections) if j != i], test=test)


def leave_one_patient_out(sections: Sequence[ad.AnnData]) -> Iterator[Fold]:
    """Train on all patients but one; each section of the held-out patient is a test fold."""
    patients = []
    for s in sections:
        p = s.uns.get(K.STFUSION, {}).get(K.PATIENT)
        if p is None:
            raise StfusionError(
                f"Section {_sid(s)} has no patient (uns['stfusion']['patient']); "
                "leave-one-patient-out needs one for every section."
            )
        patients.append(p)
    if len(set(patients)) < 2:
        raise StfusionError("leave-one-patient-out needs sections from at least two patients.")
    for p in sorted(set(patients)):
        train = [s for s, q in zip(sections, patients) if q != p]
        for s, q in zip(sections, patients):
            if q == p:
                yield Fold(name=f"{p}:{_sid(s)}", train=train, test=s)


def spot_holdout(sections: Sequence[ad.AnnData], fraction: float = 0.5, seed: int = 0) -> Iterator[Fold]:
    """Hide ``fraction`` of each section's spots (seeded); train on the rest of that section."""
    from stfusion.data.splits import spot_holdout as holdout_mask

    for s in sections:
        hidden = np.asarray(holdout_mask(s, fraction, seed))
        yield Fold(name=f"{_sid(s)}:holdout{fraction:g}", train=[s[~hidden].copy()], test=s[hidden].copy())


def gene_kfold(
    reference: ad.AnnData, spatial: ad.AnnData, k: int = 5, seed: int = 0, name: str = "pair"
) -> Iterator[Fold]:
    """Split the shared genes into k folds; each fold is hidden from the spatial data.

    Only genes with counts in both datasets take part: a gene the reference never detects
    cannot be imputed by any method, and one the spatial data never detects has no
    correlation to score.
    """
    from stfusion.data.splits import gene_kfold as kfold
    from stfusion.io.reference import shared_genes

    genes = _expressed_in_both(reference, spatial, shared_genes(reference, spatial))
    for i, hidden in enumerate(kfold(genes, k=k, seed=seed)):
        keep = [g for g in genes if g not in set(hidden)]
        yield Fold(
            name=f"{name}:fold{i}",
            train=[reference, spatial[:, keep].copy()],
            test=spatial[:, list(hidden)].copy(),
            hidden_genes=list(hidden),
        )


def _expressed_in_both(reference: ad.AnnData, spatial: ad.AnnData, genes: list[str]) -> list[str]:
    import logging

    def detected(adata: ad.AnnData) -> np.ndarray:
        return np.asarray((adata[:, genes].X > 0).sum(axis=0)).ravel() > 0

    keep = detected(reference) & detected(spatial)
    dropped = [g for g, k in zip(genes, keep) if not k]
    if dropped:
        logging.getLogger("stfusion").info(
            f"gene k-fold: {len(dropped)} shared genes without counts in both datasets left out: {dropped[:10]}"
        )
    return [g for g, k in zip(genes, keep) if k]


PROTOCOLS = {
    "leave_one_section_out": leave_one_section_out,
    "leave_one_patient_out": leave_one_patient_out,
    "spot_holdout": spot_holdout,
    "gene_kfold": gene_kfold,
}
