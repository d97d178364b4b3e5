"""Stain handling for every histology model: normalisation to a reference, HED augmentation,
per-slide standardisation of fixed features.

A slide from a new lab or scanner differs from the training slides in its stain far more than in
its tissue. Three remedies, each a hyperparameter of the histology models and image baselines,
recorded in the model card and applied identically at predict time:

- :class:`StainNormalizer`: Macenko (stain vectors by optical-density SVD, Macenko et al., ISBI
  2009) or Reinhard (LAB mean and SD, Reinhard et al., IEEE CG&A 2001) normalisation of patches
  to a reference fitted on the training patches, with torchstain's numpy backend (torchstain
  1.4: maintained, numpy only, the implementation HEST and many pipelines use). The source
  stain of a section is estimated from many of its patches at once (a mosaic of up to
  ``MOSAIC_PIXELS`` pixels), not patch by patch, so a patch with little tissue borrows the
  estimate of its section.
- :func:`hed_jitter`: random scaling and shifting of each patch's haematoxylin and eosin
  concentrations in HED space (scikit-image's colour deconvolution, Ruifrok & Johnston 2001),
  the augmentation of Tellez et al. 2018 and the XFuse paper's stain test, during training.
- :func:`standardize_per_section`: features of fixed extractors centred and scaled per slide.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stfusion.errors import StfusionError

log = logging.getLogger("stfusion")

STAIN_METHODS = ("none", "macenko", "reinhard")
MOSAIC_PIXELS = 1 << 22  # pixels of patches pooled into one stain estimate (~4 M, ~100 MB of float64 OD)
REFERENCE_PATCHES = 512  # training patches the reference is fitted on (evenly spaced over all of them)


def _mosaic(patches: np.ndarray) -> np.ndarray:
    """(n, h, w, 3) patches stacked vertically into one (n * h, w, 3) image."""
    n, h, w, c = patches.shape
    return patches.reshape(n * h, w, c)


def _chunks(n: int, patch_pixels: int) -> list[slice]:
    step = max(1, MOSAIC_PIXELS // max(1, patch_pixels))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


@dataclass
class StainNormalizer:
    """Stain normalisation to a reference (``method`` "macenko", "reinhard" or "none").

    ``fit(patches)`` on the training patches (uint8, n x h x w x 3); ``transform(patches)`` maps
    a section's patches to that reference. ``to_dict()``/``from_dict()`` carry the fitted
    reference in a model card (JSON), so prediction applies exactly the training-time mapping.
    """

    method: str = "macenko"
    reference: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in STAIN_METHODS:
            raise StfusionError(f"Unknown stain normalisation {self.method!r}; use one of {STAIN_METHODS}.")

    @property
    def fitted(self) -> bool:
        return self.method == "none" or bool(self.reference)

    def _engine(self) -> Any:
        from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer

        if self.method == "macenko":
            engine = NumpyMacenkoNormalizer()
            if self.reference:
                engine.HERef = np.asarray(self.reference["stain_matrix"], dtype=float)
                engine.maxCRef = np.asarray(self.reference["max_concentrations"], dtype=float)
            return engine
        engine = NumpyReinhardNormalizer()
        if self.reference:
            engine.target_means = np.asarray(self.reference["lab_means"], dtype=float)
            engine.target_stds = np.asarray(self.reference["lab_stds"], dtype=float)
        return engine

    def fit(self, patches: np.ndarray) -> StainNormalizer:
        """Fit the reference on (a spread-out sample of at most ``REFERENCE_PATCHES``) patches."""
        if self.method == "none":
            return self
        patches = _check_patches(patches)
        pick = np.unique(np.linspace(0, len(patches) - 1, min(len(patches), REFERENCE_PATCHES)).round().astype(int))
        sample = patches[pick]
        sample = sample[: max(1, MOSAIC_PIXELS // (sample.shape[1] * sample.shape[2]))]
        engine = self._engine()
        try:
            engine.fit(_mosaic(sample))
        except (np.linalg.LinAlgError, ValueError, IndexError) as exc:
            raise StfusionError(
                f"Cannot fit a {self.method} stain reference on these patches ({exc}); they may hold too little "
                "tissue. Use stain_norm='reinhard' or 'none', or check the patches (stfusion plot spots)."
            ) from exc
        if self.method == "macenko":
            self.reference = {"stain_matrix": engine.HERef.tolist(), "max_concentrations": engine.maxCRef.tolist()}
        else:
            self.reference = {"lab_means": np.asarray(engine.target_means).tolist(),
                              "lab_stds": np.asarray(engine.target_stds).tolist()}  # fmt: skip
        return self

    def transform(self, patches: np.ndarray) -> np.ndarray:
        """The patches mapped to the reference stain (uint8, same shape). A group of patches
        whose stain cannot be estimated (e.g. all background) is returned unchanged, logged."""
        if self.method == "none":
            return patches
        if not self.reference:
            raise StfusionError("The stain normaliser is not fitted: call fit(training patches) first.")
        patches = _check_patches(patches)
        out = np.empty_like(patches)
        engine = self._engine()
        for part in _chunks(len(patches), patches.shape[1] * patches.shape[2]):
            out[part] = self._transform_chunk(engine, patches[part])
        return out

    def _transform_chunk(self, engine: Any, chunk: np.ndarray) -> np.ndarray:
        try:
            with np.errstate(all="ignore"):
                mapped = engine.normalize(_mosaic(chunk), stains=False)[0] if self.method == "macenko" \
                    else engine.normalize(_mosaic(chunk))  # fmt: skip
        except (np.linalg.LinAlgError, ValueError, IndexError) as exc:
            log.info(f"stain normalisation skipped for {len(chunk)} patches: {exc}")
            return chunk
        return np.asarray(mapped, dtype=np.uint8).reshape(chunk.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "reference": self.reference}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> StainNormalizer:
        data = data or {"method": "none"}
        return cls(method=data.get("method", "none"), reference=dict(data.get("reference") or {}))


def _check_patches(patches: np.ndarray) -> np.ndarray:
    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[-1] != 3 or patches.dtype != np.uint8:
        raise StfusionError(f"Stain handling takes uint8 RGB patches (n, h, w, 3); got {patches.dtype} {patches.shape}.")
    return patches


def hed_jitter(patches: np.ndarray, rng: np.random.Generator, scale: float = 0.05, shift: float = 0.05) -> np.ndarray:
    """Each patch's H, E and residual (D) concentrations multiplied by ``1 + U(-scale, scale)``
    and shifted by ``U(-shift, shift)`` x the channel's SD, independently per patch and channel
    (Tellez et al. 2018); uint8 in and out. ``scale = shift = 0`` returns the patches unchanged."""
    from skimage.color import hed2rgb, rgb2hed

    patches = _check_patches(patches)
    if scale == 0 and shift == 0:
        return patches
    out = np.empty_like(patches)
    for i, patch in enumerate(patches):
        hed = rgb2hed(patch)
        alpha = 1.0 + rng.uniform(-scale, scale, size=3)
        beta = rng.uniform(-shift, shift, size=3) * hed.reshape(-1, 3).std(axis=0)
        rgb = hed2rgb(hed * alpha + beta)
        out[i] = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return out


def standardize_per_section(features: np.ndarray) -> np.ndarray:
    """Features (spots x features) of one section centred and scaled by that section's own mean and
    SD (a constant feature becomes 0), so a slide's overall stain or brightness offset is removed."""
    features = np.asarray(features, dtype=np.float64)
    mean, sd = features.mean(axis=0), features.std(axis=0)
    constant = sd <= 1e-12 * np.maximum(np.abs(mean), 1.0)  # rounding leaves ~1e-16 on a constant column
    return np.where(constant, 0.0, (features - mean) / np.where(constant, 1.0, sd))
