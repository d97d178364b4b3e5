"""The one model interface every method and baseline follows.

``Model(**hyperparams)``, ``.fit(train_sections)``, ``.predict(section) -> AnnData``
(predicted expression for the section's spots, same obs names, predicted genes as
var names, uncertainty in layers when the method has it), ``.save(dir)``, ``.load(dir)``.
Models never modify their inputs.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from stfusion import _constants as K
from stfusion.errors import StfusionError
from stfusion.models.conformal import CALIBRATION_FILE, Calibration

TARGET_SUM = 1e4
TARGET_DESCRIPTION = "log1p(counts / spot total over all genes x 1e4)"
PATCH_FIELD_UM = "patch_field_um"  # model card: side of the image patch read per spot, µm
MODEL_MPP = "microns_per_pixel"  # model card: µm per pixel of the patch after resampling
COARSE_FACTOR = 2.0  # warn when a section's pixels are this much coarser than the training sections'


class NotFittedError(StfusionError, RuntimeError):
    """predict() or save() was called before fit()."""


def target_expression(section: ad.AnnData, genes: Sequence[str] | None = None) -> np.ndarray:
    """The primary evaluation target: log1p(counts / spot total × 1e4), total over ALL genes.

    Methods train on their own normalisation but every histology comparison is scored on
    this one. Returns a dense float32 array (spots x genes) for ``genes`` (default: all).
    """
    from stfusion.data.normalize import log1p_normalize_total

    x = section.X
    totals = np.asarray(x.sum(axis=1)).ravel()
    if genes is not None:
        missing = pd.Index(genes).difference(section.var_names)
        if len(missing):
            raise StfusionError(
                f"{len(missing)} of {len(genes)} genes are not in the section (e.g. {list(missing[:3])}). "
                "Select genes present in every section (stfusion.data.genes.resolve_genes)."
            )
        x = section[:, list(genes)].X
    return log1p_normalize_total(x, target_sum=TARGET_SUM, totals=totals)


def prediction_adata(
    section: ad.AnnData,
    values: np.ndarray,
    genes: Sequence[str],
    *,
    layers: dict[str, np.ndarray] | None = None,
    method: str,
    space: str = "log1p_cp10k",
) -> ad.AnnData:
    """Wrap predictions for the spots of ``section`` as an AnnData.

    Spot names, coordinates and spatial metadata are copied from the section, so the
    result opens in scanpy/squidpy like the input. ``uns["stfusion"]`` records the method
    and the expression space of ``X``.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.shape != (section.n_obs, len(genes)):
        raise ValueError(f"predictions have shape {values.shape}, expected {(section.n_obs, len(genes))}")
    out = ad.AnnData(X=values, obs=pd.DataFrame(index=section.obs_names.copy()), var=pd.DataFrame(index=pd.Index(genes)))
    if K.SPATIAL in section.obsm:
        out.obsm[K.SPATIAL] = np.asarray(section.obsm[K.SPATIAL]).copy()
    if K.SPATIAL in section.uns:
        out.uns[K.SPATIAL] = section.uns[K.SPATIAL]
    for key, arr in (layers or {}).items():
        out.layers[key] = np.asarray(arr, dtype=np.float32)
    meta = dict(section.uns.get(K.STFUSION, {}))
    meta.update({"method": method, "expression_space": space})
    out.uns[K.STFUSION] = meta
    return out


def dense(x) -> np.ndarray:
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


