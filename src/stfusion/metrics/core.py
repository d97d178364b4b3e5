"""Array metrics for predicted vs measured spatial expression (spots/cells x genes).

The per-gene metrics follow the imputation benchmark of Li et al. 2022 (Nat Methods 19:662,
"Benchmarking spatial and single-cell transcriptomics integration methods"): PCC, SSIM,
RMSE on z-scored genes, Jensen-Shannon divergence and the accuracy score (AS) that ranks
methods over the four. The per-gene AUROC of extreme spots and the "consistently positive
correlation across patients" test follow ST-Net (He et al. 2020, Nat Biomed Eng 4:827).

Conventions: inputs are arrays of shape (n_spots, n_genes) (a 1-D array is one gene; sparse
matrices and DataFrames are accepted); results are float arrays with one value per gene.
NaN pairs are ignored per gene and a gene with fewer than 2 valid pairs gives NaN. Nothing
loops over genes in Python.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse
from scipy import stats
from scipy.special import rel_entr
from statsmodels.stats.multitest import multipletests

AS_METRICS = ("PCC", "SSIM", "RMSE", "JS")
AS_PLACEHOLDERS = {"PCC": -2.0, "SSIM": -2.0, "RMSE": 10.0, "JS": 10.0}
AS_HIGHER_IS_BETTER = {"PCC": True, "SSIM": True, "RMSE": False, "JS": False}


# --------------------------------------------------------------------------- helpers
def _as_2d(a) -> np.ndarray:
    if sparse.issparse(a):
        a = a.toarray()
    arr = np.asarray(a, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"expected a (spots x genes) array, got shape {arr.shape}")
    return arr


def _pair(truth, pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense float copies with invalid pairs zeroed, and the mask of valid pairs."""
    t, p = _as_2d(truth), _as_2d(pred)
    if t.shape != p.shape:
        raise ValueError(f"truth and pred differ in shape: {t.shape} vs {p.shape}; align them first")
    mask = np.isfinite(t) & np.isfinite(p)
    return np.where(mask, t, 0.0), np.where(mask, p, 0.0), mask


def _mmean(a: np.ndarray, mask: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mask, a, 0.0).sum(axis=0) / n


