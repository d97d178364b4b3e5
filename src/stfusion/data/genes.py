"""Gene selection: which genes a model predicts.

Every selector takes one section or a sequence of sections (AnnData with raw counts in
``X``), considers only genes present in all of them, and returns gene names in a
deterministic order.

- :func:`top_mean_genes`: the n genes with the highest mean raw count, the mean taken over
  all spots of all given sections pooled (ST-Net's ``--gene_n``, whose mean expression is
  over all spots of the training data). Ordered by decreasing mean, ties by name.
- :func:`histogene_hvg`: HisToGene/Hist2ST's list. For each section, scanpy's
  ``normalize_total`` (default target) + ``log1p`` + ``highly_variable_genes``
  (``flavor="seurat"``, ``n_top_genes``) on the shared genes; the union over sections
  (``combine="intersection"`` for genes variable in every section); then only genes
  detected (count > 0) in at least ``min_spots`` spots over all sections together are kept
  (their released ``her_hvg_cut_1000.npy``: top 1,000 HVGs, cut at 1,000 spots; the papers
  describe the steps, not the code, so this is our reading of them). Sorted by name.
- :func:`resolve_genes`: the CLI convention (a text file, a ``.npy`` file, a number, or names).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from stfusion.errors import StfusionError


class GeneSelectionError(StfusionError, ValueError):
    """Requested genes are missing, or a gene specification cannot be understood."""


def as_section_list(sections) -> list[ad.AnnData]:
    """One AnnData, a sequence of them, or a mapping of id -> AnnData, as a list."""
    if isinstance(sections, ad.AnnData):
        return [sections]
    if isinstance(sections, dict):
        sections = list(sections.values())
    out = list(sections)
    if not out or not all(isinstance(s, ad.AnnData) for s in out):
        raise GeneSelectionError("Pass one AnnData or a non-empty list of AnnData sections.")
    return out


def shared_genes(sections) -> list[str]:
    """Genes present in every section, in the order of the first section."""
    secs = as_section_list(sections)
    common = set(secs[0].var_names)
    for s in secs[1:]:
        common &= set(s.var_names)
    return [g for g in secs[0].var_names if g in common]


def _column_sums(adata: ad.AnnData, genes: Sequence[str], *, detected: bool = False) -> np.ndarray:
    x = adata[:, list(genes)].X
    if detected:
        x = x > 0
    return np.asarray(x.sum(axis=0), dtype=np.float64).ravel()


def top_mean_genes(sections, n: int) -> list[str]:
    """The ``n`` genes with the highest mean raw count over all spots of ``sections`` pooled."""
    n = int(n)
    secs = as_section_list(sections)
    genes = shared_genes(secs)
    if n <= 0:
        raise GeneSelectionError(f"The number of genes must be positive, got {n}.")
    if n > len(genes):
        raise GeneSelectionError(
            f"Asked for the top {n} genes but the sections share only {len(genes)} genes. Ask for fewer."
        )
    total = sum(_column_sums(s, genes) for s in secs)
    mean = total / sum(s.n_obs for s in secs)
    order = pd.DataFrame({"gene": genes, "mean": mean}).sort_values(["mean", "gene"], ascending=[False, True])
    return order["gene"].head(n).tolist()


def _section_hvg(adata: ad.AnnData, genes: Sequence[str], n_top: int) -> np.ndarray:
    import scanpy as sc

    sub = ad.AnnData(X=adata[:, list(genes)].X.astype(np.float32))
    sub.var_names = list(genes)
    sc.pp.normalize_total(sub)
    sc.pp.log1p(sub)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sc.pp.highly_variable_genes(sub, n_top_genes=min(n_top, len(genes)), flavor="seurat")
    return sub.var["highly_variable"].to_numpy(dtype=bool)


def histogene_hvg(sections, n_top: int = 1000, min_spots: float = 1000, *, combine: str = "union") -> list[str]:
    """HisToGene's gene list: per-section top HVGs, combined, then a minimum-spots filter.

    Parameters
    ----------
    sections
        The sections (raw counts).
    n_top
        Highly variable genes per section.
    min_spots
        Keep genes with a non-zero count in at least this many spots, all sections together;
        a value below 1 is a fraction of all spots. HisToGene's 1,000 was for the full HER2+
        data (about 13,600 spots, so about 0.07); scale it to your data.
    combine
        ``"union"`` (default) or ``"intersection"`` of the per-section HVG sets.
    """
    if combine not in ("union", "intersection"):
        raise GeneSelectionError(f"combine must be 'union' or 'intersection', got {combine!r}.")
    secs = as_section_list(sections)
    genes = shared_genes(secs)
    if not genes:
        raise GeneSelectionError("The sections share no genes; check that they use the same gene naming.")
    flags = [_section_hvg(s, genes, n_top) for s in secs]
    keep = np.logical_or.reduce(flags) if combine == "union" else np.logical_and.reduce(flags)
    detected = sum(_column_sums(s, genes, detected=True) for s in secs)
    if min_spots < 0:
        raise GeneSelectionError(f"min_spots must be non-negative, got {min_spots}.")
    threshold = min_spots * sum(s.n_obs for s in secs) if 0 < min_spots < 1 else min_spots
    keep &= detected >= threshold
    return sorted(g for g, k in zip(genes, keep) if k)


def read_gene_list(path: str | Path) -> list[str]:
    """Gene names from a ``.npy`` array or a text file (one per line, ``#`` comments, blanks ignored)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise GeneSelectionError(
                f"{path} holds Python objects, which are not loaded for safety. "
                "Save the names as a plain string array: np.save(path, np.asarray(names, dtype=str))."
            ) from exc
        return [str(g).strip() for g in np.asarray(arr).ravel()]
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def _dedupe(names: Iterable[str]) -> list[str]:
    names = [str(n) for n in names]
    unique = list(dict.fromkeys(names))
    if len(unique) < len(names):
        warnings.warn(f"{len(names) - len(unique)} duplicated gene names dropped from the gene list.", stacklevel=3)
    return unique


