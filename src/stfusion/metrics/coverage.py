"""Coverage of prediction intervals: how often the measured value lies inside them, and how wide they are.

Pure functions on arrays (spots x genes): :func:`coverage` (observed fraction of truths inside
``[lower, upper]``, per gene and over all entries), :func:`interval_width` (mean width per
gene), :func:`coverage_by_group` (per section or any spot grouping) and :func:`coverage_table`
(observed vs nominal over several levels, the table behind ``stfusion.pl.coverage``).

"Averaged over genes" (the per-gene mean) is the headline number: each gene's coverage is the
fraction of its spots covered; a conformal interval per gene guarantees that fraction in
expectation for every gene, so the mean over genes should be at nominal, and the spread over
genes shows how far single genes stray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from stfusion.metrics.core import _as_2d, interval_coverage

LEVELS = (0.5, 0.8, 0.9, 0.95)


def coverage(truth, lower, upper) -> tuple[np.ndarray, float]:
    """``(per_gene, overall)``: fraction of finite truths inside ``[lower, upper]`` per gene (column)
    and over all entries. Entries with a NaN among the three are ignored; infinite ends count
    as unbounded."""
    t, lo, hi = _as_2d(truth), _as_2d(lower), _as_2d(upper)
    lo = np.where(np.isneginf(lo), -np.finfo(float).max, lo)
    hi = np.where(np.isposinf(hi), np.finfo(float).max, hi)
    return interval_coverage(t, lo, hi)


def interval_width(lower, upper) -> np.ndarray:
    """Mean width ``upper - lower`` per gene over spots with both ends non-NaN (``inf`` when an end is unbounded)."""
    lo, hi = _as_2d(lower), _as_2d(upper)
    if lo.shape != hi.shape:
        raise ValueError(f"shapes differ: lower {lo.shape}, upper {hi.shape}")
    w = hi - lo
    if np.any(w[np.isfinite(w)] < 0):
        raise ValueError("lower > upper for some entries: not an interval")
    ok = ~np.isnan(w)
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(ok, w, 0.0).sum(axis=0) / np.maximum(n, 1), np.nan)


def coverage_by_group(truth, lower, upper, groups: Sequence) -> pd.DataFrame:
    """Per group of spots (e.g. their section): ``group``, ``n_spots``, ``coverage`` (mean over genes
    of the per-gene coverage), ``coverage_pooled`` (over all entries), ``width`` (mean over genes)."""
    t, lo, hi = _as_2d(truth), _as_2d(lower), _as_2d(upper)
    groups = np.asarray(groups)
    if len(groups) != t.shape[0]:
        raise ValueError(f"{len(groups)} group labels for {t.shape[0]} spots")
    rows = []
    for g in pd.unique(groups):
        m = groups == g
        per_gene, pooled = coverage(t[m], lo[m], hi[m])
        rows.append({"group": g, "n_spots": int(m.sum()), "coverage": float(np.nanmean(per_gene)) if np.isfinite(per_gene).any()
                     else np.nan, "coverage_pooled": pooled, "width": float(np.nanmean(interval_width(lo[m], hi[m])))})
    return pd.DataFrame(rows)


def coverage_table(truth, intervals: Mapping[float, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """Observed vs nominal coverage over levels: ``intervals`` maps a nominal coverage (e.g. 0.9) to
    ``(lower, upper)``. Columns: ``nominal``, ``observed`` (mean over genes), ``observed_pooled``,
    ``q10``/``q90`` (10th / 90th percentile over genes), ``width`` (mean over genes),
    ``shortfall`` (nominal - observed: positive = over-confident)."""
    rows = []
    for nominal in sorted(intervals):
        lo, hi = intervals[nominal]
        per_gene, pooled = coverage(truth, lo, hi)
        fin = per_gene[np.isfinite(per_gene)]
        observed = float(fin.mean()) if fin.size else np.nan
        rows.append({"nominal": float(nominal), "observed": observed, "observed_pooled": pooled,
                     "q10": float(np.quantile(fin, 0.1)) if fin.size else np.nan,
                     "q90": float(np.quantile(fin, 0.9)) if fin.size else np.nan,
                     "width": float(np.nanmean(interval_width(lo, hi))), "shortfall": float(nominal) - observed})
    return pd.DataFrame(rows)


def binomial_band(nominal: float, n: int, z: float = 2.0) -> float:
    """``z`` binomial standard errors of an observed coverage of ``n`` independent entries at ``nominal``:
    the sampling error against which an observed coverage is judged."""
    return float(z * np.sqrt(nominal * (1.0 - nominal) / max(int(n), 1)))
