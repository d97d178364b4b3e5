"""Image-feature baselines of the papers: simple regressions from hand-crafted patch features.

Each model reads one square patch of ``patch_um`` micrometres per spot (resampled to
``out_px`` pixels, see :func:`stfusion.data.patches.read_patches`), computes features
(:mod:`stfusion.baselines.features`) and regresses the primary target
:func:`stfusion.models.base.target_expression` on them.

- :class:`HistogramRegressionBaseline`: linear regression on colour histograms (XFuse).
- :class:`MorphologyForestBaseline`: random forest on nucleus morphology (ST-Net's comparison).
- :class:`DepthOnlyBaseline`: predicts only sequencing depth from the image. On this data
  much of what image models predict is sequencing depth, so every model is shown beside this.
- :class:`ColourTextureRidgeBaseline`: ridge on simple colour/texture features.

Fitted parameters are saved as ``params.npz`` beside the JSON model card (no pickle).

At predict time each section's stain is compared with the training sections'
(:mod:`stfusion.data.shift`); a section far outside logs a warning, and the measure is in
``uns["stfusion"]["stain_shift"]`` of the prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.model_selection import KFold

from stfusion import _constants as K
from stfusion.baselines.features import colour_texture_features, histogram_features, morphology_features
from stfusion.data.genes import as_section_list, shared_genes
from stfusion.data.patches import read_patches
from stfusion.data.section import library_id, section_meta, spot_coords
from stfusion.data.shift import STAIN_KEY, check_shift, fit_stain_reference, stain_features
from stfusion.data.stain import StainNormalizer, standardize_per_section
from stfusion.errors import StfusionError
from stfusion.models.base import Model, prediction_adata, target_expression

DEFAULT_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
PARAMS_FILE = "params.npz"
FeatureCache = dict[tuple, np.ndarray]


# --------------------------------------------------------------------------- linear helpers
def _standardiser(x: np.ndarray) -> dict[str, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    return {"mean": mean, "scale": scale}


def _fit_linear(
    x: np.ndarray, y: np.ndarray, estimator: Any, *, standardise: bool = True
) -> dict[str, np.ndarray]:
    """Fit ``estimator`` (a sklearn linear model) and keep only its arrays."""
    params = _standardiser(x) if standardise else {"mean": np.zeros(x.shape[1]), "scale": np.ones(x.shape[1])}
    estimator.fit((x - params["mean"]) / params["scale"], y)
    params["coef"] = np.atleast_2d(estimator.coef_).astype(np.float64)
    params["intercept"] = np.atleast_1d(estimator.intercept_).astype(np.float64)
    if hasattr(estimator, "alpha_"):
        params["alpha"] = np.atleast_1d(estimator.alpha_).astype(np.float64)
    return params


def _apply_linear(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    z = (x - params["mean"]) / params["scale"]
    return z @ params["coef"].T + params["intercept"]


def _lines(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and intercept of each column of ``y`` on the vector ``x``."""
    xc = x - x.mean()
    var = float(xc @ xc)
    slope = (xc @ (y - y.mean(axis=0))) / var if var > 0 else np.zeros(y.shape[1])
    return slope, y.mean(axis=0) - slope * x.mean()


def _out_of_fold_depth(x: np.ndarray, depth: np.ndarray, alphas: Sequence[float], seed: int) -> np.ndarray:
    """Depth predicted for each training spot by a ridge fitted without it (5-fold)."""
    folds = KFold(n_splits=min(5, len(x)), shuffle=True, random_state=seed)
    out = np.empty(len(x))
    for train, test in folds.split(x):
        params = _fit_linear(x[train], depth[train, None], RidgeCV(alphas=alphas))
        out[test] = _apply_linear(params, x[test])[:, 0]
    return out


def log_depth(section: ad.AnnData) -> np.ndarray:
    """log1p of each spot's total count over all genes."""
    return np.log1p(np.asarray(section.X.sum(axis=1), dtype=np.float64).ravel())


def _sid(section: ad.AnnData, i: int = 0) -> str:
    return str(section_meta(section).get(K.SECTION_ID) or library_id(section) or f"section{i}")


