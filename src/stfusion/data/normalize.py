"""Count normalisations of the methods stfusion implements.

Every function takes a raw count matrix (spots x genes, dense or scipy sparse), never
modifies it, and returns a new dense ``float32`` array of the same shape. Spots whose
total is zero stay all zero (no NaN or inf).

What each one computes (``x`` counts of the given genes, one row per spot):

========================  ===============================================================
``stnet_normalize``       ``ln((x + 1) / T)``, ``T`` = per-spot sum of ``(x + 1)``. ST-Net's
                          reference code (``--norm``, used for every result in its paper)
                          takes ``T`` over *all* genes of the spot (``n_genes_all + total
                          counts``) and then keeps the selected genes: pass ``totals`` for
                          that, or use :func:`normalize` with ``genes=``, which does it.
``histogene_normalize``   ``"paper"``: ``ln(1 + x / t * 1e6)`` (the paper's counts per million
                          with a natural log); ``"reference"``: ``log10(1 + x / t * 1e4)``,
                          what HisToGene's code does (``scprep`` library-size normalisation
                          to 10,000 then ``log10`` with pseudocount 1), ``t`` = per-spot total
                          over the selected genes.
``log1p_normalize_total`` ``ln(1 + x / t * target_sum)`` with ``t`` the per-spot total (by
                          default over the given columns; pass ``totals`` to use the totals
                          over all genes). Equals scanpy ``normalize_total`` + ``log1p``.
========================  ===============================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
from scipy import sparse

from stfusion.errors import SchemaError

METHODS = ("stnet", "histogene", "histogene_reference", "log1p")


def _dense(counts) -> np.ndarray:
    """A float64 dense copy of ``counts`` (the input is never touched)."""
    if sparse.issparse(counts):
        return counts.toarray().astype(np.float64)
    arr = np.array(counts, dtype=np.float64, copy=True)
    if arr.ndim != 2:
        raise ValueError(f"counts must be a 2-D spots x genes matrix, got shape {arr.shape}.")
    return arr


def row_totals(counts) -> np.ndarray:
    """Per-spot sum of ``counts`` as a float64 vector."""
    return np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()


def _check_totals(totals, n: int) -> np.ndarray:
    t = np.asarray(totals, dtype=np.float64).ravel()
    if t.shape[0] != n:
        raise ValueError(f"totals has {t.shape[0]} values but counts has {n} spots; pass one total per spot.")
    if np.any(~np.isfinite(t)) or np.any(t < 0):
        raise ValueError("totals must be finite and non-negative (per-spot sums of raw counts).")
    return t


def _scale_rows(x: np.ndarray, totals: np.ndarray, factor: float) -> np.ndarray:
    """``x / totals * factor`` row-wise; rows with a zero total become zero."""
    scale = np.zeros_like(totals)
    np.divide(factor, totals, out=scale, where=totals > 0)
    return x * scale[:, None]


def stnet_normalize(counts, *, totals=None) -> np.ndarray:
    """ST-Net: ``ln((counts + 1) / T)`` with ``T`` the per-spot sum of ``(counts + 1)``.

    Parameters
    ----------
    counts
        Raw counts, spots x genes.
    totals
        Per-spot ``T``; default: sum of ``(counts + 1)`` over the given columns. ST-Net's
        reference uses ``T`` over all genes (``n_all_genes + spot total``).
    """
    x = _dense(counts)
    t = x.sum(axis=1) + x.shape[1] if totals is None else _check_totals(totals, x.shape[0])
    if np.any(t <= 0):
        raise ValueError("ST-Net totals must be positive (they include a pseudocount per gene).")
    return np.log((x + 1.0) / t[:, None]).astype(np.float32)


def histogene_normalize(counts, variant: str = "paper", *, totals=None) -> np.ndarray:
    """HisToGene normalisation.

    ``"paper"``: ``ln(1 + counts / t * 1e6)``; ``"reference"``: ``log10(1 + counts / t * 1e4)``
    (the released code). ``t`` = per-spot total over the given genes unless ``totals`` is given.
    """
    x = _dense(counts)
    t = x.sum(axis=1) if totals is None else _check_totals(totals, x.shape[0])
    if variant == "paper":
        return np.log1p(_scale_rows(x, t, 1e6)).astype(np.float32)
    if variant == "reference":
        return np.log10(1.0 + _scale_rows(x, t, 1e4)).astype(np.float32)
    raise ValueError(f"Unknown HisToGene variant {variant!r}; use 'paper' or 'reference'.")


def log1p_normalize_total(counts, target_sum: float = 1e4, *, totals=None) -> np.ndarray:
    """``ln(1 + counts / t * target_sum)``, ``t`` = per-spot total (given columns, or ``totals``).

    With ``totals`` = spot totals over all genes this is the evaluation target
    ``log1p(counts / spot total * 1e4)`` restricted to the selected columns.
    """
    if not np.isfinite(target_sum) or target_sum <= 0:
        raise ValueError(f"target_sum must be a positive number, got {target_sum!r}.")
    x = _dense(counts)
    t = x.sum(axis=1) if totals is None else _check_totals(totals, x.shape[0])
    return np.log1p(_scale_rows(x, t, float(target_sum))).astype(np.float32)


def _counts_of(adata: ad.AnnData, layer: str | None):
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise SchemaError(
            f"Layer {layer!r} not found (layers: {list(adata.layers.keys())}). "
            "Pass layer=None to use X, or the name of the layer holding raw counts."
        )
    return adata.layers[layer]


def _gene_columns(adata: ad.AnnData, genes: Sequence[str] | None) -> np.ndarray:
    if genes is None:
        return np.arange(adata.n_vars)
    genes = [str(g) for g in genes]
    idx = adata.var_names.get_indexer(genes)
    missing = [g for g, i in zip(genes, idx) if i < 0]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise SchemaError(
            f"{len(missing)} of {len(genes)} requested genes are not in the data ({shown}). "
            "Select genes with stfusion.data.genes.resolve_genes(..., missing='drop') first."
        )
    return idx


def normalize(adata: ad.AnnData, method: str, *, genes: Sequence[str] | None = None, layer: str | None = None) -> np.ndarray:
    """Normalise a section's raw counts with a method's convention; returns spots x genes float32.

    ``method``: ``"stnet"`` (``T`` over all genes of ``adata``, as ST-Net's ``--norm``),
    ``"histogene"`` (paper) and ``"histogene_reference"`` (totals over the selected genes,
    as HisToGene's code), ``"log1p"`` (``log1p(counts / total * 1e4)``, totals over all
    genes: the evaluation target). Columns follow ``genes`` (default: all genes).
    """
    counts = _counts_of(adata, layer)
    cols = _gene_columns(adata, genes)
    sub = counts[:, cols]
    if method == "stnet":
        return stnet_normalize(sub, totals=row_totals(counts) + adata.n_vars)
    if method == "histogene":
        return histogene_normalize(sub, "paper")
    if method == "histogene_reference":
        return histogene_normalize(sub, "reference")
    if method == "log1p":
        return log1p_normalize_total(sub, 1e4, totals=row_totals(counts))
    raise ValueError(f"Unknown normalisation method {method!r}; choose one of {', '.join(METHODS)}.")
