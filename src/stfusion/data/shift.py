"""How far a slide lies from the training slides: statistics recorded at fit, compared at predict.

A histology model only knows the stains (and, for feature models, the image features) of its
training sections. At fit it records a statistic of each spot's patch, per training section; at
predict it computes the same statistic on the new section and measures how far the section lies
from the training sections:

- **stain** (:func:`stain_features`): each patch's mean haematoxylin, eosin and residual
  concentration over its tissue pixels (optical density OD = -ln((I + 1) / 256) times
  scikit-image's colour-deconvolution matrix ``hed_from_rgb``, Ruifrok & Johnston 2001; tissue:
  pixels whose mean RGB is below ``stfusion.data.patches.WHITE`` = 220, the patch tissue test);
  patches with under ``MIN_TISSUE`` = 5 % tissue pixels are left out.
- **features**: any per-spot feature matrix (e.g. whitened leading PCA components of encoder
  embeddings).

The measure (:class:`ShiftReference`): a section's **score** is the Mahalanobis distance of its
median spot statistic from the training spots' median, in the training spots' covariance (shrunk
by ``SHRINK`` towards its mean variance): 1.0 means the section's typical spot moved by one
standard deviation of the training spots. The threshold is **calibrated on the training sections
themselves**: ``FACTOR`` (2) x the largest leave-one-section-out score among them (each training
section scored against the others: how far apart sections of the training data already are), and
at least ``MIN_THRESHOLD`` (1.5; the threshold with a single training section, where nothing
calibrates the spread between sections: about twice the largest same-patient score). On her2st
(100 µm patches at 32 px), C2-C5's leave-one-out scores are 0.33-0.60 (2x: 1.19, so the floor 1.5 applies); the
held-out C6 of the same patient scores 0.73, B4 of the other patient 1.83 (haematoxylin -1.8 SD,
eosin +1.3 SD); the toy MOB section re-stained with 1.5x haematoxylin, 0.6x eosin and 10 % darker
scores 2.95 against itself.

:func:`check_shift` scores a section, logs a warning naming what differs (per statistic, in
training standard deviations) and what to do, and returns the record a model stores in
``uns["stfusion"]["stain_shift"]`` (or ``"feature_shift"``) of its prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stfusion.data.patches import WHITE

log = logging.getLogger("stfusion")

MIN_TISSUE = 0.05  # fraction of tissue pixels a patch needs to count
FACTOR = 2.0  # threshold = FACTOR x the largest leave-one-section-out score of the training sections
MIN_THRESHOLD = 1.5  # ... and at least this (training-spot SDs; ~2x the largest same-patient score on her2st)
SHRINK = 0.1  # covariance shrinkage towards (mean variance) x identity
MIN_SPOTS = 3  # fewer usable spots than this: no statistic
STAIN_KEY = "stain_shift"  # uns["stfusion"][...] of a prediction
FEATURE_KEY = "feature_shift"
STAIN_NAMES = ("haematoxylin", "eosin", "residual")
_CHUNK = 256

MEASURE = (
    "Mahalanobis distance of the section's median {what} from the training spots' median, in the training "
    "spots' covariance (1.0 = one training-spot SD); threshold = max(2 x the largest leave-one-section-out "
    "score of the training sections, 1.5)"
)


def stain_features(patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean haematoxylin, eosin and residual concentration (OD x ``hed_from_rgb``) of each patch's
    tissue pixels, and which patches hold tissue.

    ``patches``: uint8 (n, h, w, 3). Returns ``(features (n, 3) float64, keep (n,) bool)``; rows of
    patches with under ``MIN_TISSUE`` tissue pixels are NaN and ``keep`` is False there.
    """
    from skimage.color import hed_from_rgb

    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[-1] != 3 or patches.dtype != np.uint8:
        raise ValueError(f"stain_features takes uint8 RGB patches (n, h, w, 3); got {patches.dtype} {patches.shape}.")
    n = len(patches)
    feats = np.full((n, 3), np.nan)
    keep = np.zeros(n, dtype=bool)
    for start in range(0, n, _CHUNK):
        chunk = patches[start : start + _CHUNK].astype(np.float32)
        od = -np.log((chunk + 1.0) / 256.0)
        tissue = chunk.mean(axis=-1) < WHITE
        count = tissue.sum(axis=(1, 2))
        frac = count / float(tissue.shape[1] * tissue.shape[2])
        sums = (od * tissue[..., None]).sum(axis=(1, 2))
        ok = frac >= MIN_TISSUE
        rows = np.arange(start, start + len(chunk))[ok]
        feats[rows] = (sums[ok] / count[ok, None]) @ hed_from_rgb
        keep[rows] = True
    return feats, keep


