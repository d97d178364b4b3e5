"""Patch embeddings of a section from a frozen encoder, and their cache in the section.

:class:`FrozenEncoder` builds an encoder of :data:`stfusion.models.encoders.ENCODERS` (random
initialisation, seeded, unless ``weights=`` a local file or ``"hub"``), reads each spot's patch at
the encoder's own physical field (HEST: 224 px at 0.5 µm/px = 112 µm) and embeds it with the
encoder's preprocessing (mean/std, input size) under ``torch.inference_mode``.

:func:`add_features` stores the embeddings of a section in ``obsm["X_<encoder>"]`` and what made
them in ``uns["stfusion_features"]["X_<encoder>"]``: encoder name, weights source, configuration
overrides, the preprocessing (JSON), the patch field, and a fingerprint of the weights (a hash of
the leading values of every tensor), so that :func:`cached_features` only reuses embeddings of the
same encoder, weights and preprocessing. ``stfusion features`` is the command line for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import anndata as ad
import numpy as np
import torch

from stfusion.data.patches import PatchReader
from stfusion.data.section import spot_coords
from stfusion.errors import StfusionError
from stfusion.models.encoders import Preprocessing, encoder_spec, make_encoder

log = logging.getLogger("stfusion")

FEATURES_UNS = "stfusion_features"  # uns key: {obsm key: record of what made the embeddings}
CHUNK_SPOTS = 256  # patches read and embedded at a time (224 px: ~38 MB of uint8 per chunk)
_MATCH = ("encoder", "fingerprint", "preprocessing", "field_um")


def obsm_key(encoder: str) -> str:
    """``obsm`` key of an encoder's embeddings: ``"X_" + its registry name`` (e.g. ``X_uni``)."""
    return f"X_{encoder_spec(encoder).name}"


def weights_fingerprint(module: torch.nn.Module, n: int = 64) -> str:
    """A short hash of the weights: the first ``n`` values of every tensor of the state dict, with
    the names and shapes (distinguishes checkpoints and seeds without hashing gigabytes)."""
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        h.update(f"{key}{tuple(value.shape)}".encode())
        h.update(value.detach().reshape(-1)[:n].to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class FrozenEncoder:
    """A registered encoder, frozen, with the preprocessing and field its weights expect.

    Parameters
    ----------
    name
        An encoder of :func:`stfusion.models.encoders.available_encoders`.
    weights
        ``None`` (random initialisation from ``seed``), a local ``.safetensors``/``.pth`` state
        dict in the encoder's published layout (loaded strictly), or ``"hub"``.
    overrides
        Configuration changes (e.g. ``{"depth": 2, "embed_dim": 32, ...}`` for a reduced test model).
    input_px, patch_um
        Override the preprocessing's input size and the physical field (default: the encoder's,
        224 px and 112 µm).
    """

    def __init__(self, name: str, weights: str | None = None, overrides: Mapping[str, Any] | None = None, *,
                 seed: int = 0, batch_size: int = 32, input_px: int | None = None,
                 patch_um: float | None = None) -> None:  # fmt: skip
        self.spec = encoder_spec(name)
        self.weights = None if weights is None else str(weights)
        self.overrides = dict(overrides or {})
        self.seed, self.batch_size = int(seed), max(1, int(batch_size))
        prep = self.spec.preprocessing
        if input_px is not None:
            prep = dataclasses.replace(prep, input_px=int(input_px))
        self.preprocessing: Preprocessing = prep
        self.field_um = float(patch_um) if patch_um else float(self.spec.preprocessing.field_um)
        self._module: torch.nn.Module | None = None

    @property
    def module(self) -> torch.nn.Module:
        if self._module is None:
            state = torch.random.get_rng_state()
            torch.manual_seed(self.seed)  # random initialisation is repeatable (and fingerprinted)
            try:
                self._module, _ = make_encoder(self.spec.name, self.weights, **self.overrides)
            finally:
                torch.random.set_rng_state(state)
            self._module.requires_grad_(False)
        return self._module

    @property
    def n_features(self) -> int:
        return int(self.module.n_features)

    def record(self) -> dict[str, Any]:
        """What makes these embeddings (JSON/h5ad-writable: no None)."""
        return {
            "encoder": self.spec.name,
            "weights": self.weights or f"random init (seed {self.seed})",
            "overrides": json.dumps(self.overrides, sort_keys=True),
            "preprocessing": self.preprocessing.to_dict(),
            "field_um": self.field_um,
            "output_dim": self.n_features,
            "fingerprint": weights_fingerprint(self.module),
        }

    def embed(self, patches: np.ndarray) -> np.ndarray:
        """Embeddings (n, n_features) float32 of uint8 RGB patches (n, H, W, 3)."""
        module, out = self.module, []
        with torch.inference_mode():
            for start in range(0, len(patches), self.batch_size):
                x = self.preprocessing(np.ascontiguousarray(patches[start : start + self.batch_size]))
                out.append(module(x).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.n_features), np.float32)

    def read_patches(self, section: ad.AnnData, centers_px: np.ndarray | None = None):
        """Chunks of uint8 patches of the encoder's field at the section's spots (or ``centers_px``)."""
        centers = spot_coords(section) if centers_px is None else np.asarray(centers_px, dtype=float)
        with PatchReader(section, self.field_um, self.preprocessing.input_px, centers_px=centers) as reader:
            for start in range(0, len(centers), CHUNK_SPOTS):
                yield np.stack([reader[i] for i in range(start, min(start + CHUNK_SPOTS, len(centers)))])

    def embed_section(self, section: ad.AnnData, centers_px: np.ndarray | None = None, transform=None) -> np.ndarray:
        """Embeddings of the patches at the section's spots; ``transform`` (e.g. a stain
        normaliser's ``transform``) is applied to each chunk of uint8 patches first."""
        parts = [self.embed(p if transform is None else transform(p)) for p in self.read_patches(section, centers_px)]
        return np.concatenate(parts) if parts else np.zeros((0, self.n_features), np.float32)


