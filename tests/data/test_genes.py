"""Gene selection: top-mean genes, HisToGene HVGs, and the CLI gene specification."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

from stfusion.data.genes import (
    GeneSelectionError,
    histogene_hvg,
    read_gene_list,
    resolve_genes,
    shared_genes,
    top_mean_genes,
)
from tests.conftest import need


def _section(x, genes) -> ad.AnnData:
    a = ad.AnnData(X=sparse.csr_matrix(np.asarray(x)))
    a.var_names = list(genes)
    return a


def test_top_mean_pools_spots_and_breaks_ties_by_name() -> None:
    # pooled means over 3 spots: A=(3+0+0)/3=1, B=(0+0+6)/3=2, C=1, D=9/3=3, E only in s1
    s1 = _section([[3, 0, 1, 0, 100], [0, 0, 2, 9, 100]], ["A", "B", "C", "D", "E"])
    s2 = _section([[6, 0, 0]], ["B", "D", "A"])
    assert shared_genes([s1, s2]) == ["A", "B", "D"]
    assert top_mean_genes([s1, s2], 3) == ["D", "B", "A"]
    s3 = _section([[1, 1, 5]], ["Z", "A", "M"])
    assert top_mean_genes(s3, 3) == ["M", "A", "Z"]  # A and Z tie: by name
    with pytest.raises(GeneSelectionError, match="share only 3 genes"):
        top_mean_genes([s1, s2], 4)


def _hvg_sections(seed: int = 0) -> list[ad.AnnData]:
    """Sections of 400 genes; g000-g009 are bimodal (much more variable than Poisson at their mean)."""
    rng = np.random.default_rng(seed)
    n_genes, names = 400, [f"g{i:03d}" for i in range(400)]
    base = np.exp(rng.normal(1.0, 0.8, size=n_genes))
    secs = []
    for _ in range(3):
        n = 300
        lam = np.tile(base, (n, 1))
        high = rng.random((n, 10)) < 0.5
        lam[:, :10] *= np.where(high, 1.9, 0.1)
        x = rng.poisson(lam)
        x[:, 10] = 0
        x[:5, 10] = 40  # g010: very variable but detected in only 5 spots per section
        secs.append(_section(x, names))
    return secs


def test_histogene_hvg_picks_variable_genes_and_applies_min_spots() -> None:
    secs = _hvg_sections()
    variable = {f"g{i:03d}" for i in range(10)}
    loose = histogene_hvg(secs, n_top=20, min_spots=1)
    assert variable | {"g010"} <= set(loose)
    assert loose == sorted(loose)
    strict = histogene_hvg(secs, n_top=20, min_spots=100)
    assert variable <= set(strict)
    assert "g010" not in strict  # detected in 15 spots only
    assert histogene_hvg(secs, n_top=20, min_spots=100 / 900) == strict  # as a fraction of 900 spots
    inter = histogene_hvg(secs, n_top=20, min_spots=1, combine="intersection")
    assert variable | {"g010"} <= set(inter) <= set(loose)
    assert len(inter) < len(loose)  # the other picks are noise, different in each section
    with pytest.raises(GeneSelectionError, match="combine"):
        histogene_hvg(secs, combine="both")


def test_read_gene_list_text_comments_and_blanks(tmp_path: Path) -> None:
    f = tmp_path / "genes.txt"
    f.write_text("# my genes\nFASN\n\n  ERBB2  # receptor\nGNAS\n")
    assert read_gene_list(f) == ["FASN", "ERBB2", "GNAS"]


def test_resolve_genes_her2st_npy(shared_data: Path, tmp_path: Path) -> None:
    npy = need(shared_data, "her2st/her_hvg_cut_1000.npy")
    hvg = [str(g) for g in np.load(npy, allow_pickle=False)]
    assert len(hvg) == 785
    names = hvg + ["EXTRA1", "EXTRA2"]
    x = np.arange(2 * len(names)).reshape(2, -1)
    sec = _section(x, names)
    assert resolve_genes(npy, sec) == hvg
    assert resolve_genes(str(npy), [sec, sec.copy()]) == hvg
    short = _section(x[:, 3:], names[3:])  # lacks the first three HVGs
    with pytest.raises(GeneSelectionError, match=r"3 of 785 requested genes .*" + hvg[0]):
        resolve_genes(npy, [sec, short])
    assert resolve_genes(npy, [sec, short], missing="drop") == hvg[3:]
    txt = tmp_path / "hvg.txt"
    txt.write_text("\n".join(hvg))
    assert resolve_genes(txt, sec) == hvg


def test_resolve_genes_numbers_lists_and_errors(tmp_path: Path) -> None:
    sec = _section([[1, 9, 4, 0], [1, 9, 4, 2]], ["a", "b", "c", "d"])
    assert resolve_genes(2, sec) == ["b", "c"]
    assert resolve_genes("3", sec) == ["b", "c", "a"]
    assert resolve_genes(["d", "a"], sec) == ["d", "a"]
    assert resolve_genes(np.array(["c", "b"]), sec) == ["c", "b"]
    assert resolve_genes("d, b", sec) == ["d", "b"]
    with pytest.warns(UserWarning, match="duplicated"):
        assert resolve_genes(["a", "b", "a"], sec) == ["a", "b"]
    with pytest.raises(GeneSelectionError, match="neither an existing file"):
        resolve_genes(str(tmp_path / "missing.txt"), sec)
    with pytest.raises(GeneSelectionError, match="must be positive"):
        resolve_genes(0, sec)
    with pytest.raises(GeneSelectionError, match="None of the 1"):
        resolve_genes(["zzz"], sec, missing="drop")
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array(["a", None], dtype=object), allow_pickle=True)
    with pytest.raises(GeneSelectionError, match="Python objects"):
        resolve_genes(obj, sec)