# --------------------------------------------------------------------------- shared base
class _ImageFeatureModel(Model):
    """Read patches, compute features, regress the target; subclasses choose the parts."""

    input_kind: ClassVar[str] = "histology"
    default_out_px: ClassVar[int] = 64

    def __init__(
        self, patch_um: float = K.ST_SPOT_DIAMETER_UM, out_px: int | None = None, **hyperparams: Any
    ) -> None:
        out_px = self.default_out_px if out_px is None else int(out_px)
        if not patch_um > 0 or out_px < 8:
            raise ValueError(f"patch_um must be positive and out_px at least 8, got {patch_um} and {out_px}.")
        hyperparams.setdefault("stain_norm", "none")
        hyperparams["per_section_features"] = bool(hyperparams.get("per_section_features", False))
        super().__init__(patch_um=float(patch_um), out_px=out_px, **hyperparams)
        self.stain_ = StainNormalizer(hyperparams["stain_norm"])
        self.stain_shift_: dict[str, Any] | None = None
        self.params_: dict[str, np.ndarray] = {}

    # -- subclass hooks
    def _compute_features(self, patches: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _fit_arrays(self, x: np.ndarray, y: np.ndarray, depth: np.ndarray) -> None:
        raise NotImplementedError

    def _predict_arrays(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- features
    def _patches(self, section: ad.AnnData) -> np.ndarray:
        return read_patches(section, spot_coords(section), self.hyperparams["patch_um"], self.hyperparams["out_px"])

    def _features_of(self, patches: np.ndarray, *, normalised: bool = False) -> np.ndarray:
        """Features of one section's patches: stain-normalised first (unless ``normalised``:
        they already are), standardised per section after, as the hyperparameters say."""
        feats = self._compute_features(patches if normalised else self.stain_.transform(patches))
        return standardize_per_section(feats) if self.hyperparams["per_section_features"] else feats

    def features(self, section: ad.AnnData, cache: FeatureCache | None = None) -> np.ndarray:
        """Feature matrix (spots x features) of ``section``'s spots."""
        patch_um, out_px = self.hyperparams["patch_um"], self.hyperparams["out_px"]
        sid = section_meta(section).get(K.SECTION_ID) or library_id(section)
        key = (sid, patch_um, out_px, hash(tuple(section.obs_names)))
        if cache is not None and key in cache:
            return cache[key]
        feats = self._features_of(self._patches(section))
        if cache is not None:
            cache[key] = feats
        return feats

    # -- interface
    def _fit(self, train_sections: Sequence[ad.AnnData], genes: Sequence[str] | None = None) -> _ImageFeatureModel:
        sections = as_section_list(train_sections)
        genes = list(genes) if genes is not None else shared_genes(sections)
        y = np.vstack([target_expression(s, genes) for s in sections]).astype(np.float64)  # checks genes first
        raw = [self._patches(s) for s in sections]
        self.stain_ = StainNormalizer(self.hyperparams["stain_norm"]).fit(np.concatenate(raw))
        raw = [self.stain_.transform(p) for p in raw]
        self.stain_shift_ = fit_stain_reference(raw, [_sid(s, i) for i, s in enumerate(sections)])
        x = np.vstack([self._features_of(p, normalised=True) for p in raw])
        depth = np.concatenate([log_depth(s) for s in sections])
        keep = depth > 0  # spots without any count have no defined target (0/0)
        if keep.sum() < 3:
            raise StfusionError(
                f"{type(self).__name__} needs at least 3 training spots with counts, got {int(keep.sum())}. "
                "Pass more sections (or spots)."
            )
        self.params_ = {}
        self._fit_arrays(x[keep], y[keep], depth[keep])
        self.genes_ = genes
        return self

    def _predict(self, section: ad.AnnData) -> ad.AnnData:
        genes = self._check_fitted()
        patches = self.stain_.transform(self._patches(section))
        shift = check_shift(self.stain_shift_, stain_features(patches)[0], who=type(self).__name__,
                            section=_sid(section), stain_norm=self.stain_.method)  # fmt: skip
        values = self._predict_arrays(self._features_of(patches, normalised=True))
        out = prediction_adata(section, values, genes, method=self.name)
        if shift is not None:
            out.uns[K.STFUSION][STAIN_KEY] = shift
        return out

    def card(self) -> dict[str, Any]:
        return {**super().card(), "stain": self.stain_.to_dict(), "stain_shift_reference": self.stain_shift_}

    def save(self, directory: str | Path) -> Path:
        directory = super().save(directory)
        np.savez(directory / PARAMS_FILE, **self.params_)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> _ImageFeatureModel:
        """A fitted model from a folder written by :meth:`save` (a new object)."""
        model, card = cls.from_card(directory)
        with np.load(Path(directory) / PARAMS_FILE, allow_pickle=False) as npz:
            model.params_ = {k: npz[k] for k in npz.files}
        model.stain_ = StainNormalizer.from_dict(card.get("stain"))
        model.stain_shift_ = card.get("stain_shift_reference")
        model._after_load()
        return model

    def _after_load(self) -> None:
        """Rebuild anything not stored as arrays (the random forest)."""


# --------------------------------------------------------------------------- the baselines
class HistogramRegressionBaseline(_ImageFeatureModel):
    """Linear regression from channel-wise colour histograms to each gene; predictions clipped at 0.

    XFuse's comparison (Extended Data Fig. 4c): 5-bin histograms of R, G and B per patch.
    The histogram bins of a channel sum to one, so a tiny ridge penalty (``alpha``) makes the
    least-squares solution unique; features are used as fractions, not standardised.
    """

    name: ClassVar[str] = "histogram_regression"
    description: ClassVar[str] = "Linear regression on 5-bin RGB histograms of each spot's patch (XFuse baseline)."

    def __init__(
        self, patch_um: float = K.ST_SPOT_DIAMETER_UM, out_px: int | None = None, bins: int = 5, alpha: float = 1e-4,
        stain_norm: str = "none",
        per_section_features: bool = False,
    ) -> None:
        super().__init__(patch_um, out_px, bins=int(bins), alpha=float(alpha), stain_norm=stain_norm, per_section_features=per_section_features)

    def _compute_features(self, patches: np.ndarray) -> np.ndarray:
        return histogram_features(patches, bins=self.hyperparams["bins"])[0]

    def _fit_arrays(self, x: np.ndarray, y: np.ndarray, depth: np.ndarray) -> None:
        self.params_ = _fit_linear(x, y, Ridge(alpha=self.hyperparams["alpha"]), standardise=False)

    def _predict_arrays(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(_apply_linear(self.params_, x), 0.0)


class MorphologyForestBaseline(_ImageFeatureModel):
    """Random forest (multi-output) from nucleus morphology features to each gene (ST-Net's comparison).

    Features are standardised. ``save`` stores the training features and targets
    (``params.npz``) and ``load`` refits the forest with the same seed (no pickle), which
    gives identical predictions; loading takes as long as one fit of the forest.
    """

    name: ClassVar[str] = "morphology_rf"
    description: ClassVar[str] = "Random forest on nucleus morphology statistics of each patch (ST-Net baseline)."
    default_out_px: ClassVar[int] = 128

    def __init__(
        self,
        patch_um: float = K.ST_SPOT_DIAMETER_UM,
        out_px: int | None = None,
        n_estimators: int = 100,
        max_features: str | float = "sqrt",
        min_samples_leaf: int = 5,
        n_jobs: int = 1,
        seed: int = 0,
        min_area_um2: float = 10.0,
        stain_norm: str = "none",
        per_section_features: bool = False,
    ) -> None:
        super().__init__(
            patch_um,
            out_px,
            n_estimators=int(n_estimators),
            max_features=max_features,
            min_samples_leaf=int(min_samples_leaf),
            n_jobs=int(n_jobs),
            seed=int(seed),
            min_area_um2=float(min_area_um2),
            stain_norm=stain_norm,
            per_section_features=per_section_features,
        )
        self.forest_: RandomForestRegressor | None = None

    def _compute_features(self, patches: np.ndarray) -> np.ndarray:
        mpp = self.hyperparams["patch_um"] / self.hyperparams["out_px"]
        return morphology_features(patches, mpp, min_area_um2=self.hyperparams["min_area_um2"])[0]

    def _fit_arrays(self, x: np.ndarray, y: np.ndarray, depth: np.ndarray) -> None:
        self.params_ = {"train_x": x, "train_y": y}
        self._fit_forest()

    def _fit_forest(self) -> None:
        hp = self.hyperparams
        x, y = self.params_["train_x"], self.params_["train_y"]
        self.params_.update(_standardiser(x))
        self.forest_ = RandomForestRegressor(
            n_estimators=hp["n_estimators"],
            max_features=hp["max_features"],
            min_samples_leaf=hp["min_samples_leaf"],
            n_jobs=hp["n_jobs"],
            random_state=hp["seed"],
        )
        self.forest_.fit((x - self.params_["mean"]) / self.params_["scale"], y)

    def _after_load(self) -> None:
        self._fit_forest()

    def _predict_arrays(self, x: np.ndarray) -> np.ndarray:
        pred = self.forest_.predict((x - self.params_["mean"]) / self.params_["scale"])
        return pred.reshape(len(x), -1)


class DepthOnlyBaseline(_ImageFeatureModel):
    """Predict each spot's sequencing depth from the image, and every gene from that depth alone.

    On this data much of what image models predict is sequencing depth, so every model is
    shown beside this. RidgeCV (``alphas``) maps standardised colour/texture features to
    log1p(spot total over all genes); each gene's prediction is ``a_g + b_g × depth``, a
    per-gene affine function of the predicted depth, so its gene-wise Pearson is ± the
    correlation of predicted depth with the gene (sign of ``b_g``). ``a_g, b_g`` are the
    least-squares line of the gene's target on the training spots' depth: with
    ``gene_map="predicted"`` (default) the out-of-fold (5-fold) image-predicted depth, i.e.
    the best linear use of the predicted depth alone; with ``"observed"`` the measured depth
    (the gene's dependence on depth itself, which can have the opposite sign where the
    image-predicted depth tracks tissue regions rather than depth).
    """

    name: ClassVar[str] = "depth_only"
    description: ClassVar[str] = "Image -> sequencing depth (ridge on colour/texture) -> per-gene linear map."

    def __init__(
        self,
        patch_um: float = K.ST_SPOT_DIAMETER_UM,
        out_px: int | None = None,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        gene_map: str = "observed",
        seed: int = 0,
        stain_norm: str = "none",
        per_section_features: bool = False,
    ) -> None:
        if gene_map not in ("predicted", "observed"):
            raise ValueError(f"gene_map must be 'predicted' or 'observed', got {gene_map!r}.")
        super().__init__(patch_um, out_px, alphas=[float(a) for a in alphas], gene_map=gene_map, seed=int(seed),
                         stain_norm=stain_norm, per_section_features=per_section_features)

    def _compute_features(self, patches: np.ndarray) -> np.ndarray:
        return colour_texture_features(patches)[0]

    def _fit_arrays(self, x: np.ndarray, y: np.ndarray, depth: np.ndarray) -> None:
        alphas = self.hyperparams["alphas"]
        self.params_ = _fit_linear(x, depth[:, None], RidgeCV(alphas=alphas))
        if self.hyperparams["gene_map"] == "predicted":
            depth = _out_of_fold_depth(x, depth, alphas, self.hyperparams["seed"])
        slope, intercept = _lines(depth, y)
        self.params_["gene_slope"], self.params_["gene_intercept"] = slope, intercept

    def predict_depth_from_features(self, x: np.ndarray) -> np.ndarray:
        return _apply_linear(self.params_, x)[:, 0]

    def predict_depth(self, section: ad.AnnData) -> np.ndarray:
        """Predicted log1p(total counts) of each spot of ``section``."""
        self._check_fitted()
        return self.predict_depth_from_features(self.features(section, {}))

    def _predict_arrays(self, x: np.ndarray) -> np.ndarray:
        d = self.predict_depth_from_features(x)
        return self.params_["gene_intercept"] + d[:, None] * self.params_["gene_slope"]


class ColourTextureRidgeBaseline(_ImageFeatureModel):
    """RidgeCV from standardised colour/texture features to each gene's target (one alpha per gene).

    The "simple colour/texture features with ridge regression" reference (reported mean
    gene-wise Pearson ≈ 0.13 on her2st patient C, leave-one-section-out).
    """

    name: ClassVar[str] = "colour_texture_ridge"
    description: ClassVar[str] = "Ridge (per-gene alpha by GCV) on colour/texture features of each patch."

    def __init__(
        self,
        patch_um: float = K.ST_SPOT_DIAMETER_UM,
        out_px: int | None = None,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        stain_norm: str = "none",
        per_section_features: bool = False,
    ) -> None:
        super().__init__(patch_um, out_px, alphas=[float(a) for a in alphas], stain_norm=stain_norm, per_section_features=per_section_features)

    def _compute_features(self, patches: np.ndarray) -> np.ndarray:
        return colour_texture_features(patches)[0]

    def _fit_arrays(self, x: np.ndarray, y: np.ndarray, depth: np.ndarray) -> None:
        self.params_ = _fit_linear(x, y, RidgeCV(alphas=self.hyperparams["alphas"], alpha_per_target=True))

    def _predict_arrays(self, x: np.ndarray) -> np.ndarray:
        return _apply_linear(self.params_, x)


IMAGE_BASELINES: dict[str, Callable[..., Model]] = {
    cls.name: cls
    for cls in (
        HistogramRegressionBaseline,
        MorphologyForestBaseline,
        DepthOnlyBaseline,
        ColourTextureRidgeBaseline,
    )
}