def _usable(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x).all(axis=1)]


def _centre_cov(pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dim = pooled.shape[1]
    cov = np.atleast_2d(np.cov(pooled, rowvar=False)) if len(pooled) > 1 else np.eye(dim)
    scale = max(float(np.trace(cov)) / dim, 1e-12)
    return np.median(pooled, axis=0), (1 - SHRINK) * cov + SHRINK * scale * np.eye(dim)


def _distance(x: np.ndarray, centre: np.ndarray, cov: np.ndarray) -> float:
    diff = np.median(x, axis=0) - centre
    return float(np.sqrt(max(float(diff @ np.linalg.solve(cov, diff)), 0.0)))


@dataclass
class ShiftReference:
    """The training spots' statistics: median, shrunk covariance and SD, each training section's
    leave-one-section-out score and the calibrated threshold. ``to_dict``/``from_dict`` carry it
    in a model card (JSON)."""

    kind: str  # "stain" | "features"
    centre: list[float]
    cov: list[list[float]]
    sd: list[float]
    section_scores: dict[str, float]  # leave-one-section-out: each training section vs the others
    threshold: float
    n_spots: int
    names: list[str] = field(default_factory=list)  # of the statistics

    @classmethod
    def fit(cls, per_section: Sequence[np.ndarray], section_names: Sequence[str], kind: str = "stain",
            names: Sequence[str] | None = None) -> ShiftReference | None:  # fmt: skip
        """From one statistic matrix (spots x d) per training section (NaN rows are ignored).
        None when fewer than ``MIN_SPOTS`` usable spots (nothing to compare against)."""
        sets = [_usable(x) for x in per_section]
        named = [(str(n), x) for n, x in zip(section_names, sets, strict=True) if len(x) >= MIN_SPOTS]
        pooled = np.concatenate([x for _, x in named]) if named else np.zeros((0, 1))
        if len(pooled) < MIN_SPOTS:
            log.info(f"shift statistic ({kind}): only {len(pooled)} usable training spots; not recorded")
            return None
        centre, cov = _centre_cov(pooled)
        scores = {}
        if len(named) >= 2:
            for i, (name, x) in enumerate(named):
                rest = np.concatenate([y for j, (_, y) in enumerate(named) if j != i])
                scores[name] = _distance(x, *_centre_cov(rest))
        threshold = max([FACTOR * v for v in scores.values()] + [MIN_THRESHOLD])
        dim = pooled.shape[1]
        return cls(kind=kind, centre=centre.tolist(), cov=cov.tolist(), sd=pooled.std(axis=0).tolist(),
                   section_scores=scores, threshold=float(threshold), n_spots=int(len(pooled)),
                   names=list(names) if names is not None else [f"f{i}" for i in range(dim)])  # fmt: skip

    def score(self, x: np.ndarray) -> dict[str, Any] | None:
        """The section's score against the threshold, and each statistic's change (None when the
        section has fewer than ``MIN_SPOTS`` usable spots)."""
        x = _usable(x)
        if len(x) < MIN_SPOTS:
            return None
        centre = np.asarray(self.centre)
        score = _distance(x, centre, np.asarray(self.cov))
        sd = np.asarray(self.sd)
        change = (np.median(x, axis=0) - centre) / np.where(sd > 0, sd, 1.0)
        return {
            "score": score,
            "threshold": float(self.threshold),
            "flagged": bool(score > self.threshold),
            "n_spots": int(len(x)),
            "statistics": list(self.names),
            "change_in_training_sd": change.tolist(),
            "training_section_scores": dict(self.section_scores),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "centre": self.centre, "cov": self.cov, "sd": self.sd,
                "section_scores": self.section_scores, "threshold": self.threshold, "n_spots": self.n_spots,
                "names": self.names}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ShiftReference | None:
        if not data:
            return None
        return cls(**{k: data[k] for k in ("kind", "centre", "cov", "sd", "section_scores", "threshold",
                                           "n_spots", "names") if k in data})  # fmt: skip


def fit_stain_reference(patch_sets: Sequence[np.ndarray], section_names: Sequence[str]) -> dict[str, Any] | None:
    """The stain reference of the training sections (one uint8 patch array per section, as the model
    sees them), as a dict for a model card; None when the patches hold too little tissue."""
    feats = [stain_features(p)[0] for p in patch_sets]
    ref = ShiftReference.fit(feats, section_names, kind="stain", names=STAIN_NAMES)
    return None if ref is None else ref.to_dict()


def check_shift(
    reference: dict[str, Any] | None,
    statistics: np.ndarray,
    *,
    who: str,
    section: str,
    stain_norm: str = "none",
) -> dict[str, Any] | None:
    """Score a section's statistics (spots x d: :func:`stain_features` of its patches, or its
    features) against a reference from :func:`fit_stain_reference` / :meth:`ShiftReference.fit`;
    log a warning when the section lies outside. Returns the record for ``uns["stfusion"]``
    (None without a reference or usable spots)."""
    ref = ShiftReference.from_dict(reference)
    if ref is None:
        return None
    record = ref.score(statistics)
    if record is None:
        log.info(f"{who}: too few tissue spots in section {section} to compare its {ref.kind} with the training sections'")
        return None
    record["measure"] = MEASURE.format(what="patch stain (H, E, residual)" if ref.kind == "stain" else "spot features")
    if record["flagged"]:
        log.warning(_message(record, ref.kind, who, section, stain_norm))
    return record


def _message(record: dict[str, Any], kind: str, who: str, section: str, stain_norm: str) -> str:
    loo = record["training_section_scores"]
    calib = (f"training sections score {', '.join(f'{v:.2f}' for v in loo.values())} against each other"
             if loo else "one training section")  # fmt: skip
    z = np.asarray(record["change_in_training_sd"])
    order = range(len(z)) if kind == "stain" else np.argsort(-np.abs(z))[:3]
    what = ", ".join(f"{record['statistics'][i]} {z[i]:+.1f} SD" for i in order)
    subject = "the stain of section {} lies" if kind == "stain" else "the image features of section {} lie"
    head = (f"{who}: {subject.format(section)} far outside "
            f"the training sections' (score {record['score']:.2f} > threshold {record['threshold']:.2f}; {calib}): "
            f"{what} of the training spots against their median")  # fmt: skip
    if stain_norm in (None, "none"):
        todo = ("Predictions may be unreliable. Refit with stain normalisation (stain_norm='macenko' or 'reinhard'; "
                "`stfusion fit ... -p stain_norm=macenko`), or add training sections stained like this one.")  # fmt: skip
    else:
        todo = (f"It differs even after {stain_norm} normalisation, so predictions may be unreliable: check the "
                "slide (scanner, magnification, section thickness, folds or pen marks) or add training sections "
                "like it.")  # fmt: skip
    return f"{head}. {todo} The measure is in the prediction's uns['stfusion']."
