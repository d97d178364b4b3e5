"""ST-Net (He et al., Nat Biomed Eng 2020): each spot's expression from the H&E patch on it.

Training follows the paper with the choices a CPU user without pretrained weights needs:
DenseNet-121 (random initialisation unless ``weights=PATH``), one linear head that starts
from the training mean, MSE on ST-Net's normalisation ``ln((x + 1) / T)`` (``T`` over all
genes), 224 px patches of a 150 µm field, random rotations/flips, the mean over the 8
dihedral symmetries at test time, SGD (momentum 0.9, batch 32, up to 50 epochs).
Gene selection and every normalisation statistic come from the training sections only.

Presets (``preset=``; explicit arguments override them):

- ``"paper"``: DenseNet-121, 224 px, 50 epochs, end-to-end SGD at ``DEFAULT_LR``, target
  ``"stnet"`` (the paper's normalisation), early stopping (patience 5) on the last training
  section, then a refit on all training sections for the selected number of epochs.
- ``"fast"``: small CNN (width 16, 128 features) on 64 px patches of the same 150 µm field,
  12 epochs of end-to-end SGD at ``DEFAULT_LR``, no epoch selection, target ``"log1p"``
  (the primary evaluation target log1p(counts / total x 1e4)). Why log1p: the image mostly
  predicts sequencing depth, which enters ST-Net's ``ln((x + 1) / T)`` with the opposite sign
  to the evaluation target for sparse genes; with the same features and ridge, training on
  ST-Net's space scored mean r 0.03 vs 0.11 on her2st C6 (see benchmarks/stnet/README.md).

``frozen=True`` computes backbone features once (the mean over the 8 symmetries) and fits
only the head, in closed form by ridge regression (alpha per gene by generalised
cross-validation). With a random-init backbone these are *random* convolutional features.

``encoder=NAME`` takes any registered encoder as the backbone (``stfusion.models.encoders``:
the CNN backbones and the pathology encoders ``resnet50_trunc``, ``uni``, ``h_optimus_0``,
``virchow2``, ``phikon_v2``), ``encoder_weights=PATH`` (or ``"hub"``) its weights in the published
layout (loaded strictly) and ``encoder_kwargs`` configuration overrides. A pathology encoder
brings its preprocessing: patches of its field (112 µm) at its input size (224 px) unless
``patch_um``/``out_px`` are given, and its own mean/std instead of the training patches'. On a CPU
use ``frozen=True`` with the ViTs (a ViT-L forward pass takes seconds per patch on 2 cores).

At predict time each section's stain is compared with the training sections'
(:mod:`stfusion.data.shift`); a section far outside logs a warning, and the measure is in
``uns["stfusion"]["stain_shift"]`` of the prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import torch

from stfusion import _constants as K
from stfusion.data.genes import as_section_list, resolve_genes
from stfusion.data.normalize import normalize
from stfusion.data.patches import read_patches
from stfusion.data.section import library_id, section_meta, spot_coords
from stfusion.data.shift import STAIN_KEY, check_shift, fit_stain_reference, stain_features
from stfusion.models.stnet.tiling import tile_stain_reference
from stfusion.data.stain import StainNormalizer
from stfusion.errors import StfusionError
from stfusion.models.base import Model, prediction_adata, target_expression
from stfusion.models.encoders import ENCODERS, encoder_spec, make_backbone, make_encoder
from stfusion.models.stnet.nn import STNetNet, channel_stats, mse_loss, predict_arrays
from stfusion.models.stnet.training import PatchDataset, fit_frozen_head

log = logging.getLogger("stfusion")

DEFAULT_LR = 0.1  # from-scratch SGD learning rate: benchmarks/stnet/diagnostics/lr_experiment.md
EXPRESSION_SPACE = "stnet_log_norm"  # ln((counts + 1) / sum over all genes of (counts + 1))
TARGETS = {  # target -> (expression space written to uns, description for the model card)
    "stnet": (EXPRESSION_SPACE, "stnet: ln((counts + 1) / T), T = sum over all genes of (counts + 1)"),
    "log1p": ("log1p_cp10k", "log1p(counts / spot total over all genes x 1e4) (the primary evaluation target)"),
}
EMBEDDING_KEY = "X_stnet"
PSEUDO_BULK_KEY = "pseudo_bulk"
WEIGHTS_FILE = "weights.pt"

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "backbone": "densenet121", "out_px": 224, "epochs": 50, "lr": DEFAULT_LR, "target": "stnet",
        "frozen": False, "epoch_selection": "refit", "width": None,
    },
    "fast": {
        "backbone": "small_cnn", "out_px": 64, "epochs": 12, "lr": DEFAULT_LR, "target": "log1p",
        "frozen": False, "epoch_selection": "none", "width": 16,
    },
}
EPOCH_SELECTION = ("none", "holdout", "refit")


class STNet(Model):
    """ST-Net: DenseNet-121 (or ResNet-18/50, small CNN) + linear head on each spot's H&E patch.

    Parameters
    ----------
    preset
        ``"paper"`` (default) or ``"fast"``; fills every argument left at None.
    backbone, weights
        Backbone name and an optional local torchvision-layout state dict (default: random init).
    encoder, encoder_weights, encoder_kwargs
        Any registered encoder as the backbone (``available_backbones()`` or
        ``available_encoders()``), its weights (local state dict in the published layout, or
        ``"hub"``; default: random init) and configuration overrides (e.g. ``{"depth": 2}``). A
        pathology encoder sets ``patch_um``/``out_px`` and the input normalisation from its
        preprocessing (112 µm at 224 px).
    patch_um, out_px
        Physical field of a patch (µm; default 150, or the encoder's) and its side in pixels after
        resampling.
    epochs, lr, batch_size
        SGD (momentum 0.9) settings.
    frozen
        Train only the head on cached backbone features (ridge, closed form).
    epoch_selection
        ``"none"`` (train ``epochs``), ``"holdout"`` (early stopping on the last training
        section, which is then not trained on), ``"refit"`` (holdout picks the epoch count,
        then all sections are trained for that many epochs).
    width
        Width of ``small_cnn``.
    target
        Training target and output space: ``"stnet"`` (``ln((x + 1) / T)``, written as
        ``uns["stfusion"]["expression_space"] = "stnet_log_norm"``) or ``"log1p"``
        (log1p(counts / total x 1e4), ``"log1p_cp10k"``, the benchmark's primary target).
    patience, tta, seed, max_time_s, progress
        Early-stopping patience, test-time augmentation, seed, wall-clock budget per
        training run, progress bar.
    stain_norm, stain_augment
        Stain normalisation of every patch to a reference fitted on the training patches
        (``"none"``, ``"macenko"``, ``"reinhard"``; :class:`stfusion.data.stain.StainNormalizer`,
        recorded in the card and applied at predict time), and HED augmentation during training
        (stains rescaled and shifted by up to this fraction; 0 = off).
    """

    name: ClassVar[str] = "stnet"
    description: ClassVar[str] = "ST-Net: CNN (DenseNet-121 default) + linear head on each spot's 150 µm H&E patch."
    input_kind: ClassVar[str] = "histology"

    def __init__(
        self,
        preset: str = "paper",
        backbone: str | None = None,
        weights: str | None = None,
        patch_um: float | None = None,
        out_px: int | None = None,
        epochs: int | None = None,
        lr: float | None = None,
        batch_size: int = 32,
        frozen: bool | None = None,
        epoch_selection: str | None = None,
        width: int | None = None,
        target: str | None = None,
        patience: int = 5,
        tta: bool = True,
        seed: int = 0,
        max_time_s: float | None = None,
        progress: bool = False,
        stain_norm: str = "none",
        stain_augment: float = 0.0,
        encoder: str | None = None,
        encoder_weights: str | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if preset not in PRESETS:
            raise StfusionError(f"Unknown ST-Net preset {preset!r}; use one of {sorted(PRESETS)}.")
        super().__init__(
            preset=preset, backbone=backbone, weights=None if weights is None else str(weights),
            encoder=encoder, encoder_weights=None if encoder_weights is None else str(encoder_weights),
            encoder_kwargs=dict(encoder_kwargs or {}),
            patch_um=None if patch_um is None else float(patch_um), out_px=out_px, epochs=epochs, lr=lr,
            batch_size=int(batch_size),
            frozen=frozen, epoch_selection=epoch_selection, width=width, target=target, patience=int(patience),
            tta=bool(tta), seed=int(seed), max_time_s=max_time_s, progress=bool(progress),
            stain_norm=str(stain_norm), stain_augment=float(stain_augment),
        )
        self.config = self._resolve()
        self.stain_ = StainNormalizer(self.config["stain_norm"])
        if not 0.0 <= self.config["stain_augment"] < 1.0:
            raise StfusionError(f"stain_augment must be in [0, 1), got {stain_augment}.")
        self.net_: STNetNet | None = None
        self.info_: dict[str, Any] = {}

    def _resolve(self) -> dict[str, Any]:
        cfg = dict(self.hyperparams)
        cfg.setdefault("encoder", None)  # cards written before encoders were accepted
        cfg["encoder_kwargs"] = dict(cfg.get("encoder_kwargs") or {})
        if cfg["encoder"]:
            name = str(cfg["encoder"]).lower().replace("-", "_")
            if cfg["backbone"] and str(cfg["backbone"]).lower().replace("-", "_") != name:
                raise StfusionError(f"Pass either backbone={cfg['backbone']!r} or encoder={cfg['encoder']!r}, not both.")
            if cfg["weights"] and cfg.get("encoder_weights") and cfg["weights"] != cfg["encoder_weights"]:
                raise StfusionError("Pass the encoder's weights once (encoder_weights=PATH).")
            cfg["backbone"], cfg["weights"] = name, cfg.get("encoder_weights") or cfg["weights"]
            if name in ENCODERS:
                prep = encoder_spec(name).preprocessing
                cfg["out_px"] = cfg["out_px"] or prep.input_px
                cfg["patch_um"] = cfg["patch_um"] or prep.field_um
        if cfg["patch_um"] is None:
            cfg["patch_um"] = 150.0
        for key, value in PRESETS[cfg["preset"]].items():
            if cfg.get(key) is None:
                cfg[key] = value
        if cfg["epoch_selection"] not in EPOCH_SELECTION:
            raise StfusionError(f"epoch_selection must be one of {EPOCH_SELECTION}, got {cfg['epoch_selection']!r}.")
        if cfg["target"] not in TARGETS:
            raise StfusionError(f"target must be one of {sorted(TARGETS)}, got {cfg['target']!r}.")
        if int(cfg["out_px"]) < 16 or not cfg["patch_um"] > 0:
            raise StfusionError(f"out_px must be at least 16 and patch_um positive, got {cfg['out_px']} and {cfg['patch_um']}.")
        cfg["out_px"], cfg["epochs"], cfg["lr"] = int(cfg["out_px"]), int(cfg["epochs"]), float(cfg["lr"])
        cfg["patch_um"] = float(cfg["patch_um"])
        return cfg

    @property
    def foundation_encoder(self) -> bool:
        """Whether the backbone is a pathology encoder of ``ENCODERS`` (it brings its own mean/std)."""
        return self.config["backbone"] in ENCODERS

    @property
    def weights_source(self) -> str:
        return self.config["weights"] or "random init"

    # ------------------------------------------------------------------ building blocks
    def build_net(self, n_genes: int, channel_mean=(0.5, 0.5, 0.5), channel_std=(0.25, 0.25, 0.25), *, load_weights: bool = True) -> STNetNet:
        """A fresh network (backbone initialised from ``weights`` when given and ``load_weights``)."""
        cfg = self.config
        kwargs = {"width": int(cfg["width"])} if cfg["backbone"] == "small_cnn" and cfg["width"] else {}
        kwargs.update(cfg["encoder_kwargs"])
        weights = cfg["weights"] if load_weights else None
        if self.foundation_encoder:
            backbone, _ = make_encoder(cfg["backbone"], weights, **kwargs)
            backbone.train()
            n_features = backbone.n_features
        else:
            backbone, n_features = make_backbone(cfg["backbone"], weights, **kwargs)
        return STNetNet(backbone, n_features, n_genes, channel_mean, channel_std)

    def targets(self, section: ad.AnnData, genes: Sequence[str]) -> np.ndarray:
        """Training targets of ``section`` (spots x genes) in the model's ``target`` space."""
        if self.config["target"] == "stnet":
            return normalize(section, "stnet", genes=genes)
        return target_expression(section, genes)

    @property
    def expression_space(self) -> str:
        return TARGETS[self.config["target"]][0]

    def patches(self, section: ad.AnnData, centers_px: np.ndarray | None = None) -> np.ndarray:
        """uint8 patches (N, out_px, out_px, 3) of the model's field at the section's spots."""
        centers = spot_coords(section) if centers_px is None else centers_px
        return read_patches(section, centers, self.config["patch_um"], self.config["out_px"])

    # ------------------------------------------------------------------ fit
    def _fit(self, train_sections: Sequence[ad.AnnData], genes: Sequence[str] | None = None) -> STNet:
        sections = as_section_list(train_sections)
        genes = list(genes) if genes is not None else list(resolve_genes(250, sections))
        ys = [self.targets(s, genes) for s in sections]  # raises on missing genes
        xs = [self.patches(s) for s in sections]
        self.stain_ = StainNormalizer(self.config["stain_norm"]).fit(np.concatenate(xs))
        xs = [self.stain_.transform(x) for x in xs]
        stain_reference = fit_stain_reference(xs, [_section_name(s) for s in sections])
        mean, std = channel_stats(np.concatenate(xs))
        if self.foundation_encoder:  # the encoder's weights expect their own normalisation
            prep = encoder_spec(self.config["backbone"]).preprocessing
            mean, std = list(prep.mean), list(prep.std)
        log.info(f"ST-Net backbone {self.config['backbone']}: weights = {self.weights_source}")
        torch.manual_seed(self.config["seed"])
        net = self.build_net(len(genes), mean, std)
        net.init_head(np.concatenate(ys).mean(axis=0))
        if self.config["frozen"]:
            self.info_ = fit_frozen_head(net, np.concatenate(xs), np.concatenate(ys), tta=self.config["tta"])
        else:
            net, self.info_ = self._fit_sgd(net, xs, ys, len(genes), (mean, std))
        self.net_, self.genes_ = net, genes
        self.info_["training_sections"] = [_section_name(s) for s in sections]
        self.info_["channel_mean"], self.info_["channel_std"] = mean, std
        self.info_["stain"] = self.stain_.to_dict()
        self.info_["stain_shift_reference"] = stain_reference
        self.info_["stain_shift_reference_tiles"] = tile_stain_reference(
            sections, self.info_["training_sections"], self.stain_.transform, self.config["patch_um"], self.config["out_px"])
        return self

    def _fit_sgd(self, net: STNetNet, xs: list[np.ndarray], ys: list[np.ndarray], n_genes: int, stats) -> tuple[STNetNet, dict]:
        cfg = self.config
        selection = cfg["epoch_selection"] if len(xs) >= 2 else "none"
        if selection == "none":
            res = self._train(net, xs, ys, None, cfg["epochs"])
            return net, _history_info(res, selection)
        res = self._train(net, xs[:-1], ys[:-1], (xs[-1], ys[-1]), cfg["epochs"])
        if selection == "holdout":
            return net, _history_info(res, selection)
        best = (res.best_epoch if res.best_epoch is not None else cfg["epochs"] - 1) + 1
        torch.manual_seed(cfg["seed"])
        fresh = self.build_net(n_genes, *stats)
        fresh.init_head(np.concatenate(ys).mean(axis=0))
        res_all = self._train(fresh, xs, ys, None, best)
        info = _history_info(res_all, selection)
        info.update(selected_epochs=best, selection_history=_history_info(res, "holdout")["history"])
        return fresh, info

    def _train(self, net: STNetNet, xs, ys, val, epochs: int):
        from stfusion.train.loop import fit as train_fit

        cfg = self.config
        data = PatchDataset(np.concatenate(xs), np.concatenate(ys), cfg["stain_augment"], cfg["seed"])
        val_data = PatchDataset(*val) if val is not None else None
        return train_fit(
            net, mse_loss(augment=True), data, val_data, optimizer="sgd", lr=cfg["lr"], epochs=epochs,
            batch_size=cfg["batch_size"], seed=cfg["seed"],
            early_stopping_patience=cfg["patience"] if val is not None else None,
            progress=cfg["progress"], max_time_s=cfg["max_time_s"],
        )

    # ------------------------------------------------------------------ predict
    def predict_patches(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(predictions N x G, embeddings N x F) for uint8 patches (N, H, W, 3), stain-normalised
        first when the model was trained so."""
        self._check_fitted()
        patches = self.stain_.transform(patches)
        return predict_arrays(self.net_, patches, tta=self.config["tta"], progress=self.config["progress"])

    def _predict(self, section: ad.AnnData) -> ad.AnnData:
        genes = self._check_fitted()
        patches = self.stain_.transform(self.patches(section))
        shift = check_shift(self.info_.get("stain_shift_reference"), stain_features(patches)[0], who="ST-Net",
                            section=_section_name(section), stain_norm=self.stain_.method)  # fmt: skip
        values, emb = predict_arrays(self.net_, patches, tta=self.config["tta"], progress=self.config["progress"])
        out = prediction_adata(section, values, genes, method=self.name, space=self.expression_space)
        out.obsm[EMBEDDING_KEY] = emb
        out.uns[K.STFUSION].update(self._provenance())
        if shift is not None:
            out.uns[K.STFUSION][STAIN_KEY] = shift
        return out

    def _provenance(self) -> dict[str, Any]:
        return {
            "backbone": self.config["backbone"],
            "backbone_weights": self.weights_source,
            "encoder": self.config["backbone"] if self.config["encoder"] else "none",
            "patch_field_um": self.config["patch_um"],
            "out_px": self.config["out_px"],
            "preset": self.config["preset"],
        }

    def predict_image(self, image_path: str | Path | np.ndarray, microns_per_pixel: float) -> ad.AnnData:
        """Predict every tissue tile of an H&E-only slide (tiles of the model's field).

        Returns tiles x genes with tile centres (full-res px) in ``obsm["spatial"]``,
        embeddings in ``obsm["X_stnet"]``, grid indices in ``obs`` and the pseudo-bulk
        mean over tiles in ``var["pseudo_bulk"]`` and ``uns["pseudo_bulk"]``.
        """
        from stfusion.models.stnet.tiling import tissue_tiles

        genes = self._check_fitted()
        tiles = tissue_tiles(image_path, float(microns_per_pixel), self.config["patch_um"], self.config["out_px"])
        if len(tiles.patches) == 0:
            raise StfusionError(
                f"No tissue tile found in {image_path} (every {self.config['patch_um']:g} µm tile is mostly white). "
                "Check the image and --microns-per-pixel."
            )
        patches = self.stain_.transform(tiles.patches)
        source = str(Path(image_path).resolve()) if not isinstance(image_path, np.ndarray) else "array"
        reference = self.info_.get("stain_shift_reference_tiles") or self.info_.get("stain_shift_reference")
        shift = check_shift(reference, stain_features(patches)[0], who="ST-Net", section=Path(source).name,
                            stain_norm=self.stain_.method)  # fmt: skip
        values, emb = predict_arrays(self.net_, patches, tta=self.config["tta"], progress=self.config["progress"])
        names = [f"tile_{r}_{c}" for r, c in tiles.grid_rc]
        obs = pd.DataFrame({"grid_row": tiles.grid_rc[:, 0], "grid_col": tiles.grid_rc[:, 1]}, index=names)
        out = ad.AnnData(X=values.astype(np.float32), obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
        out.obsm[K.SPATIAL] = tiles.centers_px.astype(np.float64)
        out.obsm[EMBEDDING_KEY] = emb
        bulk = values.mean(axis=0)
        out.var[PSEUDO_BULK_KEY] = bulk
        out.uns[PSEUDO_BULK_KEY] = bulk
        out.uns[K.STFUSION] = {
            "method": self.name, "expression_space": self.expression_space, "source_image_path": source,
            "microns_per_pixel": float(microns_per_pixel), "n_tiles": len(names), "n_tiles_total": tiles.n_total,
            **self._provenance(),
        }
        if shift is not None:
            out.uns[K.STFUSION][STAIN_KEY] = shift
        return out

    def slide_adapter(self, *, lattice: str | None = None, spacing_um: float | None = None, chunk_spots: int = 256,
                      window: int | None = None) -> Any:  # fmt: skip
        """How :func:`stfusion.scale.predict_slide` streams a slide through this model (spot by spot;
        ``window`` is HisToGene's and is not used)."""
        from stfusion.models.stnet.slide import STNetSlideAdapter

        return STNetSlideAdapter(self, lattice, spacing_um, chunk_spots)

    # ------------------------------------------------------------------ save / load
    def image_scale(self) -> dict[str, float | None]:
        return {"patch_field_um": float(self.config["patch_um"]),
                "microns_per_pixel": float(self.config["patch_um"]) / int(self.config["out_px"])}

    def validation_summary(self) -> dict[str, Any]:
        """The held-out section's loss when ``epoch_selection`` held one out (holdout / refit)."""
        info = self.info_ or {}
        history = info.get("selection_history") or (info.get("history") if info.get("epoch_selection") == "holdout" else None)
        losses = [row["val_loss"] for row in history or [] if row.get("val_loss") is not None]
        if not losses:
            return super().validation_summary()
        sections = info.get("training_sections") or []
        best = int(np.argmin(losses))
        return {"split": "last training section held out (epoch selection)",
                "section": sections[-1] if sections else None,
                "metric": f"val_loss (MSE of {self.expression_space}, the training target)",
                "best_val_loss": float(losses[best]), "best_epoch": best,
                "final_model": "trained on all sections for the selected epochs" if info.get("epoch_selection") == "refit"
                else "weights of the best held-out epoch"}

    def card(self) -> dict[str, Any]:
        card = super().card()
        cfg = self.config
        card.update(
            description=self.description,
            normalisation=TARGETS[cfg["target"]][1],
            expression_space=self.expression_space,
            patch_field_um=cfg["patch_um"],
            out_px=cfg["out_px"],
            pixel_size_um=cfg["patch_um"] / cfg["out_px"],
            backbone=cfg["backbone"],
            weights_source=self.weights_source,
            seed=cfg["seed"],
            preset=cfg["preset"],
            config=cfg,
            training=self.info_,
            weights_file=WEIGHTS_FILE,
        )
        return card

    def save(self, directory: str | Path) -> Path:
        directory = super().save(directory)
        state = {k: v.detach().cpu().clone() for k, v in self.net_.state_dict().items()}
        torch.save(state, Path(directory) / WEIGHTS_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> STNet:
        """A fitted model from a folder written by :meth:`save`; tensors only (weights_only=True)."""
        model, card = cls.from_card(directory)
        training = card.get("training", {})
        net = model.build_net(len(card["genes"]), training.get("channel_mean", (0.5,) * 3),
                              training.get("channel_std", (0.25,) * 3), load_weights=False)
        state = torch.load(Path(directory) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        net.eval()
        model.net_, model.genes_, model.info_ = net, list(card["genes"]), training
        model.stain_ = StainNormalizer.from_dict(training.get("stain"))
        return model


# ---------------------------------------------------------------------- helpers
def _section_name(section: ad.AnnData) -> str:
    return str(section_meta(section).get(K.SECTION_ID) or library_id(section))


def _history_info(result, selection: str) -> dict[str, Any]:
    return {
        "epoch_selection": selection,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 2),
        "history": [{k: v for k, v in row.items() if k in ("epoch", "train_loss", "val_loss")} for row in result.history],
    }

