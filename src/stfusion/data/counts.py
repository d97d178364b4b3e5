"""Raw-count matrices: checks and conversion to integer CSR."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from stfusion.errors import CountsError, DuplicateGenesError, EmptySectionError


def _values(x) -> np.ndarray:
    return x.data if sparse.issparse(x) else np.asarray(x).ravel()


def check_counts(x, *, what: str = "counts") -> None:
    """Raise :class:`CountsError` unless ``x`` holds finite, non-negative integers."""
    vals = _values(x)
    if vals.size == 0:
        return
    if not np.issubdtype(vals.dtype, np.number):
        raise CountsError(f"{what} are not numeric (dtype {vals.dtype}). Check the counts file's delimiter and header.")
    if np.issubdtype(vals.dtype, np.floating):
        n_nan = int(np.count_nonzero(~np.isfinite(vals)))
        if n_nan:
            raise CountsError(
                f"{what} contain {n_nan} NaN or infinite values. Raw counts are required: "
                "fill missing values with 0 or fix the source table."
            )
    n_neg = int(np.count_nonzero(vals < 0))
    if n_neg:
        raise CountsError(
            f"{what} contain {n_neg} negative values (min {vals.min()}). Raw counts are required, "
            "not normalised or scaled data; pass the raw count matrix."
        )
    if np.issubdtype(vals.dtype, np.floating):
        n_frac = int(np.count_nonzero(vals != np.round(vals)))
        if n_frac:
            raise CountsError(
                f"{what} contain {n_frac} non-integer values (e.g. {vals[vals != np.round(vals)][0]}). "
                "Raw counts are required; this looks like normalised or log-transformed data. "
                "Pass the raw count matrix (e.g. adata.raw or layers['counts'])."
            )


def to_counts_csr(x, *, what: str = "counts") -> sparse.csr_matrix:
    """Checked raw counts as an integer (int32) CSR matrix."""
    check_counts(x, what=what)
    m = sparse.csr_matrix(x)
    m.eliminate_zeros()
    if m.nnz and m.data.max() > np.iinfo(np.int32).max:
        raise CountsError(f"{what} exceed the int32 range; this is not a count matrix.")
    return m.astype(np.int32)


def check_unique_genes(names) -> None:
    """Raise :class:`DuplicateGenesError` naming the repeated genes."""
    idx = pd.Index(names)
    if idx.is_unique:
        return
    dups = idx[idx.duplicated()].unique().tolist()
    shown = ", ".join(map(str, dups[:5])) + (" ..." if len(dups) > 5 else "")
    raise DuplicateGenesError(
        f"{len(dups)} gene names occur more than once ({shown}). Make them unique first "
        "(adata.var_names_make_unique(), or sum duplicated genes), or read with gene ids."
    )


def check_not_empty(n_obs: int, n_vars: int, *, what: str = "section") -> None:
    if n_obs == 0:
        raise EmptySectionError(
            f"The {what} has no spots. Check that the spot table's ids match the counts "
            "and that spots under tissue are selected."
        )
    if n_vars == 0:
        raise EmptySectionError(f"The {what} has no genes. Check the counts file's header and delimiter.")
