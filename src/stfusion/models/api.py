"""Create, fit, save and load any registered model by name (the API the CLI calls)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad

from stfusion.errors import StfusionError
from stfusion.models.registry import get


def accepted_params(cls: type) -> set[str] | None:
    """Names ``cls(...)`` accepts, or None when it takes ``**kwargs``."""
    from stfusion.models.base import Model

    if cls.__init__ is Model.__init__:  # no hyperparameters of its own
        return set()
    sig = inspect.signature(cls.__init__)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {n for n in sig.parameters if n != "self"}


def create(method: str, **params: Any) -> Any:
    """An unfitted model; unknown hyperparameters raise an error that lists the valid ones."""
    cls = get(method)
    ok = accepted_params(cls)
    unknown = set(params) - ok if ok is not None else set()
    if unknown:
        raise StfusionError(
            f"{method} has no hyperparameter(s) {sorted(unknown)}; it accepts {sorted(ok) or 'none'}."
        )
    return cls(**params)


def fit(
    method: str,
    sections: Sequence[ad.AnnData],
    genes: Any = None,
    *,
    covariates: Sequence[dict] | None = None,
    progress: bool | None = None,
    calibration: str | None = None,
    calibration_fraction: float = 0.2,
    **params: Any,
) -> Any:
    """Create and fit a histology model. ``genes``: as ``stfusion.data.genes.resolve_genes``
    (file, .npy, number N = top N by mean in the training sections, or a list).
    ``covariates``: one ``{name: value}`` per section, for models whose ``fit`` takes them (XFuse).
    ``progress``: show the model's progress bars (None: the model's own setting); not saved.
    ``calibration`` / ``calibration_fraction``: hold out data and calibrate prediction intervals
    (:meth:`stfusion.models.base.Model.fit`; default None: no hold-out)."""
    from stfusion.data.genes import resolve_genes

    gene_list = list(resolve_genes(genes, list(sections))) if genes is not None else None
    model = create(method, **params)
    if progress is not None:
        set_progress(model, progress)
    extra = {} if calibration is None else {"calibration": calibration, "calibration_fraction": calibration_fraction}
    if covariates is None:
        model.fit(list(sections), genes=gene_list, **extra)
        return model
    if "covariates" not in inspect.signature(model.fit).parameters:
        raise StfusionError(f"{method} takes no covariates; drop them (--covariate).")
    model.fit(list(sections), genes=gene_list, covariates=list(covariates), **extra)
    return model


def set_progress(model: Any, enabled: bool) -> Any:
    """Turn a model's progress bars on or off for this session (the saved hyperparameters are unchanged)."""
    if hasattr(model, "progress"):
        model.progress = bool(enabled)
    config = getattr(model, "config", None)
    if isinstance(config, dict) and "progress" in config:
        config["progress"] = bool(enabled)
    return model


def save_model(model: Any, directory: str | Path) -> Path:
    """Save atomically: a failed save leaves no partial folder and keeps an older one."""
    from stfusion.io.atomic import atomic_dir

    with atomic_dir(directory) as tmp:
        model.save(tmp)
    return Path(directory)


def load_model(directory: str | Path, *, progress: bool | None = None) -> Any:
    """Load any saved stfusion model; its model card names the method. ``progress``: as in :func:`fit`."""
    card_path = Path(directory) / "model.json"
    if not card_path.exists():
        raise StfusionError(f"{directory} is not a saved stfusion model (no model.json). Create one with `stfusion fit`.")
    method = json.loads(card_path.read_text()).get("method")
    model = get(method).load(directory)
    return model if progress is None else set_progress(model, progress)


def read_card(directory: str | Path) -> dict[str, Any]:
    """The model card (``model.json``) of a saved model."""
    card_path = Path(directory) / "model.json"
    if not card_path.is_file():
        raise StfusionError(f"{directory} is not a saved stfusion model (no model.json). Create one with `stfusion fit`.")
    return json.loads(card_path.read_text())


def card_summary(directory: str | Path) -> dict[str, Any]:
    """The facts ``stfusion info MODEL_DIR`` prints: method, version, genes, normalisation, scale,
    training data and validation metrics (None where the card does not record them)."""
    card = read_card(directory)
    genes = card.get("genes") or []
    training = card.get("training_data") or {}
    sections = training.get("sections") or []
    validation = card.get("validation") or {}
    return {
        "method": card.get("method"),
        "version": card.get("version"),
        "input": card.get("input"),
        "genes": f"{len(genes)} ({', '.join(genes[:8])}{', ...' if len(genes) > 8 else ''})",
        "normalisation": card.get("normalisation"),
        "patch_field_um": card.get("patch_field_um"),
        "microns_per_pixel": card.get("microns_per_pixel"),
        "training_sections": ", ".join(
            f"{s['section']} ({s['spots']} spots, {s['microns_per_pixel']} µm/px)" for s in sections
        ) or None,
        "training_spots": training.get("n_spots"),
        "validation": ", ".join(f"{k} {v}" for k, v in validation.items() if v is not None) or None,
        "seed": card.get("hyperparams", {}).get("seed", card.get("seed")),
        "hyperparams": json.dumps(card.get("hyperparams", {}), default=str),
    }