def _same(stored: Mapping[str, Any], record: Mapping[str, Any]) -> bool:
    def norm(v: Any) -> str:
        if isinstance(v, Mapping):
            return json.dumps({k: norm(x) for k, x in sorted(v.items())}, sort_keys=True)
        if isinstance(v, (list, tuple, np.ndarray)):
            return json.dumps([norm(x) for x in np.asarray(v).tolist()])
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.9g}"
        return str(v)

    return all(norm(stored.get(k)) == norm(record.get(k)) for k in _MATCH if k != "preprocessing") and norm(
        {k: v for k, v in dict(stored.get("preprocessing", {})).items() if k != "notes"}
    ) == norm({k: v for k, v in dict(record.get("preprocessing", {})).items() if k != "notes"})


def cached_features(section: ad.AnnData, encoder: FrozenEncoder) -> np.ndarray | None:
    """The section's stored embeddings when they were made by the same encoder, weights and
    preprocessing (else None)."""
    key = obsm_key(encoder.spec.name)
    stored = section.uns.get(FEATURES_UNS, {}).get(key)
    if key not in section.obsm or not isinstance(stored, Mapping):
        return None
    x = np.asarray(section.obsm[key], dtype=np.float32)
    if x.shape != (section.n_obs, encoder.n_features) or not _same(stored, encoder.record()):
        log.info(f"obsm['{key}'] was made by another encoder configuration or weights; computing embeddings again")
        return None
    return x


def add_features(section: ad.AnnData, encoder: FrozenEncoder, *, overwrite: bool = True) -> str:
    """Embed the section's spots and store them in ``section.obsm["X_<encoder>"]`` with their
    record in ``section.uns["stfusion_features"]`` (in place). Returns the obsm key."""
    key = obsm_key(encoder.spec.name)
    if not overwrite and cached_features(section, encoder) is not None:
        return key
    x = encoder.embed_section(section)
    if len(x) != section.n_obs:
        raise StfusionError(f"got {len(x)} embeddings for {section.n_obs} spots")
    section.obsm[key] = x.astype(np.float32)
    uns = dict(section.uns.get(FEATURES_UNS, {}))
    uns[key] = encoder.record()
    section.uns[FEATURES_UNS] = uns
    return key