def _is_constant(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """True per gene when the valid entries are all equal (exactly, not up to rounding)."""
    lo = np.where(mask, a, np.inf).min(axis=0)
    hi = np.where(mask, a, -np.inf).max(axis=0)
    return lo == hi


def _moments(t, p, mask, n):
    """Masked means, population variances and covariance per gene."""
    mt, mp = _mmean(t, mask, n), _mmean(p, mask, n)
    dt, dp = np.where(mask, t - mt, 0.0), np.where(mask, p - mp, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        vt, vp, cov = (dt * dt).sum(0) / n, (dp * dp).sum(0) / n, (dt * dp).sum(0) / n
    return mt, mp, vt, vp, cov


def _pearson_masked(t, p, mask) -> np.ndarray:
    n = mask.sum(axis=0)
    _, _, vt, vp, cov = _moments(t, p, mask, n)
    bad = (n < 2) | _is_constant(t, mask) | _is_constant(p, mask)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(vt * vp)
    return np.where(bad, np.nan, np.clip(r, -1.0, 1.0))


# --------------------------------------------------------------------------- correlations
def pearson(truth, pred) -> np.ndarray:
    """Pearson correlation across spots, one value per gene (NaN for constant genes)."""
    return _pearson_masked(*_pair(truth, pred))


def _ranks(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Average ranks per column among the valid entries (NaN elsewhere)."""
    return stats.rankdata(np.where(mask, a, np.nan), axis=0, nan_policy="omit")


def spearman(truth, pred) -> np.ndarray:
    """Spearman correlation across spots (Pearson of average ranks of the valid pairs)."""
    t, p, mask = _pair(truth, pred)
    return _pearson_masked(_ranks(t, mask), _ranks(p, mask), mask)


def pearson_pvalues(truth, pred) -> np.ndarray:
    """One-sided p-value of a positive Pearson correlation per gene (t test, n - 2 df).

    Equals ``scipy.stats.pearsonr(x, y, alternative="greater").pvalue``; NaN when the
    correlation is undefined or fewer than 3 valid pairs.
    """
    t, p, mask = _pair(truth, pred)
    r = _pearson_masked(t, p, mask)
    df = mask.sum(axis=0) - 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        tstat = r * np.sqrt(df / ((1.0 - r) * (1.0 + r)))
    pv = stats.t.sf(tstat, np.where(df > 0, df, np.nan))
    return np.where(df > 0, pv, np.nan)


def significant_genes(pvalues, alpha: float = 0.05, method: str = "fdr_bh") -> int:
    """Number of genes significant after multiple-testing correction (NaN p-values ignored)."""
    pv = np.asarray(pvalues, dtype=float).ravel()
    pv = pv[np.isfinite(pv)]
    if pv.size == 0:
        return 0
    reject = multipletests(pv, alpha=alpha, method=method)[0]
    return int(reject.sum())


# --------------------------------------------------------------------------- errors
def _zscore(a: np.ndarray, mask: np.ndarray, n: np.ndarray) -> np.ndarray:
    m = _mmean(a, mask, n)
    d = np.where(mask, a - m, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt((d * d).sum(0) / n)
    const = _is_constant(a, mask)
    return np.where(const, 0.0, d / np.where(const, 1.0, sd))


def rmse(truth, pred, zscore: bool = False) -> np.ndarray:
    """Root mean squared error across spots, per gene.

    With ``zscore=True`` each gene is z-scored (population sd) in both arrays first, as in
    Li et al. 2022. A gene that is constant in an array gets z-scores 0 there (centred, not
    scaled), so a constant prediction of a varying gene scores 1 and two constant vectors
    score 0; Li et al.'s code gives NaN there, which would silently drop such genes from a
    method's mean.
    """
    t, p, mask = _pair(truth, pred)
    n = mask.sum(axis=0)
    if zscore:
        t, p = _zscore(t, mask, n), _zscore(p, mask, n)
    d = np.where(mask, t - p, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.sqrt((d * d).sum(0) / n)
    return np.where(n < 2, np.nan, out)


def ssim(truth, pred) -> np.ndarray:
    """Li et al. 2022's global SSIM of each gene's vector over spots.

    Each gene is divided by its maximum in each array (a maximum <= 0 leaves it unscaled);
    then with means, population sds and covariance over spots, C1 = 0.01**2, C2 = 0.03**2,
    C3 = C2 / 2: SSIM = l * c * s, l = (2 mx my + C1) / (mx² + my² + C1),
    c = (2 sx sy + C2) / (sx² + sy² + C2), s = (sxy + C3) / (sx sy + C3).
    """
    t, p, mask = _pair(truth, pred)
    n = mask.sum(axis=0)
    t, p = _scale_by_max(t, mask), _scale_by_max(p, mask)
    mt, mp, vt, vp, cov = _moments(t, p, mask, n)
    c1, c2 = 0.01**2, 0.03**2
    c3 = c2 / 2.0
    st, sp = np.sqrt(vt), np.sqrt(vp)
    lum = (2 * mt * mp + c1) / (mt**2 + mp**2 + c1)
    con = (2 * st * sp + c2) / (vt + vp + c2)
    struct = (cov + c3) / (st * sp + c3)
    return np.where(n < 2, np.nan, lum * con * struct)


def _scale_by_max(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mx = np.where(mask, a, -np.inf).max(axis=0)
    return a / np.where(mx > 0, mx, 1.0)


def js_divergence(truth, pred) -> np.ndarray:
    """Jensen-Shannon divergence (natural log) of each gene's distribution over spots.

    Negatives are clipped to 0 and each vector is normalised to sum 1; a gene whose vector
    sums to 0 in either array gives NaN. Equals ``scipy.spatial.distance.jensenshannon(p, q)**2``.
    """
    t, p, mask = _pair(truth, pred)
    t, p = np.clip(t, 0.0, None), np.clip(p, 0.0, None)
    st, sp = t.sum(axis=0), p.sum(axis=0)
    ok = (st > 0) & (sp > 0) & (mask.sum(axis=0) >= 2)
    pt, pp = t / np.where(ok, st, 1.0), p / np.where(ok, sp, 1.0)
    m = (pt + pp) / 2.0
    js = 0.5 * rel_entr(pt, m).sum(axis=0) + 0.5 * rel_entr(pp, m).sum(axis=0)
    return np.where(ok, js, np.nan)


# --------------------------------------------------------------------------- summaries
def accuracy_score(table: pd.DataFrame) -> pd.Series:
    """Li et al. 2022's accuracy score (AS) of methods from their mean PCC, SSIM, RMSE, JS.

    ``table``: methods x columns "PCC", "SSIM", "RMSE", "JS". Missing values (a method without
    output) get the placeholders PCC -2, SSIM -2, RMSE 10, JS 10. Per metric the N methods are
    ranked (best = N, worst = 1, ties averaged) and divided by N; AS is the mean of the four.
    """
    missing = [c for c in AS_METRICS if c not in table.columns]
    if missing:
        raise ValueError(f"accuracy_score needs columns {list(AS_METRICS)}; missing {missing}")
    vals = table.loc[:, list(AS_METRICS)].astype(float).fillna(AS_PLACEHOLDERS)
    ranks = pd.DataFrame(
        {c: vals[c].rank(method="average", ascending=AS_HIGHER_IS_BETTER[c]) for c in AS_METRICS}
    )
    return (ranks / len(vals)).mean(axis=1).rename("AS")


def _masked_quantiles(a: np.ndarray, mask: np.ndarray, qs) -> list[np.ndarray]:
    """Per-column quantiles of the valid entries (numpy's default linear method); NaN if none."""
    srt = np.sort(np.where(mask, a, np.inf), axis=0)
    n = mask.sum(axis=0)
    out = []
    for q in qs:
        pos = q * np.maximum(n - 1, 0)
        i0, i1 = np.floor(pos).astype(int), np.ceil(pos).astype(int)
        v0 = np.take_along_axis(srt, i0[None, :], axis=0)[0]
        v1 = np.take_along_axis(srt, i1[None, :], axis=0)[0]
        with np.errstate(invalid="ignore"):
            val = v0 + (pos - i0) * (v1 - v0)
        out.append(np.where(n > 0, np.where(i0 == i1, v0, val), np.nan))
    return out


def auroc_extremes(truth, pred, q: float = 0.25) -> np.ndarray:
    """ST-Net's per-gene AUROC: how well ``pred`` ranks the top-q spots above the bottom-q spots.

    Positives are spots with truth >= the gene's (1 - q) quantile, negatives those with
    truth <= its q quantile (over valid pairs); NaN when the two sets touch (e.g. a gene
    with mostly zeros) or one is empty. Computed as the Mann-Whitney U of the ranks of pred.
    """
    if not 0 < q < 0.5:
        raise ValueError(f"q must be in (0, 0.5), got {q}")
    t, p, mask = _pair(truth, pred)
    lo, hi = _masked_quantiles(t, mask, (q, 1 - q))
    pos, neg = mask & (t >= hi), mask & (t <= lo)
    n_pos, n_neg = pos.sum(axis=0), neg.sum(axis=0)
    ranks = _ranks(p, pos | neg)
    u = np.where(pos, ranks, 0.0).sum(axis=0) - n_pos * (n_pos + 1) / 2.0
    ok = (lo < hi) & (n_pos > 0) & (n_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, u / (n_pos * n_neg), np.nan)


def consistent_positive(r) -> pd.DataFrame:
    """Per gene: in how many patients is r > 0, and is that more than chance?

    ``r``: genes x patients (DataFrame or array; NaN = patient not scored, excluded from n).
    p_value = P[X >= k], X ~ Binomial(n, 0.5) (``scipy.stats.binomtest(k, n, alternative=
    "greater")``), adjusted by Holm and Benjamini-Hochberg over the genes with n > 0.
    """
    df = r if isinstance(r, pd.DataFrame) else pd.DataFrame(np.asarray(r, dtype=float))
    vals = df.to_numpy(dtype=float)
    n = np.isfinite(vals).sum(axis=1)
    k = (np.nan_to_num(vals, nan=0.0) > 0).sum(axis=1)
    pv = np.where(n > 0, stats.binom.sf(k - 1, n, 0.5), np.nan)
    out = pd.DataFrame({"n_patients": n, "n_positive": k, "p_value": pv}, index=df.index)
    out["p_holm"], out["p_bh"] = np.nan, np.nan
    ok = np.isfinite(pv)
    if ok.any():
        out.loc[ok, "p_holm"] = multipletests(pv[ok], method="holm")[1]
        out.loc[ok, "p_bh"] = multipletests(pv[ok], method="fdr_bh")[1]
    return out


def topk_mean(values, k: int = 50) -> float:
    """Mean of the k largest non-NaN values (of all of them when fewer; NaN when none)."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if v.size == 0:
        return float("nan")
    return float(np.sort(v)[::-1][:k].mean())


def interval_coverage(truth, lower, upper) -> tuple[np.ndarray, float]:
    """Fraction of truth values inside [lower, upper]: per gene, and over all valid entries.

    Returns ``(per_gene, overall)``; entries with any NaN among the three are ignored.
    """
    t, lo, hi = _as_2d(truth), _as_2d(lower), _as_2d(upper)
    if not t.shape == lo.shape == hi.shape:
        raise ValueError(f"shapes differ: truth {t.shape}, lower {lo.shape}, upper {hi.shape}")
    mask = np.isfinite(t) & np.isfinite(lo) & np.isfinite(hi)
    with np.errstate(invalid="ignore"):
        inside = mask & (t >= lo) & (t <= hi)
    n = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_gene = np.where(n > 0, inside.sum(axis=0) / n, np.nan)
    total = mask.sum()
    overall = float(inside.sum() / total) if total else float("nan")
    return per_gene, overall
