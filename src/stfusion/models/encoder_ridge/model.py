"""Frozen encoder + PCA + ridge: HEST-Benchmark's linear probe as a model (Jaume et al. 2024).

Each spot's patch at the encoder's field (224 px at 0.5 µm/px = 112 µm, from the preprocessing
that travels with its weights) is embedded by a frozen encoder of
:data:`stfusion.models.encoders.ENCODERS`; the embeddings are standardised and reduced by PCA to
``n_components`` (256) components fitted on the training spots; a ridge regression maps the
components to the target log1p(counts / spot total x 1e4).

Ridge (``alpha``): ``"hest"`` (default) is HEST's penalty ``100 / (n_components x n_genes)``
(sklearn ``Ridge``), but **with** an intercept: HEST fits without one on centred PCA features, so
its predictions have mean 0 (its Pearson scores are unaffected; ours are on the target's scale).
``"cv"`` picks one alpha per gene by generalised cross-validation (``RIDGE_ALPHAS``); a number
fixes it. The standardisation before PCA is our choice.

Embeddings stored in a section by ``stfusion features`` (:func:`.features.add_features`) are
reused when they were made by the same encoder, weights and preprocessing (and the model does no
stain normalisation); otherwise they are computed. With ``weights=None`` the encoder is randomly
initialised (seeded): **random features**, and the model card says so.

At predict time the section's embeddings are compared with the training spots' (whitened leading
``SHIFT_COMPONENTS`` PCA components, :mod:`stfusion.data.shift`): a section far outside them logs
a warning and the measure is in ``uns["stfusion"]["feature_shift"]``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np

from stfusion import _constants as K
from stfusion.data.genes import as_section_list, shared_genes
from stfusion.data.section import library_id, section_meta
from stfusion.data.shift import FEATURE_KEY, ShiftReference, check_shift
from stfusion.data.stain import StainNormalizer
from stfusion.errors import StfusionError
from stfusion.models.base import Model, prediction_adata, target_expression
from stfusion.models.encoder_ridge.features import FrozenEncoder, cached_features, obsm_key

log = logging.getLogger("stfusion")

PARAMS_FILE = "params.npz"
RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4)
SHIFT_COMPONENTS = 8  # leading PCA components compared at predict time


def _section_name(section: ad.AnnData, i: int = 0) -> str:
    return str(section_meta(section).get(K.SECTION_ID) or library_id(section) or f"section{i}")


class EncoderRidge(Model):
    """Frozen encoder embeddings -> PCA (fitted on the training spots) -> ridge (HEST's linear probe).

    Parameters
    ----------
    encoder, encoder_weights, encoder_kwargs
        A registered encoder (``stfusion.models.encoders.available_encoders()``: ``resnet50_trunc``,
        ``uni``, ``h_optimus_0``, ``virchow2``, ``phikon_v2``); a local state dict in its published
        layout, ``"hub"``, or None (random initialisation from ``seed``); configuration overrides
        (e.g. a reduced depth for tests).
    n_components
        PCA components (HEST: 256; fewer when there are fewer training spots or features).
    alpha
        ``"hest"`` (100 / (components x genes)), ``"cv"`` (per-gene GCV) or a number.
    patch_um, out_px
        Override the encoder's field (µm) and input size (px); default: its preprocessing's.
    stain_norm
        ``"none"``, ``"macenko"`` or ``"reinhard"``: patches normalised to the training stain first
        (then cached embeddings are not used).
    batch_size, seed, use_cache
        Patches per forward pass; seed of a random initialisation; reuse stored embeddings.
    """

    name: ClassVar[str] = "encoder_ridge"
    description: ClassVar[str] = (
        "Frozen pathology encoder + PCA(256) + ridge on each spot's 112 µm patch (HEST linear probe)."
    )
    input_kind: ClassVar[str] = "histology"

    def __init__(
        self,
        encoder: str = "resnet50_trunc",
        encoder_weights: str | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        n_components: int = 256,
        alpha: str | float = "hest",
        patch_um: float | None = None,
        out_px: int | None = None,
        stain_norm: str = "none",
        batch_size: int = 32,
        seed: int = 0,
        use_cache: bool = True,
        progress: bool = False,
    ) -> None:
        if isinstance(alpha, str) and alpha not in ("hest", "cv"):
            raise StfusionError(f"alpha must be 'hest', 'cv' or a number, got {alpha!r}.")
        if int(n_components) < 1:
            raise StfusionError(f"n_components must be at least 1, got {n_components}.")
        super().__init__(
            encoder=str(encoder), encoder_weights=None if encoder_weights is None else str(encoder_weights),
            encoder_kwargs=dict(encoder_kwargs or {}), n_components=int(n_components),
            alpha=alpha if isinstance(alpha, str) else float(alpha), patch_um=None if patch_um is None else float(patch_um),
            out_px=None if out_px is None else int(out_px), stain_norm=str(stain_norm), batch_size=int(batch_size),
            seed=int(seed), use_cache=bool(use_cache),
        )
        self.progress = progress
        self.encoder_ = self._make_encoder()
        self.stain_ = StainNormalizer(self.hyperparams["stain_norm"])
        self.params_: dict[str, np.ndarray] = {}
        self.info_: dict[str, Any] = {}

    def _make_encoder(self) -> FrozenEncoder:
        hp = self.hyperparams
        return FrozenEncoder(hp["encoder"], hp["encoder_weights"], hp["encoder_kwargs"], seed=hp["seed"],
                             batch_size=hp["batch_size"], input_px=hp["out_px"], patch_um=hp["patch_um"])  # fmt: skip

    # ------------------------------------------------------------------ features
    def embeddings(self, section: ad.AnnData) -> np.ndarray:
        """The section's spot embeddings: stored ones when they match the encoder, else computed."""
        if self.hyperparams["use_cache"] and self.stain_.method == "none":
            cached = cached_features(section, self.encoder_)
            if cached is not None:
                key = obsm_key(self.encoder_.spec.name)
                log.info(f"encoder_ridge: using the stored obsm['{key}'] of {_section_name(section)}")
                return cached
        transform = None if self.stain_.method == "none" else self.stain_.transform
        return self.encoder_.embed_section(section, transform=transform)

    def components(self, x: np.ndarray) -> np.ndarray:
        """PCA components (spots x n_components) of embeddings, with the training standardisation."""
        p = self.params_
        return ((np.asarray(x, np.float64) - p["feature_mean"]) / p["feature_scale"] - p["pca_mean"]) @ p["pca_components"].T

    def _shift_statistics(self, z: np.ndarray) -> np.ndarray:
        k = min(SHIFT_COMPONENTS, z.shape[1])
        return z[:, :k] / np.sqrt(np.maximum(self.params_["pca_variance"][:k], 1e-12))

    # ------------------------------------------------------------------ fit
    def _fit(self, train_sections: Sequence[ad.AnnData], genes: Sequence[str] | None = None) -> EncoderRidge:
        from sklearn.linear_model import Ridge, RidgeCV

        sections = as_section_list(train_sections)
        genes = list(genes) if genes is not None else shared_genes(sections)
        ys = [target_expression(s, genes) for s in sections]  # checks the genes first
        if self.stain_.method != "none":
            sample = np.concatenate([next(iter(self.encoder_.read_patches(s))) for s in sections])
            self.stain_ = StainNormalizer(self.stain_.method).fit(sample)
        xs = [self.embeddings(s) for s in sections]
        x, y = np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale == 0] = 1.0
        xz = (x - mean) / scale
        k = int(min(self.hyperparams["n_components"], len(xz) - 1, xz.shape[1]))
        if k < 1:
            raise StfusionError(f"encoder_ridge needs at least 2 training spots, got {len(xz)}.")
        pca_mean = xz.mean(axis=0)
        _, sv, vt = np.linalg.svd(xz - pca_mean, full_matrices=False)
        comps = vt[:k]
        signs = np.sign(comps[np.arange(k), np.argmax(np.abs(comps), axis=1)])  # deterministic signs
        comps = comps * signs[:, None]
        variance = sv[:k] ** 2 / max(len(xz) - 1, 1)
        self.params_ = {"feature_mean": mean, "feature_scale": scale, "pca_mean": pca_mean,
                        "pca_components": comps, "pca_variance": variance}  # fmt: skip
        z = self.components(x)
        alpha = self.hyperparams["alpha"]
        if alpha == "cv":
            reg = RidgeCV(alphas=RIDGE_ALPHAS, alpha_per_target=True).fit(z, y)
            alphas = np.atleast_1d(reg.alpha_).astype(float)
        else:
            value = 100.0 / (k * len(genes)) if alpha == "hest" else float(alpha)
            reg = Ridge(alpha=value).fit(z, y)
            alphas = np.full(len(genes), value)
        self.params_.update(coef=np.atleast_2d(reg.coef_).astype(np.float64),
                            intercept=np.atleast_1d(reg.intercept_).astype(np.float64), alpha=alphas)  # fmt: skip
        names = [_section_name(s, i) for i, s in enumerate(sections)]
        stats, start = [], 0
        for xi in xs:
            stats.append(self._shift_statistics(z[start : start + len(xi)]))
            start += len(xi)
        shift = ShiftReference.fit(stats, names, kind="features",
                                   names=[f"PC{i + 1}" for i in range(stats[0].shape[1])])  # fmt: skip
        self.info_ = {
            "training_sections": names,
            "encoder": self.encoder_.record(),
            "n_components": k,
            "explained_variance_ratio": float(variance.sum() / max(float(xz.var(axis=0, ddof=1).sum()), 1e-12)),
            "alpha": alpha if isinstance(alpha, str) else float(alpha),
            "median_alpha": float(np.median(alphas)),
            "stain": self.stain_.to_dict(),
            "feature_shift_reference": None if shift is None else shift.to_dict(),
        }
        if self.encoder_.weights is None:
            log.warning(f"encoder_ridge: {self.encoder_.spec.name} is randomly initialised (no encoder_weights): "
                        "these are random features, not the pretrained encoder's")  # fmt: skip
        self.genes_ = genes
        return self

    # ------------------------------------------------------------------ predict
    def _predict(self, section: ad.AnnData) -> ad.AnnData:
        genes = self._check_fitted()
        record = self.encoder_.record()
        trained = (self.info_.get("encoder") or {}).get("fingerprint")
        if trained and record["fingerprint"] != trained:
            raise StfusionError(
                f"The encoder's weights differ from those the model was trained with (fingerprint {record['fingerprint']} "
                f"vs {trained}; weights: {record['weights']}). Point encoder_weights at the same file."
            )
        x = self.embeddings(section)
        z = self.components(x)
        values = z @ self.params_["coef"].T + self.params_["intercept"]
        out = prediction_adata(section, values, genes, method=self.name)
        out.obsm[obsm_key(self.encoder_.spec.name)] = np.asarray(x, np.float32)
        meta = out.uns[K.STFUSION]
        meta.update(encoder=record["encoder"], encoder_weights=record["weights"], n_components=int(z.shape[1]),
                    patch_field_um=self.encoder_.field_um)  # fmt: skip
        shift = check_shift(self.info_.get("feature_shift_reference"), self._shift_statistics(z), who="encoder_ridge",
                            section=_section_name(section), stain_norm=self.stain_.method)  # fmt: skip
        if shift is not None:
            meta[FEATURE_KEY] = shift
        return out

    # ------------------------------------------------------------------ save / load
    def image_scale(self) -> dict[str, float | None]:
        field, px = self.encoder_.field_um, self.encoder_.preprocessing.input_px
        return {"patch_field_um": float(field), "microns_per_pixel": float(field) / int(px)}

    def card(self) -> dict[str, Any]:
        return {**super().card(), "description": self.description, "training": self.info_,
                "weights_source": self.hyperparams["encoder_weights"] or "random init", "params_file": PARAMS_FILE}

    def save(self, directory: str | Path) -> Path:
        directory = super().save(directory)
        np.savez(Path(directory) / PARAMS_FILE, **self.params_)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> EncoderRidge:
        """A fitted model from a folder written by :meth:`save` (arrays only, no pickle). The encoder
        is rebuilt from the card (its weights file must still exist; checked by fingerprint)."""
        model, card = cls.from_card(directory)
        with np.load(Path(directory) / PARAMS_FILE, allow_pickle=False) as npz:
            model.params_ = {k: npz[k] for k in npz.files}
        model.info_ = card.get("training") or {}
        model.stain_ = StainNormalizer.from_dict(model.info_.get("stain"))
        return model