class Model(ABC):
    """Base class: stores hyperparameters, the fitted genes, and a JSON model card.

    The public :meth:`fit` and :meth:`predict` are defined here once (a template method):
    ``fit`` calls the subclass's :meth:`_fit` and then records a summary of the training data
    (sections, spots, µm per pixel) for the card; ``predict`` first checks the section's scale
    (:meth:`check_section`) and then calls the subclass's :meth:`_predict`. Subclasses
    implement ``_fit`` and ``_predict`` and leave ``fit``/``predict`` alone. A subclass whose
    methods take extra arguments may override ``fit``/``predict`` with its explicit signature
    and docstring, but must delegate to ``super().fit(...)``/``super().predict(...)``.
    """

    name: ClassVar[str] = "model"
    description: ClassVar[str] = ""
    input_kind: ClassVar[str] = "histology"  # histology | reference | coordinates
    has_uncertainty: ClassVar[bool] = False
    has_super_resolution: ClassVar[bool] = False
    normalisation: ClassVar[str] = TARGET_DESCRIPTION  # training target; subclasses that train on another say so

    def __init__(self, **hyperparams: Any) -> None:
        self.hyperparams = dict(hyperparams)
        self.genes_: list[str] | None = None
        self.training_data_: dict[str, Any] | None = None
        self.calibration_: Calibration | None = None

    # -- interface (template methods: subclasses implement _fit and _predict)
    def fit(self, train_sections: Sequence[ad.AnnData], genes: Sequence[str] | None = None,
            *args: Any, calibration: str | None = None, calibration_fraction: float = 0.2, **kwargs: Any) -> Self:
        """Fit on ``train_sections`` (AnnData with counts and, for image models, the H&E).

        ``genes``: the genes to model (default: the method's own choice, e.g. the genes all
        training sections share). Further arguments are the method's own and are passed to
        :meth:`_fit` unchanged. Records a summary of the training data for the model card.
        Returns the fitted model.

        ``calibration``: hold out data the model does not train on and calibrate split-conformal
        prediction intervals on it (:meth:`calibrate`, :mod:`stfusion.models.conformal`), so that
        ``predict(section, coverage=0.9)`` gives intervals. ``None`` (default): train on
        everything, no calibration (every training and benchmark number stays as it was);
        ``"spots"``: a spatially blocked ``calibration_fraction`` of each training section's spots;
        ``"sections"``: the last training section; ``"patient"``: the last patient's sections;
        ``"auto"``: ``"sections"`` with three or more training sections (histology models),
        else ``"spots"``. What was held out is recorded in the model card.
        """
        from stfusion.models.conformal import split_for_calibration

        held: list[ad.AnnData] = []
        if calibration is not None:
            items = [train_sections] if isinstance(train_sections, ad.AnnData) else list(train_sections)
            seed = int(self.hyperparams.get("seed", 0) or 0)
            train_sections, held, calibration = split_for_calibration(
                items, calibration, calibration_fraction, seed, self.input_kind)
        result = self._fit(train_sections, genes, *args, **kwargs)
        summary = training_summary(train_sections)
        if summary is not None:
            self.training_data_ = summary
        self.calibration_ = None
        if held:
            self.calibrate(held, kind=calibration)
            if calibration == "spots":
                self.calibration_.extra["fraction"] = float(calibration_fraction)
        return result

    def predict(self, section: ad.AnnData, *args: Any, coverage: float | None = None, interval: str = "auto",
                **kwargs: Any) -> ad.AnnData:
        """Predicted expression for the spots of ``section`` (AnnData: same spot names, the
        model's genes as var names, uncertainty in layers when the method has it).

        Checks first that the section can be read at the scale the model expects
        (:meth:`check_section`). Further arguments are the method's own and are passed to
        :meth:`_predict` unchanged. ``coverage`` (e.g. 0.9): add prediction intervals, layers
        ``lower``/``upper`` in the space of ``X`` and ``uns["stfusion"]["coverage"]``
        (see :meth:`add_intervals`; ``interval`` chooses how).
        """
        self.check_section(section)
        out = self._predict(section, *args, **kwargs)
        return out if coverage is None else self.add_intervals(out, coverage, interval)

    # -- prediction intervals (split conformal: stfusion.models.conformal)
    def calibrate(self, sections: Sequence[ad.AnnData] | ad.AnnData, kind: str = "sections", *,
                  normalise: bool | None = None, **predict_kwargs: Any) -> Self:
        """Calibrate prediction intervals on ``sections`` the model did not train on (held-out spots
        of the training sections, held-out sections, or another patient's sections).

        Predicts them, and keeps per gene the sorted scores ``|measured - predicted|`` in the space
        of ``X`` (divided by the predicted SD when the predictions carry one and ``normalise`` is
        not False). ``kind`` labels the calibration data in the model card (``"spots"``,
        ``"sections"``, ``"patient"``, or your own). Replaces an earlier calibration; saved with the
        model. Returns the model.
        """
        from stfusion.models.conformal import CalibrationError, prediction_space, truth_in_space

        genes = self._check_fitted()
        items = [sections] if isinstance(sections, ad.AnnData) else list(sections)
        truths, preds, sds, spaces, ids = [], [], [], set(), []
        for i, s in enumerate(items):
            pred = self.predict(s, **predict_kwargs)
            space = prediction_space(pred)
            spaces.add(space)
            truths.append(truth_in_space(s, genes, space))
            preds.append(dense(pred[s.obs_names, genes].X).astype(np.float64))
            sd = pred[s.obs_names, genes].layers[K.LAYER_PRED_SD] if K.LAYER_PRED_SD in pred.layers else None
            sds.append(None if sd is None else dense(sd).astype(np.float64))
            ids.append(str(s.uns.get(K.STFUSION, {}).get(K.SECTION_ID) or f"section{i}"))
        if len(spaces) != 1:
            raise CalibrationError(f"the calibration predictions are in several expression spaces: {sorted(spaces)}.")
        use_sd = all(sd is not None for sd in sds) if normalise is None else bool(normalise)
        if use_sd and any(sd is None for sd in sds):
            raise CalibrationError(f"normalise=True needs predictions with layers['{K.LAYER_PRED_SD}'].")
        self.calibration_ = Calibration.from_residuals(
            np.vstack(truths), np.vstack(preds), genes, kind=kind, space=spaces.pop(),
            sd=np.vstack(sds) if use_sd else None, sources=ids)
        return self

    def add_intervals(self, pred: ad.AnnData, coverage: float, interval: str = "auto") -> ad.AnnData:
        """``pred`` (a prediction of this model) with layers ``lower``/``upper`` at nominal ``coverage``
        and ``uns["stfusion"]["coverage"]`` (nominal, calibration kind, method); in place, returned.

        ``interval``: ``"conformal"`` (the calibration of :meth:`calibrate` / ``fit(calibration=...)``),
        ``"model"`` (the model's own SD, ``X ± z SD``: XFuse's posterior, the GP's predictive SD),
        ``"auto"``: conformal when calibrated, else the model's SD when it gives one. A grid
        prediction (XFuse's ``predict_grid``) takes the model's SD only: the conformal calibration
        holds for spots, whose support differs from a grid cell's.
        """
        from stfusion.models.conformal import (
            NONNEGATIVE_SPACES,
            CalibrationError,
            check_coverage,
            gaussian_intervals,
            prediction_space,
            with_intervals,
        )

        coverage = check_coverage(coverage)
        if interval not in ("auto", "conformal", "model"):
            raise CalibrationError(f"interval must be 'auto', 'conformal' or 'model', got {interval!r}.")
        cal = getattr(self, "calibration_", None)
        has_sd = K.LAYER_PRED_SD in pred.layers
        grid_um = pred.uns.get(K.STFUSION, {}).get(K.GRID_UM)
        if interval == "auto":
            interval = "model" if has_sd and (cal is None or grid_um is not None) else "conformal"
        space = prediction_space(pred)
        values = dense(pred.X).astype(np.float64)
        sd = dense(pred.layers[K.LAYER_PRED_SD]).astype(np.float64) if has_sd else None
        nonneg = space in NONNEGATIVE_SPACES
        if interval == "model":
            if sd is None:
                raise CalibrationError(f"{type(self).__name__} predicts no SD (layers['{K.LAYER_PRED_SD}']); "
                                       "use interval='conformal' after calibrating.")
            lower, upper = gaussian_intervals(values, sd, coverage, nonnegative=nonneg)
            info = {"nominal": coverage, "calibration": None, "interval": "model SD, normal approximation (X ± z SD)"}
            return with_intervals(pred, lower, upper, info)
        if grid_um is not None:
            raise CalibrationError(
                f"conformal intervals are calibrated on spots, not on {float(grid_um):g} µm grid cells (another support); "
                "for a grid use the model's own SD (interval='model', CLI --interval model).")
        if cal is None:
            raise CalibrationError(
                f"{type(self).__name__} is not calibrated, so it has no prediction intervals. Calibrate it on data it "
                "did not train on: fit with model.fit(sections, calibration='sections') (or 'spots': held-out spots of "
                "each training section; 'patient': another patient's sections), or call "
                "model.calibrate(held_out_sections) after fitting.")
        if cal.space != space:
            raise CalibrationError(f"the calibration is in expression space {cal.space!r}, this prediction in {space!r}.")
        lower, upper = cal.intervals(values, list(pred.var_names), coverage, sd=sd if cal.normalised else None,
                                     nonnegative=nonneg)
        info = {"nominal": coverage, "calibration": cal.kind, "interval": "split conformal"
                + (" (SD-normalised)" if cal.normalised else ""), "calibration_sections": list(cal.sources),
                "calibration_spots": int(cal.scores.shape[0])}
        return with_intervals(pred, lower, upper, _shift_caveat(pred, info))

    @abstractmethod
    def _fit(self, train_sections: Sequence[ad.AnnData], genes: Sequence[str] | None = None) -> Self:
        """The method's training; called by :meth:`fit`. Sets ``genes_`` and returns ``self``."""

    @abstractmethod
    def _predict(self, section: ad.AnnData) -> ad.AnnData:
        """The method's prediction; called by :meth:`predict` after :meth:`check_section`."""

    # -- helpers
    def _check_fitted(self) -> list[str]:
        if self.genes_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call .fit(train_sections) or .load(dir) first.")
        return self.genes_

    def card(self) -> dict[str, Any]:
        """The model card: what the model is, what it was trained on, and the scale it expects."""
        from stfusion import __version__

        return {
            "method": self.name,
            "version": __version__,
            "hyperparams": self.hyperparams,
            "genes": self.genes_,
            "n_genes": None if self.genes_ is None else len(self.genes_),
            "input": self.input_kind,
            "normalisation": self.normalisation,
            **self.image_scale(),
            "training_data": getattr(self, "training_data_", None),
            "validation": self.validation_summary(),
            "calibration": None if getattr(self, "calibration_", None) is None else self.calibration_.summary(),
        }

    def image_scale(self) -> dict[str, float | None]:
        """Physical scale of the image input: ``patch_field_um`` (side of the patch read per spot)
        and ``microns_per_pixel`` (of the patch after resampling). None for models without images.

        Default: the ``patch_um`` and ``out_px`` hyperparameters when the model has them.
        """
        field, px = self.hyperparams.get("patch_um"), self.hyperparams.get("out_px")
        return {
            PATCH_FIELD_UM: None if field is None else float(field),
            MODEL_MPP: None if field is None or not px else float(field) / float(px),
        }

    def validation_summary(self) -> dict[str, Any]:
        """Metrics on a validation split held out during training. Default: none was used."""
        return {"split": None, "note": "no validation split was held out during training"}

    def check_section(self, section: ad.AnnData) -> None:
        """Fail clearly when ``section`` cannot be predicted at the scale the model expects.

        Models with image input read patches of a physical size (µm) and resample them, so any
        microns-per-pixel is rescaled soundly; the section must record one. A section much coarser
        than the training sections only logs a warning (its patches are upsampled, so detail the
        model learnt from is not there to see).

        A section with measured genes must share at least half of the model's genes: a model
        applied to another species' or naming scheme's data fails here, before any work.
        """
        genes, names = self.genes_ or [], list(section.var_names)
        shared = len(set(genes) & set(names))
        if self.input_kind != "reference" and genes and names and shared < 0.5 * len(genes):
            folded = len({g.upper() for g in genes} & {g.upper() for g in names})
            raise StfusionError(
                f"The section has {shared} of the model's {len(genes)} genes (model e.g. {', '.join(genes[:3])}; "
                f"section e.g. {', '.join(names[:3])}). Is it the data the model was trained for? Check the species "
                f"and the gene naming (symbols vs Ensembl ids; {folded} match when upper/lower case is ignored)."
            )
        if self.input_kind != "histology":
            return
        rows = (getattr(self, "training_data_", None) or {}).get("sections") or []
        trained = [r["microns_per_pixel"] for r in rows if r.get("microns_per_pixel")]
        check_section_scale(section, float(np.median(trained)) if trained else None, type(self).__name__)

    def save(self, directory: str | Path) -> Path:
        """Write the model card (JSON); subclasses add their weights."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "model.json").write_text(json.dumps(self.card(), indent=2, default=_json_default))
        cal_path = directory / CALIBRATION_FILE
        if getattr(self, "calibration_", None) is not None:
            self.calibration_.save(cal_path)
        elif cal_path.exists():
            cal_path.unlink()  # a stale calibration of an earlier save in the same folder
        return directory

    @classmethod
    def from_card(cls, directory: str | Path) -> tuple[Model, dict[str, Any]]:
        """A new model rebuilt from a saved card: checks the method, restores the
        hyperparameters and genes. Subclasses' ``load`` then restore their fitted arrays."""
        card = cls.read_card(directory)
        if card.get("method") != cls.name:
            raise StfusionError(
                f"{directory} holds a '{card.get('method')}' model, not '{cls.name}'. "
                "Load it with stfusion.models.api.load_model(dir), which picks the class from the card."
            )
        model = cls(**card["hyperparams"])
        model.genes_ = list(card["genes"])
        model.training_data_ = card.get("training_data")
        cal_path = Path(directory) / CALIBRATION_FILE
        if cal_path.exists():
            extra = {k: v for k, v in (card.get("calibration") or {}).items() if k == "fraction"}
            model.calibration_ = Calibration.load(cal_path, extra)
        return model, card

    @staticmethod
    def read_card(directory: str | Path) -> dict[str, Any]:
        path = Path(directory) / "model.json"
        if not path.exists():
            raise StfusionError(f"{directory} is not a saved stfusion model (no model.json). Save one with model.save(dir).")
        return json.loads(path.read_text())


