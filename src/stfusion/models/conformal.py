"""Split-conformal prediction intervals for any point predictor (pure numpy + AnnData).

A model fitted on some spots predicts other spots it never trained on (the *calibration*
set); the absolute residuals there, per gene, rank the errors to expect. For a nominal
coverage ``c`` the half-width of gene g's interval is the ``k``-th smallest calibration score,
``k = ceil((n + 1) c)`` of ``n`` scores (the finite-sample rank of split conformal prediction;
Vovk et al. 2005, Lei et al. 2018). When the calibration set and a new spot are exchangeable,
the new spot's value lies in ``[pred - q, pred + q]`` with probability at least ``c`` (and at
most ``c + 1/(n + 1)``). On a new patient or lab they are not exchangeable: the guarantee does
not hold there and the observed coverage must be measured (:mod:`stfusion.metrics.coverage`).

Scores are ``|y - pred|`` in the space of the prediction's ``X`` (its ``expression_space``);
with ``normalised=True`` (a model that predicts an SD per spot and gene, such as XFuse or the
GP baseline) they are ``|y - pred| / (sd + floor_g)``, so intervals widen where the model is
unsure (``floor_g``: a tenth of the gene's median calibration SD, against division by ~0).

All sorted scores are kept (spots x genes, float32), so any coverage can be served after the
fact; :meth:`Calibration.arrays` / :meth:`Calibration.from_arrays` store them as plain arrays
(``np.savez``, no pickle) and :meth:`Calibration.summary` is what the model card records.

Interval ends are in the space of ``X``. In a non-negative space (the log1p target, ST-Net's
is not) a lower end below 0 is raised to ``min(0, pred)``: no truth lies below 0, so coverage
is unchanged, the width is honest, and the interval still contains the prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import anndata as ad
import numpy as np
from scipy import sparse

from stfusion import _constants as K
from stfusion.errors import StfusionError

CALIBRATION_FILE = "calibration.npz"
KINDS = ("spots", "sections", "patient", "auto")  # what Model.fit(..., calibration=...) holds out
NONNEGATIVE_SPACES = ("log1p_cp10k", "counts")
STNET_SPACE = "stnet_log_norm"
LEVELS = (0.5, 0.8, 0.9, 0.95)  # nominal coverages the benchmark reports


class CalibrationError(StfusionError, ValueError):
    """Intervals were asked for but cannot be computed (no calibration, other genes or space)."""


# --------------------------------------------------------------------------- ranks and quantiles
def conformal_rank(n: int, coverage: float) -> int:
    """The finite-sample rank ``ceil((n + 1) * coverage)`` (1-based) of the calibration score that
    bounds a new score with probability >= ``coverage``; larger than ``n`` when ``n`` is too small
    (then the interval is unbounded)."""
    check_coverage(coverage)
    # a relative tolerance so that e.g. (19 + 1) * 0.95 = 19.000000000000004 gives 19, not 20
    return int(math.ceil((n + 1) * float(coverage) - 1e-9))


def check_coverage(coverage: float) -> float:
    c = float(coverage)
    if not 0.0 < c < 1.0:
        raise CalibrationError(f"coverage must lie strictly between 0 and 1 (e.g. 0.9), got {coverage!r}.")
    return c


def conformal_quantile(sorted_scores: np.ndarray, n_valid: np.ndarray, coverage: float) -> np.ndarray:
    """Per-gene score quantile: the ``conformal_rank(n_g, coverage)``-th smallest of each column of
    ``sorted_scores`` (ascending, NaN after the ``n_g`` valid ones); ``inf`` where that rank exceeds ``n_g``."""
    n_valid = np.asarray(n_valid, dtype=int)
    out = np.full(sorted_scores.shape[1], np.inf)
    for g, n in enumerate(n_valid):
        k = conformal_rank(int(n), coverage)
        if 1 <= k <= n:
            out[g] = sorted_scores[k - 1, g]
    return out


# --------------------------------------------------------------------------- truth in a prediction's space
def truth_in_space(section: ad.AnnData, genes: Sequence[str], space: str) -> np.ndarray:
    """A section's measured expression of ``genes`` in an ``expression_space`` of predictions:
    ``log1p_cp10k`` (the strict target, totals over all genes), ``counts`` (raw) or ST-Net's
    ``stnet_log_norm``. Dense float64 (spots x genes)."""
    from stfusion.data.normalize import normalize

    have = set(section.var_names)
    missing = [g for g in genes if g not in have]
    if missing:
        raise CalibrationError(f"{len(missing)} of {len(genes)} genes are not in the section (e.g. {missing[:3]}).")
    if space == "log1p_cp10k":
        return normalize(section, "log1p", genes=genes).astype(np.float64)
    if space == STNET_SPACE:
        return normalize(section, "stnet", genes=genes).astype(np.float64)
    if space == "counts":
        x = section[:, list(genes)].X
        return (x.toarray() if sparse.issparse(x) else np.asarray(x)).astype(np.float64)
    raise CalibrationError(f"no measured truth is defined for expression space {space!r}; "
                           f"intervals can be calibrated in {', '.join([*NONNEGATIVE_SPACES, STNET_SPACE])}.")


def _dense(x) -> np.ndarray:
    return (x.toarray() if sparse.issparse(x) else np.asarray(x)).astype(np.float64)


# --------------------------------------------------------------------------- the calibration
@dataclass
class Calibration:
    """Sorted calibration scores per gene and what they were computed on.

    ``scores``: (n, genes) ascending per column, NaN padded below each gene's ``n_valid`` scores;
    ``space``: the expression space of the predictions they were measured in; ``normalised``:
    scores divided by the prediction's SD plus ``sd_floor`` (per gene); ``kind``: how the
    calibration data were held out (``spots``, ``sections``, ``patient``, or the user's label);
    ``sources``: the calibration sections' ids.
    """

    kind: str
    genes: list[str]
    scores: np.ndarray
    n_valid: np.ndarray
    space: str
    normalised: bool = False
    sd_floor: np.ndarray | None = None
    sources: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- building
    @classmethod
    def from_residuals(cls, truth: np.ndarray, pred: np.ndarray, genes: Sequence[str], *, kind: str, space: str,
                       sd: np.ndarray | None = None, sources: Sequence[str] = (), **extra: Any) -> Calibration:
        """From measured values and predictions (spots x genes) of held-out spots; ``sd`` (same shape)
        makes the scores normalised. Entries with a NaN anywhere are left out."""
        truth, pred = np.asarray(truth, np.float64), np.asarray(pred, np.float64)
        if truth.shape != pred.shape or truth.ndim != 2 or truth.shape[1] != len(genes):
            raise CalibrationError(f"truth {truth.shape} and predictions {pred.shape} must both be spots x {len(genes)} genes.")
        resid = np.abs(truth - pred)
        floor = None
        if sd is not None:
            sd = np.asarray(sd, np.float64)
            if sd.shape != pred.shape:
                raise CalibrationError(f"sd has shape {sd.shape}, predictions {pred.shape}.")
            floor = sd_floor(sd)
            resid = resid / (np.clip(sd, 0.0, None) + floor)
        resid[~np.isfinite(resid)] = np.nan
        scores = np.sort(resid, axis=0)  # NaN sort last
        n_valid = np.isfinite(resid).sum(axis=0)
        if truth.shape[0] == 0 or not n_valid.any():
            raise CalibrationError("no calibration spots with finite values: calibrate on held-out sections with measured counts.")
        return cls(kind=str(kind), genes=list(genes), scores=scores.astype(np.float32), n_valid=n_valid.astype(np.int64),
                   space=str(space), normalised=sd is not None, sd_floor=None if floor is None else floor.astype(np.float32),
                   sources=[str(s) for s in sources], extra=dict(extra))

    # ---------------------------------------------------------------- serving
    @property
    def n(self) -> int:
        return int(self.n_valid.min()) if len(self.n_valid) else 0

    def half_width(self, coverage: float, genes: Sequence[str] | None = None) -> np.ndarray:
        """Per-gene score quantile at ``coverage`` (for ``genes``, default all): the interval's half
        width, in units of the prediction's SD when ``normalised``."""
        q = conformal_quantile(self.scores, self.n_valid, coverage)
        if genes is None:
            return q
        return q[self._columns(genes)]

    def _columns(self, genes: Sequence[str]) -> np.ndarray:
        pos = {g: i for i, g in enumerate(self.genes)}
        missing = [g for g in genes if g not in pos]
        if missing:
            raise CalibrationError(f"{len(missing)} genes were not calibrated (e.g. {missing[:3]}); "
                                   f"the calibration covers {len(self.genes)} genes.")
        return np.asarray([pos[g] for g in genes], dtype=int)

    def intervals(self, pred: np.ndarray, genes: Sequence[str], coverage: float, sd: np.ndarray | None = None,
                  nonnegative: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` around point predictions ``pred`` (spots x ``genes``)."""
        pred = np.asarray(pred, np.float64)
        q = self.half_width(coverage, genes)[None, :]
        if self.normalised:
            if sd is None:
                raise CalibrationError("this calibration scales intervals by the prediction's SD, but the prediction "
                                       f"has no layers['{K.LAYER_PRED_SD}'].")
            half = q * (np.clip(np.asarray(sd, np.float64), 0.0, None) + self.sd_floor[self._columns(genes)][None, :])
        else:
            half = np.broadcast_to(q, pred.shape)
        with np.errstate(invalid="ignore"):
            lower, upper = pred - half, pred + half
        if nonnegative:
            lower = np.maximum(lower, np.minimum(pred, 0.0))
        return lower, upper

    # ---------------------------------------------------------------- persistence
    def summary(self) -> dict[str, Any]:
        """What the model card records (no arrays)."""
        return {"kind": self.kind, "method": "split conformal, per gene" + (", SD-normalised" if self.normalised else ""),
                "space": self.space, "n_spots": int(self.scores.shape[0]), "min_spots_per_gene": self.n,
                "sections": list(self.sources), "n_genes": len(self.genes), **self.extra}

    def arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for ``np.savez`` (strings as unicode arrays: loads with ``allow_pickle=False``)."""
        out = {"scores": self.scores, "n_valid": self.n_valid, "genes": np.asarray(self.genes, dtype=str),
               "kind": np.asarray(self.kind), "space": np.asarray(self.space), "normalised": np.asarray(self.normalised),
               "sources": np.asarray(self.sources, dtype=str)}
        if self.sd_floor is not None:
            out["sd_floor"] = self.sd_floor
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], extra: dict[str, Any] | None = None) -> Calibration:
        return cls(kind=str(arrays["kind"]), genes=[str(g) for g in arrays["genes"]], scores=np.asarray(arrays["scores"]),
                   n_valid=np.asarray(arrays["n_valid"]), space=str(arrays["space"]),
                   normalised=bool(arrays["normalised"]), sd_floor=arrays.get("sd_floor"),
                   sources=[str(s) for s in arrays["sources"]], extra=dict(extra or {}))

    def save(self, path) -> None:
        np.savez(path, **self.arrays())

    @classmethod
    def load(cls, path, extra: dict[str, Any] | None = None) -> Calibration:
        with np.load(path, allow_pickle=False) as npz:
            return cls.from_arrays({k: npz[k] for k in npz.files}, extra)


def sd_floor(sd: np.ndarray) -> np.ndarray:
    """Per gene: a tenth of the median positive SD (1e-6 when none is positive)."""
    import warnings

    sd = np.where(np.isfinite(sd) & (sd > 0), sd, np.nan)
    with warnings.catch_warnings():  # a gene without any positive SD: all-NaN median, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(sd, axis=0)
    return np.where(np.isfinite(med), 0.1 * med, 1e-6)


# --------------------------------------------------------------------------- model-based intervals
def gaussian_intervals(mean: np.ndarray, sd: np.ndarray, coverage: float,
                       nonnegative: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``mean ± z sd`` with ``z`` the standard normal's ``(1 + coverage) / 2`` quantile: the central
    interval of a Gaussian with the model's own SD (XFuse's posterior, the GP's predictive SD)."""
    z = NormalDist().inv_cdf(0.5 + check_coverage(coverage) / 2.0)
    mean, sd = np.asarray(mean, np.float64), np.clip(np.asarray(sd, np.float64), 0.0, None)
    lower, upper = mean - z * sd, mean + z * sd
    if nonnegative:
        lower = np.maximum(lower, np.minimum(mean, 0.0))
    return lower, upper


def with_intervals(pred: ad.AnnData, lower: np.ndarray, upper: np.ndarray, info: dict[str, Any]) -> ad.AnnData:
    """``pred`` with layers ``lower``/``upper`` and ``uns["stfusion"]["coverage"] = info`` (in place; returned)."""
    pred.layers[K.LAYER_LOWER] = np.asarray(lower, dtype=np.float32)
    pred.layers[K.LAYER_UPPER] = np.asarray(upper, dtype=np.float32)
    meta = dict(pred.uns.get(K.STFUSION, {}))
    meta[K.COVERAGE] = dict(info)
    pred.uns[K.STFUSION] = meta
    return pred


def prediction_space(pred: ad.AnnData) -> str:
    return str(pred.uns.get(K.STFUSION, {}).get("expression_space", "log1p_cp10k"))


# --------------------------------------------------------------------------- held-out calibration data
def section_id(section: ad.AnnData, default: str = "section") -> str:
    return str(section.uns.get(K.STFUSION, {}).get(K.SECTION_ID) or default)


def blocked_spot_holdout(section: ad.AnnData, fraction: float, seed: int = 0, block_spots: float = 3.0) -> np.ndarray:
    """Boolean mask of held-out spots: square blocks of about ``block_spots`` spot spacings a side,
    drawn at random (seeded) until ``fraction`` of the spots are held out.

    Whole blocks are held out so that a held-out spot's neighbours are mostly held out too: the
    calibration residuals then resemble those of spots far from any training spot, not those of
    spots whose neighbours the model has seen (which would make the intervals too narrow).
    """
    from scipy.spatial import cKDTree

    if not 0.0 < float(fraction) < 1.0:
        raise CalibrationError(f"calibration_fraction must lie strictly between 0 and 1, got {fraction}.")
    xy = np.asarray(section.obsm[K.SPATIAL], dtype=np.float64)
    n = len(xy)
    if n < 4:
        raise CalibrationError(f"section {section_id(section)} has {n} spots: too few to hold some out for calibration.")
    dist, _ = cKDTree(xy).query(xy, k=2)
    spacing = float(np.median(dist[:, 1])) or 1.0
    side = max(float(block_spots), 1.0) * spacing
    cells = np.floor((xy - xy.min(axis=0)) / side).astype(np.int64)
    _, block = np.unique(cells, axis=0, return_inverse=True)
    block = block.ravel()
    order = np.random.default_rng(seed).permutation(block.max() + 1)
    target = int(round(float(fraction) * n))
    mask = np.zeros(n, dtype=bool)
    for b in order:
        if mask.sum() >= target:
            break
        mask |= block == b
    if mask.all():  # one block held everything: fall back to a random spot split
        mask = np.zeros(n, dtype=bool)
        mask[np.random.default_rng(seed).choice(n, size=target, replace=False)] = True
    return mask


def split_for_calibration(sections: Sequence[ad.AnnData], kind: str, fraction: float = 0.2, seed: int = 0,
                          input_kind: str = "histology") -> tuple[list[ad.AnnData], list[ad.AnnData], str]:
    """``(training sections, calibration sections, kind)`` for ``Model.fit(..., calibration=kind)``.

    ``spots``: a spatially blocked ``fraction`` of every training section's spots (sections keep
    their ids, so per-section models such as the interpolation baselines predict them);
    ``sections``: the last training section (needs two or more); ``patient``: all sections of the
    last patient in sorted order (needs sections of two or more patients); ``auto``: ``sections``
    when there are three or more training sections and the model reads histology (it can predict
    an unseen section), else ``spots``. (The interpolation baselines predict only sections they
    were trained on: for them only ``spots`` works, and the others fail with a message saying so.)
    """
    sections = list(sections)
    if kind not in KINDS:
        raise CalibrationError(f"calibration must be one of {', '.join(map(repr, KINDS))} or None, got {kind!r}.")
    if kind == "auto":
        kind = "sections" if len(sections) >= 3 and input_kind == "histology" else "spots"
    if kind == "spots":
        train, held = [], []
        for i, s in enumerate(sections):
            mask = blocked_spot_holdout(s, fraction, seed + i)
            train.append(s[~mask].copy())
            held.append(s[mask].copy())
        return train, held, kind
    if kind == "sections":
        if len(sections) < 2:
            raise CalibrationError("calibration='sections' holds out one training section and needs at least two; "
                                   "use calibration='spots' for a single section.")
        return sections[:-1], sections[-1:], kind
    patients = [str(s.uns.get(K.STFUSION, {}).get(K.PATIENT, "")) for s in sections]
    if "" in patients or len(set(patients)) < 2:
        raise CalibrationError("calibration='patient' holds out one patient's sections and needs sections of at least "
                               "two patients, each with uns['stfusion']['patient']; use 'sections' or 'spots'.")
    last = sorted(set(patients))[-1]
    return ([s for s, p in zip(sections, patients) if p != last], [s for s, p in zip(sections, patients) if p == last], kind)
