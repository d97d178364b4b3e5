"""XFuse (Bergenstråhle et al., Nat Biotech 2022): histology and spot counts as effects of
a latent tissue state; super-resolved expression with uncertainty, also from images alone.

See :mod:`.nn` (networks), :mod:`.likelihood` (collapsed negative-binomial model),
:mod:`.data` and :mod:`.sampling` (working resolution, areas, patches), :mod:`.metagenes`
(drop-and-split), :mod:`.training` (the loop), :mod:`.predict` (Monte Carlo prediction),
:mod:`.outputs` (DE, summarized maps, image stacks), :mod:`.field` (an optional
per-section expression field) and :mod:`.gene_field` (an optional per-gene Gaussian-process
field); the two fields are not part of the paper's model.

Predictions of :meth:`XFuse.predict` are in the benchmarks' target space
``log1p(nu_g / total x 1e4)``: ``nu_g`` is the conditional mean expression (expected count)
of gene g in the area; ``total`` estimates the area's expected count over *all* genes as
``sum of nu over the modelled genes / f``, with ``f`` the fraction of all training counts
that the modelled genes hold (pooled over the training observations). Both are computed
per posterior sample; ``X`` is the mean over samples and ``layers["sd"]`` the SD.
``layers["mean_counts"]``/``layers["sd_counts"]`` are the posterior mean/SD of ``nu``.

Covariates (``fit(..., covariates=[{name: value}, ...])``, one dict per section): see
:mod:`.covariates`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import torch

from stfusion import _constants as K
from stfusion.errors import StfusionError
from stfusion.models.base import Model, prediction_adata
from stfusion.models.xfuse import data as D
from stfusion.models.xfuse import predict as P
from stfusion.models.xfuse.covariates import effect_names, indicators
from stfusion.models.xfuse.likelihood import ExpressionModel, fit_gene_baselines
from stfusion.models.xfuse.nn import XFuseNet
from stfusion.models.xfuse.presets import PRESETS

log = logging.getLogger("stfusion")

WEIGHTS_FILE = "weights.pt"
HISTORY_FILE = "history.json"

class XFuse(Model):
    """XFuse: deep generative fusion of histology and spot counts.

    Parameters
    ----------
    resolution_um
        Working resolution, µm per pixel (images are resampled to it from full resolution).
    patch_px, batch_size
        Training patch side (working pixels) and patches per step.
    steps, epochs
        Optimisation steps; ``epochs`` (passes over the tissue area of all sections, in
        patches) overrides ``steps`` when given.
    lr, expr_lr
        Adam learning rates of the networks and of the expression parameters.
    max_metagenes, metagene_interval, metagene_drop
        Cap of drop-and-split, steps between its rounds (0: never, one metagene), and
        whether non-contributing metagenes are dropped (False: splits only).
    kl_warmup, expr_warmup
        Fractions of the steps over which the latent KL's weight in the loss, and the
        learning rate of the expression parameters, rise from 0 (see :mod:`.training`).
    depth, base_width
        U-Net levels and channels of the first level.
    samples, seed
        Default Monte Carlo samples of predictions; seed of training and prediction.
    expression_field_um
        Cell size (µm) of a per-section spatial random effect on the metagene logits and
        the scale (:mod:`.field`); 0 (default): none, the paper's model.
    field_smoothness
        Precision of the field's differences between neighbouring cells (0: independent cells).
    gene_field
        A per-section, per-gene Gaussian-process random effect on the log rates
        (:mod:`.gene_field`); False (default): none, the paper's model. On the MOB hold-out
        it beat the Gaussian process with ``expr_lr=0.03`` (benchmarks/xfuse/README.md).
    image_scale
        Add to the scale's pre-activation a linear map of the image's local colour statistics
        (means of each channel and its square over 50 µm at the fast preset): a direct image ->
        spot depth path, started from a ridge regression of the training spots' log count
        density on those statistics (:mod:`.scale_init`), where the decoder's path needs the
        latent representation first. False (default): the paper's model (stfusion's extension).
    background_margin_um
        Non-tissue pixels within this distance of the tissue mask are left out of the
        likelihood instead of joining the zero-count background pseudo-spot, so that tissue
        the mask misses (pale edges) is not taught to hold no counts; 0: the paper's rule.
    max_time_s, progress, augment
        Wall-clock budget of training; progress bars; patch augmentation.
    preset
        ``"fast"`` (default, CPU-sized) or ``"paper"``; explicit arguments override it.
    """

    name: ClassVar[str] = "xfuse"
    description: ClassVar[str] = "Deep generative model of histology and counts (Bergenstråhle et al. 2022); super-resolution with uncertainty"
    input_kind: ClassVar[str] = "histology"
    normalisation: ClassVar[str] = "raw counts (negative binomial likelihood); predictions as log1p(counts / total x 1e4)"
    has_uncertainty: ClassVar[bool] = True
    has_super_resolution: ClassVar[bool] = True

    def __init__(
        self,
        resolution_um: float | None = None,
        patch_px: int | None = None,
        batch_size: int | None = None,
        steps: int | None = None,
        epochs: float | None = None,
        lr: float | None = None,
        expr_lr: float | None = None,
        max_metagenes: int = 40,
        metagene_interval: int | None = None,
        metagene_drop: bool = True,
        kl_warmup: float = 0.3,
        expr_warmup: float = 0.2,
        depth: int | None = None,
        base_width: int | None = None,
        expression_field_um: float = 0.0,
        field_smoothness: float = 0.0,
        gene_field: bool = False,
        image_scale: bool = False,
        background_margin_um: float = 0.0,
        samples: int = 10,
        seed: int = 0,
        max_time_s: float | None = None,
        preset: str | None = None,
        progress: bool = True,
        augment: bool = True,
    ) -> None:
        preset = preset or "fast"
        if preset not in PRESETS:
            raise StfusionError(f"Unknown XFuse preset {preset!r}; use one of {sorted(PRESETS)}.")
        given = {"resolution_um": resolution_um, "patch_px": patch_px, "batch_size": batch_size, "steps": steps,
                 "lr": lr, "expr_lr": expr_lr, "metagene_interval": metagene_interval, "depth": depth,
                 "base_width": base_width}
        hp = {**PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
        hp.update(preset=preset, epochs=epochs, max_metagenes=int(max_metagenes), kl_warmup=float(kl_warmup),
                  expr_warmup=float(expr_warmup), metagene_drop=bool(metagene_drop),
                  expression_field_um=float(expression_field_um), field_smoothness=float(field_smoothness),
                  gene_field=bool(gene_field), image_scale=bool(image_scale),
                  background_margin_um=float(background_margin_um),
                  samples=int(samples), seed=int(seed), max_time_s=max_time_s, augment=bool(augment))
        if hp["resolution_um"] <= 0 or hp["patch_px"] < 8 or hp["batch_size"] < 1 or hp["max_metagenes"] < 1:
            raise StfusionError("XFuse needs resolution_um > 0, patch_px >= 8, batch_size >= 1 and max_metagenes >= 1.")
        if hp["expression_field_um"] < 0 or hp["background_margin_um"] < 0:
            raise StfusionError("expression_field_um and background_margin_um must be >= 0 (0: none), got "
                                f"{hp['expression_field_um']} and {hp['background_margin_um']}.")
        super().__init__(**hp)
        self.progress = bool(progress)
        self.net_: XFuseNet | None = None
        self.expr_: ExpressionModel | None = None
        self.state_: dict[str, Any] = {}
        self.history_: list[dict[str, Any]] = []
        self.metagene_history_: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ covariates
    def _beta(self, covariates: Mapping[str, Any] | None) -> np.ndarray:
        return indicators(self.state_.get("effects", []), covariates)

    def _beta_for(self, section: ad.AnnData | None, covariates: Mapping[str, Any] | None) -> np.ndarray:
        if covariates is not None:
            return self._beta(covariates)
        name = D.section_name(section) if section is not None else None
        stored = self.state_.get("section_beta", {})
        return np.asarray(stored[name], dtype=np.float32) if name in stored else self._beta(None)

    # ------------------------------------------------------------------ fit
    def _build(self, n_genes: int, n_effects: int) -> None:
        hp = self.hyperparams
        self.net_ = XFuseNet(hp["depth"], hp["base_width"], hp["max_metagenes"], image_scale=bool(hp.get("image_scale", False)))
        self.expr_ = ExpressionModel(n_genes, hp["max_metagenes"], n_effects)

    def fit(self, train_sections: Sequence[ad.AnnData], genes: Sequence[str] | None = None,
            covariates: Sequence[Mapping[str, Any]] | None = None, *, calibration: str | None = None,
            calibration_fraction: float = 0.2) -> XFuse:
        """Train on sections (counts + images). ``covariates``: one ``{name: value}`` per section.

        ``calibration``: hold out data for a conformal recalibration of the posterior intervals
        (:meth:`Model.fit`; default None: no hold-out, the posterior SD as it is). The
        calibration scores are SD-normalised, ``|measured - mean| / SD``, so a recalibrated
        interval keeps the posterior's shape and only its scale changes per gene.

        (XFuse's signature for :meth:`Model.fit`, which records the training data for the card
        and runs :meth:`_fit`.)
        """
        if covariates is not None and calibration not in (None, "spots"):
            raise StfusionError("with covariates (one per section) hold out spots for calibration (calibration='spots'), "
                                "or fit without calibration and call model.calibrate(held_out_sections) afterwards.")
        return super().fit(train_sections, genes, covariates=covariates, calibration=calibration,
                           calibration_fraction=calibration_fraction)

    def _fit(self, train_sections: Sequence[ad.AnnData], genes: Sequence[str] | None = None,
             covariates: Sequence[Mapping[str, Any]] | None = None) -> XFuse:
        from stfusion.data.genes import as_section_list, shared_genes
        from stfusion.data.normalize import row_totals
        from stfusion.models.xfuse.field import attach_field
        from stfusion.models.xfuse.nn import IMAGE_SCALE_KERNEL
        from stfusion.models.xfuse.sampling import PatchSampler, image_stats
        from stfusion.models.xfuse.scale_init import init_image_scale
        from stfusion.models.xfuse.training import baseline_sizes, one_metagene_warning, train
        from stfusion.train.seed import seed_everything

        start = time.perf_counter()
        sections = as_section_list(train_sections)
        hp = self.hyperparams
        self.genes_ = list(genes) if genes is not None else shared_genes(sections)
        effects = effect_names(covariates, len(sections))
        self.state_ = {"effects": effects}
        betas = [self._beta(covariates[i] if covariates else None) for i in range(len(sections))]
        names = [D.section_name(s, f"section{i}") for i, s in enumerate(sections)]
        self.state_["section_beta"] = {n: b.tolist() for n, b in zip(names, betas, strict=True)}
        modelled = sum(float(row_totals(s[:, self.genes_].X).sum()) for s in sections)
        total = sum(float(row_totals(s.X).sum()) for s in sections)
        self.state_["modelled_fraction"] = modelled / total if total > 0 else 1.0
        self.state_["spot_diameter_um"] = float(np.median([D.spot_diameter_px(s) * D.microns_per_pixel(s) for s in sections]))
        margin_px = hp.get("background_margin_um", 0.0) / hp["resolution_um"]
        datas = [D.prepare_section(s, hp["resolution_um"], b, self.genes_, training=True, background_margin_px=margin_px)
                 for s, b in zip(sections, betas, strict=True)]
        seed_everything(hp["seed"])
        self._build(len(self.genes_), len(effects))
        counts = np.concatenate([d.counts for d in datas])
        sizes = np.concatenate([baseline_sizes(d.labels, d.counts.shape[0]) for d in datas])
        t, u = fit_gene_baselines(counts, np.maximum(sizes, 1.0))
        with torch.no_grad():
            self.expr_.t.copy_(torch.from_numpy(t))
            self.expr_.u.copy_(torch.from_numpy(u))
        self.net_.init_image_heads(*image_stats(datas))
        if hp["image_scale"]:
            self.state_["image_scale_init"] = init_image_scale(self.net_, datas, IMAGE_SCALE_KERNEL)
        if (spec := attach_field(self.net_, datas, hp)) is not None:
            self.state_["field"] = spec
        self._attach_gene_field(sections, datas)
        sampler = PatchSampler(datas, hp["patch_px"], seed=hp["seed"], augment=hp["augment"])
        steps = hp["steps"] if hp["epochs"] is None else max(1, math.ceil(hp["epochs"] * sampler.patches_per_epoch / hp["batch_size"]))
        self.history_, self.metagene_history_, timed_out = train(
            self.net_, self.expr_, sampler, steps=steps, batch_size=hp["batch_size"], lr=hp["lr"], expr_lr=hp["expr_lr"],
            metagene_interval=hp["metagene_interval"], metagene_drop=hp["metagene_drop"],
            kl_warmup=int(hp["kl_warmup"] * steps),
            expr_warmup=int(hp["expr_warmup"] * steps), seed=hp["seed"],
            max_time_s=hp["max_time_s"], progress=self.progress)
        self._refit_gene_field(sections, datas)
        self.state_.update(training_sections=names, steps_run=len(self.history_), timed_out=bool(timed_out),
                           fit_seconds=time.perf_counter() - start, metagenes=self.expr_.n_active)
        log.info("xfuse: %d steps in %.0f s, %d metagenes", len(self.history_), self.state_["fit_seconds"], self.expr_.n_active)
        if (warning := one_metagene_warning(self.expr_.n_active, len(self.history_), hp["metagene_interval"])) is not None:
            log.warning(warning)
        return self

    def _attach_gene_field(self, sections: list[ad.AnnData], datas: list[D.SectionData]) -> None:
        """The per-section gene field (see :mod:`.gene_field`), its prior fitted on each section."""
        from stfusion.models.xfuse.gene_field import build_field

        if self.hyperparams["gene_field"]:
            self.expr_.gene_field = build_field(sections, datas, self.genes_)
            self.state_["gene_field"] = self.expr_.gene_field.spec()

    def _refit_gene_field(self, sections: list[ad.AnnData], datas: list[D.SectionData]) -> None:
        from stfusion.models.xfuse.training import refit_fields

        if self.expr_.gene_field is not None:
            refit_fields(self.net_, self.expr_, sections, datas, self.hyperparams["seed"], self.hyperparams["patch_px"])

    # ------------------------------------------------------------------ prediction helpers
    def _fitted(self) -> tuple[XFuseNet, ExpressionModel]:
        self._check_fitted()
        return self.net_, self.expr_

    def _gene_index(self, genes: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
        all_genes = self._check_fitted()
        if genes is None:
            return list(all_genes), np.arange(len(all_genes))
        pos = {g: i for i, g in enumerate(all_genes)}
        missing = [g for g in genes if g not in pos]
        if missing:
            raise StfusionError(f"{len(missing)} genes are not modelled (e.g. {missing[:3]}); the model has {len(all_genes)} genes.")
        return list(genes), np.asarray([pos[g] for g in genes])

    def _data(self, section: ad.AnnData, covariates: Mapping[str, Any] | None = None) -> D.SectionData:
        return D.prepare_section(section, self.hyperparams["resolution_um"], self._beta_for(section, covariates))

    def _draws(self, data: D.SectionData, W, samples: int | None) -> P.Draws:
        net, expr = self._fitted()
        n = int(samples or self.hyperparams["samples"])
        return P.draw_areas(net, expr, data, W, n, self.hyperparams["seed"], frame_px=self.hyperparams["patch_px"],
                            progress=self.progress)

    def _stats(self, draws: P.Draws, idx: np.ndarray) -> dict[str, np.ndarray]:
        return P.summarize(draws, idx, self.state_["modelled_fraction"])

    def _meta(self, out: ad.AnnData, samples: int | None, **extra: Any) -> ad.AnnData:
        out.uns[K.STFUSION].update(method=self.name, samples=int(samples or self.hyperparams["samples"]),
                                   seed=int(self.hyperparams["seed"]), resolution_um=float(self.hyperparams["resolution_um"]),
                                   total_estimate="sum of nu over modelled genes / training fraction of counts they hold",
                                   modelled_fraction=float(self.state_["modelled_fraction"]), **extra)
        return out

    @staticmethod
    def _layers(stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {K.LAYER_PRED_SD: stats["sd"], K.LAYER_MEAN_COUNTS: stats["mean_counts"], K.LAYER_SD_COUNTS: stats["sd_counts"]}

    # ------------------------------------------------------------------ predict
    def predict(self, section: ad.AnnData, samples: int | None = None, genes: Sequence[str] | None = None,
                covariates: Mapping[str, Any] | None = None, *, coverage: float | None = None,
                interval: str = "auto") -> ad.AnnData:
        """Expression of the section's spots (see the module docstring for X and the layers).

        Works for any section with an image: one used in training, held-out spots of it,
        or a new section (counts are not read). ``samples``: Monte Carlo samples (default: the
        ``samples`` hyperparameter); ``genes``: a subset of the modelled genes; ``covariates``:
        the section's ``{name: value}`` (default: those of the training section with the same
        section id, else none).

        ``coverage`` (e.g. 0.9): layers ``lower``/``upper``. ``interval="model"``: the posterior
        interval ``X ± z SD`` (normal approximation of the posterior of the expected expression;
        it leaves out the counting noise of a measured spot, so it is narrower than a measured
        value's spread); ``"conformal"``: recalibrated on held-out data (``fit(calibration=...)``
        or :meth:`calibrate`); ``"auto"``: conformal when calibrated, else the posterior.

        (XFuse's signature for :meth:`Model.predict`, which checks the section's scale and runs
        :meth:`_predict`.)
        """
        return super().predict(section, samples=samples, genes=genes, covariates=covariates, coverage=coverage,
                               interval=interval)

    def _predict(self, section: ad.AnnData, samples: int | None = None, genes: Sequence[str] | None = None,
                 covariates: Mapping[str, Any] | None = None) -> ad.AnnData:
        names, idx = self._gene_index(genes)
        data = self._data(section, covariates)
        W = D.area_weights(D.area_spec(section), data.fx, data.fy, data.shape)
        stats = self._stats(self._draws(data, W, samples), idx)
        out = prediction_adata(section, stats["mean"], names, layers=self._layers(stats), method=self.name)
        if (warning := P.constant_prediction_warning(stats["mean"], self.state_.get("metagenes"))) is not None:
            log.warning(warning)
        return self._meta(out, samples)

    def predict_samples(self, section: ad.AnnData, areas: Any = None, samples: int | None = None,
                        genes: Sequence[str] | None = None, kind: str = "mean",
                        covariates: Mapping[str, Any] | None = None) -> np.ndarray:
        """Posterior samples (samples x areas x genes) of the expected counts ``nu``.

        ``areas``: None (the section's observations), a dict or list of full-resolution
        boolean masks, or an (n, 2k) array of centres (x, y full-res px; the union of discs
        of the section's spot diameter). ``kind="counts"`` draws predictive counts (the
        negative binomial mixture) instead of ``nu``.
        """
        _, idx = self._gene_index(genes)
        data = self._data(section, covariates)
        W = self._area_matrix(section, data, areas)
        draws = self._draws(data, W, samples)
        nu = P.expected_counts(draws, idx)
        if kind == "mean":
            return nu
        if kind != "counts":
            raise StfusionError(f"kind must be 'mean' or 'counts', got {kind!r}.")
        _, expr = self._fitted()
        return P.predictive_counts(expr, nu, data.beta, idx, self.hyperparams["seed"])

    def _area_matrix(self, section: ad.AnnData, data: D.SectionData, areas: Any):
        if areas is None:
            return D.area_weights(D.area_spec(section), data.fx, data.fy, data.shape)
        if isinstance(areas, Mapping):
            return P.mask_weights(data, list(areas.values()))
        if isinstance(areas, list):
            return P.mask_weights(data, areas)
        arr = np.asarray(areas)
        if arr.ndim == 2 and arr.dtype != bool and arr.shape[1] % 2 == 0 and arr.shape != tuple(data.fullres_hw):
            return D.area_weights(D.discs_spec(arr, data.spot_radius_px), data.fx, data.fy, data.shape)
        return P.mask_weights(data, list(arr) if arr.ndim == 3 else [arr])

    def predict_grid(self, section: ad.AnnData | D.SectionData, grid_um: float = 10.0, genes: Sequence[str] | None = None,
                     samples: int | None = None, tissue_only: bool = True,
                     covariates: Mapping[str, Any] | None = None) -> ad.AnnData:
        """Super-resolved expression on a grid of ``grid_um`` µm cells over the tissue.

        Returns cells x genes (X and layers as :meth:`predict`), ``obs`` grid_row/grid_col,
        ``obsm["spatial"]`` cell centres (full-res px), ``uns["stfusion"]`` grid_um and the
        full grid's shape. ``tissue_only=False`` covers the whole image.
        """
        import pandas as pd

        names, idx = self._gene_index(genes)
        data = section if isinstance(section, D.SectionData) else self._data(section, covariates)
        grid = P.grid_weights(data, grid_um, tissue_only)
        if grid.W.shape[0] == 0:
            raise StfusionError("No tissue found for the grid; pass tissue_only=False or check the image.")
        stats = self._stats(self._draws(data, grid.W, samples), idx)
        obs = pd.DataFrame({K.GRID_ROW: grid.rc[:, 0], K.GRID_COL: grid.rc[:, 1]},
                           index=[f"cell_{r}_{c}" for r, c in grid.rc])
        out = ad.AnnData(X=stats["mean"], obs=obs, var=pd.DataFrame(index=pd.Index(names)))
        for key, arr in self._layers(stats).items():
            out.layers[key] = arr
        out.obsm[K.SPATIAL] = grid.centres_px(data.mpp)
        if isinstance(section, ad.AnnData) and K.SPATIAL in section.uns:
            out.uns[K.SPATIAL] = section.uns[K.SPATIAL]
        out.uns[K.STFUSION] = {K.SECTION_ID: data.name, "expression_space": "log1p_cp10k", "microns_per_pixel": data.mpp}
        return self._meta(out, samples, **{K.GRID_UM: float(grid_um), K.GRID_SHAPE: list(grid.shape)})

    def predict_masks(self, section: ad.AnnData, masks: Mapping[str, np.ndarray], samples: int | None = None,
                      genes: Sequence[str] | None = None, covariates: Mapping[str, Any] | None = None) -> ad.AnnData:
        """Expression of annotated areas (full-resolution boolean masks): areas x genes."""
        import pandas as pd

        names, idx = self._gene_index(genes)
        data = self._data(section, covariates)
        stats = self._stats(self._draws(data, P.mask_weights(data, list(masks.values())), samples), idx)
        out = ad.AnnData(X=stats["mean"], obs=pd.DataFrame(index=pd.Index([str(k) for k in masks])),
                         var=pd.DataFrame(index=pd.Index(names)))
        for key, arr in self._layers(stats).items():
            out.layers[key] = arr
        out.uns[K.STFUSION] = {K.SECTION_ID: data.name, "expression_space": "log1p_cp10k"}
        return self._meta(out, samples)

    def differential_expression(self, section: ad.AnnData, mask_a: np.ndarray, mask_b: np.ndarray,
                                samples: int | None = None, genes: Sequence[str] | None = None):
        """Posterior log2 fold change of normalised means, area A vs area B (see :mod:`.outputs`)."""
        from stfusion.models.xfuse.outputs import de_table

        names, idx = self._gene_index(genes)
        nu = self.predict_samples(section, areas={"a": mask_a, "b": mask_b}, samples=samples)
        return de_table(nu, names, idx)

    def summarized_map(self, section: ad.AnnData | D.SectionData) -> np.ndarray:
        """PC1-3 of the metagene activities and -s as CMYK, as an RGB uint8 image at the working resolution."""
        from stfusion.models.xfuse.outputs import cmyk_summary

        net, expr = self._fitted()
        data = section if isinstance(section, D.SectionData) else self._data(section)
        s_map, a_map, box = P.mean_maps(net, expr, data, self.hyperparams["patch_px"])
        return cmyk_summary(s_map, a_map, data.tissue, box)

    def image_data(self, image_path: str | Path, microns_per_pixel: float,
                   covariates: Mapping[str, Any] | None = None) -> D.SectionData:
        """An H&E-only slide at the model's working resolution (for the grid/summary methods)."""
        radius = self.state_["spot_diameter_um"] / 2 / float(microns_per_pixel)
        return D.image_section(image_path, microns_per_pixel, self.hyperparams["resolution_um"],
                               self._beta(covariates), spot_radius_px=radius)

    def predict_image(self, image_path: str | Path | D.SectionData, microns_per_pixel: float, grid_um: float | None = None,
                      samples: int | None = None, genes: Sequence[str] | None = None,
                      covariates: Mapping[str, Any] | None = None) -> ad.AnnData:
        """Expression over the tissue of an H&E-only slide on a grid (default: cells of the training
        spot diameter). ``image_path`` may also be the slide already read by :meth:`image_data`
        (then ``microns_per_pixel`` and ``covariates`` are those it was read with)."""
        self._check_fitted()
        data = image_path if isinstance(image_path, D.SectionData) else self.image_data(image_path, microns_per_pixel, covariates)
        out = self.predict_grid(data, grid_um or self.state_["spot_diameter_um"], genes=genes, samples=samples)
        out.uns[K.STFUSION][K.SOURCE_IMAGE_PATH] = data.extra[K.SOURCE_IMAGE_PATH]
        return out

    # ------------------------------------------------------------------ persistence
    def image_scale(self) -> dict[str, float | None]:
        res = float(self.hyperparams["resolution_um"])
        return {"patch_field_um": res * int(self.hyperparams["patch_px"]), "microns_per_pixel": res}

    def card(self) -> dict[str, Any]:
        return {**super().card(), **self.state_, "description": self.description}

    def save(self, directory: str | Path) -> Path:
        net, expr = self._fitted()
        directory = super().save(directory)
        torch.save({"net": net.state_dict(), "expr": expr.state_dict()}, directory / WEIGHTS_FILE)
        (directory / HISTORY_FILE).write_text(json.dumps({"history": self.history_, "metagenes": self.metagene_history_}))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> XFuse:
        model, card = cls.from_card(directory)
        keys = ("effects", "section_beta", "modelled_fraction", "spot_diameter_um", "training_sections", "steps_run",
                "timed_out", "fit_seconds", "metagenes", "field", "gene_field")
        model.state_ = {k: card[k] for k in keys if k in card}
        model._build(len(model.genes_), len(model.state_.get("effects", [])))
        if "field" in model.state_:
            from stfusion.models.xfuse.field import ExpressionField

            model.net_.field = ExpressionField.from_spec(model.state_["field"])
        if "gene_field" in model.state_:
            from stfusion.models.xfuse.gene_field import GeneField

            model.expr_.gene_field = GeneField.from_spec(model.state_["gene_field"])
        state = torch.load(Path(directory) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        model.net_.load_state_dict(state["net"])
        model.expr_.load_state_dict(state["expr"])
        model.net_.eval()
        hist = Path(directory) / HISTORY_FILE
        if hist.is_file():
            saved = json.loads(hist.read_text())
            model.history_, model.metagene_history_ = saved.get("history", []), saved.get("metagenes", [])
        return model