def _names_from_spec(spec, secs: list[ad.AnnData]) -> list[str]:
    if isinstance(spec, (bool, np.bool_)):
        raise GeneSelectionError(f"Cannot read a gene list from {spec!r}.")
    if isinstance(spec, (int, np.integer)):
        return top_mean_genes(secs, int(spec))
    if isinstance(spec, (str, Path)):
        text = str(spec).strip()
        if text.isdigit():
            return top_mean_genes(secs, int(text))
        path = Path(text).expanduser()
        if path.is_file():
            return read_gene_list(path)
        if "," in text:
            return [g.strip() for g in text.split(",") if g.strip()]
        raise GeneSelectionError(
            f"Gene specification {text!r} is neither an existing file, a number nor a comma-separated list. "
            "Pass a text file (one gene per line), a .npy array of names, a number N (top N by mean "
            "expression) or the names themselves."
        )
    return [str(g) for g in np.asarray(list(spec)).ravel()]


def resolve_genes(spec, sections, *, missing: str = "raise") -> list[str]:
    """Turn a gene specification into a list of gene names present in all ``sections``.

    ``spec``: path of a text file (one gene per line, ``#`` comments and blank lines ignored),
    path of a ``.npy`` array of names, an int or digit string N (top N genes by mean in
    ``sections``), a comma-separated string, or a list of names. Genes absent from any
    section raise :class:`GeneSelectionError` unless ``missing="drop"``.
    """
    if missing not in ("raise", "drop"):
        raise GeneSelectionError(f"missing must be 'raise' or 'drop', got {missing!r}.")
    secs = as_section_list(sections)
    names = _dedupe(_names_from_spec(spec, secs))
    if not names:
        raise GeneSelectionError(f"The gene specification {spec!r} lists no genes.")
    present = set(shared_genes(secs))
    absent = [g for g in names if g not in present]
    if absent and missing == "raise":
        shown = ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else "")
        raise GeneSelectionError(
            f"{len(absent)} of {len(names)} requested genes are not present in all {len(secs)} sections "
            f"(e.g. {shown}). Check the gene naming (symbols vs Ensembl ids), or pass missing='drop' "
            "(--missing-genes drop) to keep only the genes that are present."
        )
    kept = [g for g in names if g in present]
    if not kept:
        raise GeneSelectionError(
            f"None of the {len(names)} requested genes is present in all sections (e.g. {', '.join(names[:3])}). "
            "Check the gene naming (symbols vs Ensembl ids, upper/lower case, species)."
        )
    if absent:
        logging.getLogger("stfusion").warning(
            f"{len(absent)} of {len(names)} requested genes are not present in all {len(secs)} sections and were "
            f"dropped (e.g. {', '.join(absent[:5])}); keeping {len(kept)}."
        )
    return kept