def training_summary(sections: Any) -> dict[str, Any] | None:
    """Sections, spots and µm per pixel of the training data (for the model card)."""
    items = [sections] if isinstance(sections, ad.AnnData) else list(sections) if isinstance(sections, (list, tuple)) else []
    items = [s for s in items if isinstance(s, ad.AnnData)]
    if not items:
        return None
    rows = []
    for i, s in enumerate(items):
        lib = next(iter(s.uns.get(K.SPATIAL, {}).values()), {}) if isinstance(s.uns.get(K.SPATIAL), dict) else {}
        mpp = lib.get(K.MICRONS_PER_PIXEL) if isinstance(lib, dict) else None
        sid = s.uns.get(K.STFUSION, {}).get(K.SECTION_ID) or f"section{i}"
        rows.append({"section": str(sid), "spots": int(s.n_obs), "genes": int(s.n_vars),
                     "microns_per_pixel": None if mpp is None else float(mpp)})
    return {"n_sections": len(rows), "n_spots": sum(r["spots"] for r in rows), "sections": rows}


def check_section_scale(section: ad.AnnData, trained_mpp: float | None, who: str) -> None:
    """Raise when the section has no microns per pixel; warn when it is much coarser than ``trained_mpp``
    (the training sections' median)."""
    from stfusion.errors import ScaleError

    lib = next(iter(section.uns.get(K.SPATIAL, {}).values()), None) if isinstance(section.uns.get(K.SPATIAL), dict) else None
    mpp = lib.get(K.MICRONS_PER_PIXEL) if isinstance(lib, dict) else None
    if mpp is None or not np.isfinite(float(mpp)) or float(mpp) <= 0:
        raise ScaleError(
            f"{who} reads the H&E at a physical scale, but the section records no valid microns per pixel "
            f"(uns['spatial'][library]['{K.MICRONS_PER_PIXEL}'] = {mpp!r}). Read it again with "
            "--microns-per-pixel (`stfusion read ... --microns-per-pixel 0.5`)."
        )
    if trained_mpp and float(mpp) > COARSE_FACTOR * float(trained_mpp):
        logging.getLogger("stfusion").warning(
            f"{who} was trained on images of {trained_mpp:.3g} µm/px but this section's has {float(mpp):.3g} µm/px: "
            f"its patches are {float(mpp) / trained_mpp:.1f}x coarser, so predictions may be less accurate than "
            "on the training data. Use a higher-resolution image of the section if there is one."
        )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _shift_caveat(pred: ad.AnnData, info: dict[str, Any]) -> dict[str, Any]:
    """``info`` marked (and a warning logged) when the prediction's stain or features lie outside the
    training sections' (:mod:`stfusion.data.shift`): split-conformal coverage assumes they do not."""
    from stfusion.data.shift import FEATURE_KEY, STAIN_KEY

    meta = pred.uns.get(K.STFUSION, {})
    shifted = [k for k in (STAIN_KEY, FEATURE_KEY) if isinstance(meta.get(k), Mapping) and meta[k].get("flagged")]
    if shifted:
        logging.getLogger("stfusion").warning("The prediction intervals were calibrated on data like the training sections; this slide lies outside "
                    "them (%s), so their coverage can fall short (her2st patient C -> B4: 0.83-0.88 observed at 90%%). "
                    "Calibrate on sections like this one: model.calibrate(sections).", ", ".join(shifted))
    return {**info, "shift_flagged": bool(shifted)}
