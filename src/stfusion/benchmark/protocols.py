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


def section_patient(section: ad.AnnData) -> str:
    """The patient of a section (``uns["stfusion"]["patient"]``, set by the readers: her2st's is the
    section's first letter); a clear error when it is missing."""
    p = section.uns.get(K.STFUSION, {}).get(K.PATIENT)
    if p is None or str(p) == "":
        raise StfusionError(
            f"Section {_sid(section)} has no patient (uns['stfusion']['patient']); "
            "leave-one-patient-out needs one for every section (read it with patient=..., or set it)."
        )
    return str(p)


def _patients_arg(value: str | Sequence[str] | None, known: list[str], what: str) -> list[str] | None:
    if value is None:
        return None
    chosen = [str(value)] if isinstance(value, str) else [str(v) for v in value]
    unknown = sorted(set(chosen) - set(known))
    if unknown or not chosen:
        raise StfusionError(f"leave-one-patient-out: {what} {unknown or chosen} not among the sections' patients {known}.")
    return chosen


def leave_one_patient_out(
    sections: Sequence[ad.AnnData],
    test_patients: str | Sequence[str] | None = None,
    train_patients: str | Sequence[str] | None = None,
) -> Iterator[Fold]:
    """Hold out one patient at a time: train on the other patients' sections, test on each section
    of the held-out patient (one fold per test section, named ``"patient:section"``).

    ``test_patients``: only these patients are held out (default: every patient in turn);
    ``train_patients``: only these patients' sections are trained on (default: all other
    patients). On the shared her2st data, ``test_patients = ["B"]`` trains on patient C's
    sections and tests on B4. No fold ever trains on a section of its test patient (checked).
    """
    patients = [section_patient(s) for s in sections]
    known = sorted(set(patients))
    if len(known) < 2:
        raise StfusionError(f"leave-one-patient-out needs sections from at least two patients, got {known}.")
    held_out = _patients_arg(test_patients, known, "test patients") or known
    trainers = _patients_arg(train_patients, known, "training patients")
    for p in held_out:
        train = [s for s, q in zip(sections, patients, strict=True) if q != p and (trainers is None or q in trainers)]
        if not train:
            raise StfusionError(f"leave-one-patient-out: no training section left for test patient {p!r}.")
        if any(section_patient(s) == p for s in train):  # pragma: no cover - guarded by construction
            raise StfusionError(f"leave-one-patient-out: a section of test patient {p!r} is in its training set.")
        for s, q in zip(sections, patients, strict=True):
            if q == p:
                yield Fold(name=f"{p}:{_sid(s)}", train=train, test=s,
                           extra={"test_patient": p, "train_patients": sorted({section_patient(t) for t in train})})


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
