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


def fit(method: str, sections: Sequence[ad.AnnData], genes: Any = None, **params: Any) -> Any:
    """Create and fit a histology model. ``genes``: as ``stfusion.data.genes.resolve_genes``
    (file, .npy, number N = top N by mean in the training sections, or a list)."""
    from stfusion.data.genes import resolve_genes

    gene_list = list(resolve_genes(genes, list(sections))) if genes is not None else None
    model = create(method, **params)
    model.fit(list(sections), genes=gene_list)
    return model


def save_model(model: Any, directory: str | Path) -> Path:
    """Save atomically: a failed save leaves no partial folder and keeps an older one."""
    from stfusion.io.atomic import atomic_dir

    with atomic_dir(directory) as tmp:
        model.save(tmp)
    return Path(directory)


def load_model(directory: str | Path) -> Any:
    """Load any saved stfusion model; its model card names the method."""
    card_path = Path(directory) / "model.json"
    if not card_path.exists():
        raise StfusionError(f"{directory} is not a saved stfusion model (no model.json). Create one with `stfusion fit`.")
    method = json.loads(card_path.read_text()).get("method")
    return get(method).load(directory)
