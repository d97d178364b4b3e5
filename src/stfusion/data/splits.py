"""Train/test splits: by section, by patient, held-out spots and gene folds.

All splits are deterministic: leave-one-out splits follow the input order (patients sorted
by name), and the random ones depend only on ``seed``. They return plain Python lists
(of section ids or gene names) or numpy boolean masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import anndata as ad
import numpy as np

from stfusion import _constants as K
from stfusion.data.section import library_id, section_meta
from stfusion.errors import SchemaError

T = TypeVar("T")


def leave_one_out(items: Sequence[T]) -> list[tuple[list[T], T]]:
    """``[(all items but one, that item), ...]`` in input order."""
    items = list(items)
    if len(items) < 2:
        raise ValueError(f"Leave-one-out needs at least 2 items, got {len(items)}.")
    return [(items[:i] + items[i + 1 :], item) for i, item in enumerate(items)]


def section_id(adata: ad.AnnData) -> str:
    """``uns["stfusion"]["section_id"]``, else the library id."""
    sid = section_meta(adata).get(K.SECTION_ID)
    return str(sid) if sid is not None else library_id(adata)


def _id_map(sections) -> dict[str, Any]:
    """Section id -> section (or id -> id when plain ids are given)."""
    if isinstance(sections, Mapping):
        pairs = [(str(k), v) for k, v in sections.items()]
    else:
        pairs = [(s if isinstance(s, str) else section_id(s), s) for s in sections]
    ids = [p[0] for p in pairs]
    if len(set(ids)) != len(ids):
        dups = sorted({i for i in ids if ids.count(i) > 1})
        raise SchemaError(
            f"Section ids are not unique ({', '.join(dups)}). Give each section its own "
            f"uns['{K.STFUSION}']['{K.SECTION_ID}'], or pass a dict of id -> section."
        )
    return dict(pairs)


def split_by_section(sections) -> list[tuple[list[str], str]]:
    """Leave-one-section-out folds ``(train_ids, test_id)``, in input order.

    ``sections``: AnnData sections, section ids, or a mapping id -> section.
    """
    return leave_one_out(list(_id_map(sections)))


def patient_of(adata: ad.AnnData) -> str:
    """``uns["stfusion"]["patient"]``; :class:`SchemaError` when it is not set."""
    patient = section_meta(adata).get(K.PATIENT)
    if patient is None or str(patient) == "":
        raise SchemaError(
            f"Section {section_id(adata)!r} has no patient (uns['{K.STFUSION}']['{K.PATIENT}']). "
            f"Set it, e.g. adata.uns['{K.STFUSION}']['{K.PATIENT}'] = 'P1', or split by section instead."
        )
    return str(patient)


def split_by_patient(sections) -> list[tuple[list[str], list[str]]]:
    """Leave-one-patient-out folds ``(train_ids, test_ids)``, patients in sorted order.

    ``sections``: AnnData sections, or a mapping id -> section; each needs a patient.
    """
    by_id = _id_map(sections)
    patients = {sid: patient_of(s) for sid, s in by_id.items()}
    names = sorted(set(patients.values()))
    if len(names) < 2:
        raise ValueError(
            f"Leave-one-patient-out needs sections from at least 2 patients, got {names}. Split by section instead."
        )
    folds = []
    for p in names:
        test = [sid for sid in by_id if patients[sid] == p]
        train = [sid for sid in by_id if patients[sid] != p]
        folds.append((train, test))
    return folds


def spot_holdout(adata: ad.AnnData | int, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask over spots, True for held-out ones; exactly ``round(fraction * n)`` are True.

    ``round`` is Python's (half to even). ``adata`` may also be the number of spots.
    """
    n = int(adata) if isinstance(adata, (int, np.integer)) else int(adata.n_obs)
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}.")
    n_out = int(round(float(fraction) * n))
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, size=n_out, replace=False)] = True
    return mask


def gene_kfold(genes: Sequence[str], k: int = 5, seed: int = 0) -> list[list[str]]:
    """``k`` disjoint folds of held-out genes covering all genes; sizes differ by at most 1.

    Uses scikit-learn's ``KFold(n_splits=k, shuffle=True, random_state=seed)``; each fold
    lists its genes in input order.
    """
    from sklearn.model_selection import KFold

    genes = [str(g) for g in genes]
    if len(set(genes)) != len(genes):
        raise ValueError("Gene names must be unique to split them into folds.")
    k = int(k)
    if k < 2 or k > len(genes):
        raise ValueError(f"k must be between 2 and the number of genes ({len(genes)}), got {k}.")
    kf = KFold(n_splits=k, shuffle=True, random_state=seed)
    return [[genes[i] for i in sorted(test)] for _, test in kf.split(np.arange(len(genes)))]
