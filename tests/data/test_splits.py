"""Splits: leave-one-out by section and patient, spot hold-out, gene folds."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from sklearn.model_selection import KFold

from stfusion.data.splits import (
    gene_kfold,
    leave_one_out,
    section_id,
    split_by_patient,
    split_by_section,
    spot_holdout,
)
from stfusion.errors import SchemaError


def _sec(sid: str, patient: str | None = None, n: int = 3) -> ad.AnnData:
    a = ad.AnnData(X=np.zeros((n, 2), dtype=np.float32))
    a.uns["stfusion"] = {"section_id": sid} | ({"patient": patient} if patient else {})
    return a


def test_leave_one_out_generic() -> None:
    assert leave_one_out(["a", "b", "c"]) == [(["b", "c"], "a"), (["a", "c"], "b"), (["a", "b"], "c")]
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out([1])


def test_split_by_section_from_anndata_ids_and_mapping() -> None:
    secs = [_sec("C2"), _sec("B4"), _sec("C3")]
    folds = split_by_section(secs)
    assert [t for _, t in folds] == ["C2", "B4", "C3"]
    assert folds[1] == (["C2", "C3"], "B4")
    assert split_by_section(["x", "y"]) == [(["y"], "x"), (["x"], "y")]
    assert split_by_section({"k1": secs[0], "k2": secs[1]})[0] == (["k2"], "k1")
    assert section_id(secs[0]) == "C2"
    with pytest.raises(SchemaError, match="not unique"):
        split_by_section([_sec("A"), _sec("A")])


def test_split_by_patient_groups_sections() -> None:
    secs = [_sec("C2", "C"), _sec("B4", "B"), _sec("C3", "C"), _sec("A1", "A")]
    folds = split_by_patient(secs)
    assert folds == [
        (["C2", "B4", "C3"], ["A1"]),
        (["C2", "C3", "A1"], ["B4"]),
        (["B4", "A1"], ["C2", "C3"]),
    ]
    for train, test in folds:
        assert set(train).isdisjoint(test) and set(train) | set(test) == {"C2", "B4", "C3", "A1"}


def test_split_by_patient_errors() -> None:
    with pytest.raises(SchemaError, match=r"'B4' has no patient.*uns\['stfusion'\]\['patient'\]"):
        split_by_patient([_sec("C2", "C"), _sec("B4")])
    with pytest.raises(ValueError, match="at least 2 patients"):
        split_by_patient([_sec("C2", "C"), _sec("C3", "C")])


@pytest.mark.parametrize(("n", "fraction"), [(100, 0.2), (7, 0.5), (283, 0.1), (10, 0.0), (10, 1.0), (5, 0.25)])
def test_spot_holdout_exact_count(n: int, fraction: float) -> None:
    mask = spot_holdout(_sec("s", n=n), fraction, seed=3)
    assert mask.dtype == bool and mask.shape == (n,)
    assert int(mask.sum()) == round(fraction * n)


def test_spot_holdout_seeded() -> None:
    a = spot_holdout(500, 0.3, seed=1)
    assert np.array_equal(a, spot_holdout(500, 0.3, seed=1))
    assert not np.array_equal(a, spot_holdout(500, 0.3, seed=2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        spot_holdout(10, 1.5)


def test_gene_kfold_properties() -> None:
    genes = [f"g{i}" for i in range(23)]
    folds = gene_kfold(genes, k=5, seed=0)
    assert len(folds) == 5
    flat = [g for f in folds for g in f]
    assert sorted(flat) == sorted(genes) and len(flat) == len(set(flat))
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    assert folds == gene_kfold(genes, k=5, seed=0)
    assert folds != gene_kfold(genes, k=5, seed=1)
    expected = [[genes[i] for i in sorted(t)] for _, t in KFold(5, shuffle=True, random_state=0).split(genes)]
    assert folds == expected
    assert all(isinstance(g, str) for g in flat)


def test_gene_kfold_errors() -> None:
    with pytest.raises(ValueError, match="between 2 and"):
        gene_kfold(["a", "b"], k=3)
    with pytest.raises(ValueError, match="unique"):
        gene_kfold(["a", "a", "b"], k=2)
