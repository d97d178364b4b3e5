"""Non-image baselines that interpolate expression between spots (XFuse's comparisons).

All predict in the target space (:func:`stfusion.models.base.target_expression`); the spatial
ones take ``space="counts"`` to interpolate raw counts instead (XFuse's comparisons scored
counts; recorded in the model card's hyperparameters and the prediction's ``expression_space``).

- :class:`ConstantBaseline`: each gene's mean over all training spots.
- :class:`NearestNeighbourBaseline`: area-weighted average of the training spots whose
  Voronoi cells overlap the test spot's disc.
- :class:`LinearInterpolationBaseline`: barycentric interpolation on the Delaunay
  triangulation of the training spot centres.

The spatial ones are spot hold-out baselines: training and test spots must come from the
same section (same pixel frame). Sections are matched by ``uns["stfusion"]["section_id"]``
(else the library id); training parts of one section are pooled.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
from scipy.interpolate import LinearNDInterpolator
from scipy.spatial import QhullError, cKDTree

from stfusion import _constants as K
from stfusion.data.section import library_id, microns_per_pixel, spot_coords, spot_diameter_px
from stfusion.errors import StfusionError
from stfusion.models.base import Model, dense, prediction_adata, target_expression

ARRAYS_FILE = "arrays.npz"
N_DISC_SAMPLES = 200


# --------------------------------------------------------------------------- shared helpers
def section_key(section: ad.AnnData) -> str:
    """Identity of a section: ``uns["stfusion"]["section_id"]``, else its library id."""
    sid = section.uns.get(K.STFUSION, {}).get(K.SECTION_ID)
    return str(sid) if sid is not None else library_id(section)


def resolve_train_genes(train_sections: Sequence[ad.AnnData], genes: Sequence[str] | None) -> list[str]:
    """``genes`` checked against every training section, or (None) the genes all of them share."""
    if len(train_sections) == 0:
        raise StfusionError("No training sections were given. Pass at least one section to fit().")
    if genes is None:
        from stfusion.data.genes import shared_genes

        shared = shared_genes(list(train_sections))
        if len(shared) == 0:
            raise StfusionError("The training sections share no genes. Harmonise gene names (symbols vs IDs) first.")
        return [str(g) for g in shared]
    genes = [str(g) for g in genes]
    if len(set(genes)) != len(genes):
        raise StfusionError("The gene list has duplicates; pass each gene once.")
    return genes


def stacked_targets(sections: Sequence[ad.AnnData], genes: Sequence[str]) -> np.ndarray:
    """Target expression of all spots of ``sections`` stacked (spots x genes, float64)."""
    return np.vstack([target_expression(s, genes).astype(np.float64) for s in sections])


SPACES = ("target", "counts")  # what a spatial baseline interpolates: the strict target or raw counts


def check_space(space: str) -> str:
    if space not in SPACES:
        raise StfusionError(f"space must be one of {SPACES}, got {space!r}.")
    return space


def stacked_values(sections: Sequence[ad.AnnData], genes: Sequence[str], space: str = "target") -> np.ndarray:
    """Spots of ``sections`` stacked (spots x genes, float64): target expression, or raw counts."""
    if check_space(space) == "target":
        return stacked_targets(sections, genes)
    return np.vstack([dense(s[:, list(genes)].X).astype(np.float64) for s in sections])


def save_arrays(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    np.savez(Path(directory) / ARRAYS_FILE, **arrays)


def load_arrays(directory: str | Path) -> dict[str, np.ndarray]:
    path = Path(directory) / ARRAYS_FILE
    if not path.exists():
        raise StfusionError(f"{directory} has no {ARRAYS_FILE}: not a saved baseline. Save one with model.save(dir).")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def disc_offsets(n: int = N_DISC_SAMPLES) -> np.ndarray:
    """``n`` evenly spread points in the unit disc (sunflower spiral), shape (n, 2)."""
    k = np.arange(n) + 0.5
    r = np.sqrt(k / n)
    theta = k * np.pi * (3.0 - np.sqrt(5.0))
    return np.column_stack([r * np.cos(theta), r * np.sin(theta)])


# --------------------------------------------------------------------------- constant
class ConstantBaseline(Model):
    """Each gene's mean target expression over all training spots (the floor every method must beat)."""

    name: ClassVar[str] = "constant"
    description: ClassVar[str] = "Each gene's mean expression over all training spots."
    input_kind: ClassVar[str] = "coordinates"

    def _fit(self, train_sections: Sequence[ad.AnnData], genes: Sequence[str] | None = None) -> ConstantBaseline:
        genes = resolve_train_genes(train_sections, genes)
        self.mean_ = stacked_targets(train_sections, genes).mean(axis=0)
        self.genes_ = genes
        return self

    def _predict(self, section: ad.AnnData) -> ad.AnnData:
        genes = self._check_fitted()
        values = np.broadcast_to(self.mean_, (section.n_obs, len(genes)))
        return prediction_adata(section, values, genes, method=self.name)

    def save(self, directory: str | Path) -> Path:
        directory = super().save(directory)
        save_arrays(directory, {"mean": self.mean_})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ConstantBaseline:
        model, card = cls.from_card(directory)
        model.mean_ = load_arrays(directory)["mean"]
        return model


# --------------------------------------------------------------------------- per-section base
class SpatialBaseline(Model):
    """Base of the spot hold-out baselines: keeps each training section's spot centres and targets.

    ``state_[section_key]`` maps array names to arrays (``coords`` in px, ``values``: the
    target, or raw counts with hyperparameter ``space="counts"``); subclasses add fitted arrays
    in :meth:`_fit_section` and use them in :meth:`_predict_section`.
    """

    input_kind: ClassVar[str] = "coordinates"

    def _fit(self, train_sections: Sequence[ad.AnnData], genes: Sequence[str] | None = None) -> SpatialBaseline:
        genes = resolve_train_genes(train_sections, genes)
        groups: dict[str, list[ad.AnnData]] = {}
        for s in train_sections:
            groups.setdefault(section_key(s), []).append(s)
        self.state_: dict[str, dict[str, np.ndarray]] = {}
        for key, parts in groups.items():
            state = {
                "coords": np.vstack([spot_coords(p) for p in parts]),
                "values": stacked_values(parts, genes, self.space),
                "mpp": np.array([microns_per_pixel(parts[0])]),
            }
            state.update(self._fit_section(state))
            self.state_[key] = state
        self.genes_ = genes
        return self

    def _predict(self, section: ad.AnnData) -> ad.AnnData:
        genes = self._check_fitted()
        key = section_key(section)
        if key not in self.state_:
            raise StfusionError(
                f"{type(self).__name__} interpolates between spots of one section, but section '{key}' "
                f"was not among the training sections ({sorted(self.state_)}). Fit it on held-in spots "
                "of the same section (spot hold-out), or use a histology model for unseen sections."
            )
        values, layers = self._predict_section(self.state_[key], section)
        space = {"counts": "counts"}.get(self.space, "log1p_cp10k")
        return prediction_adata(section, values, genes, layers=layers, method=self.name, space=space)

    @property
    def space(self) -> str:
        """What is interpolated: ``"target"`` (default) or ``"counts"`` (raw counts)."""
        return check_space(self.hyperparams.get("space", "target"))

    def _fit_section(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {}

    def _predict_section(
        self, state: dict[str, np.ndarray], section: ad.AnnData
    ) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
        raise NotImplementedError

    def card(self) -> dict[str, Any]:
        card = super().card()
        card["sections"] = list(self.state_)
        return card

    def save(self, directory: str | Path) -> Path:
        directory = super().save(directory)
        arrays = {f"s{i}__{name}": arr for i, st in enumerate(self.state_.values()) for name, arr in st.items()}
        save_arrays(directory, arrays)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SpatialBaseline:
        model, card = cls.from_card(directory)
        arrays = load_arrays(directory)
        model.state_ = {}
        for i, key in enumerate(card["sections"]):
            prefix = f"s{i}__"
            model.state_[key] = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        return model


# --------------------------------------------------------------------------- nearest neighbour
class NearestNeighbourBaseline(SpatialBaseline):
    """XFuse's nearest-neighbour baseline: Voronoi-area-weighted average over the test spot's disc.

    The training spot centres tessellate the section (Voronoi cells). A test spot's prediction
    is the average of the training spots' values weighted by the area of their cell inside the
    test spot's disc. The area is measured by sampling the disc at ``n_samples`` evenly
    spread points, each assigned to its nearest training centre (exact as n_samples grows).
    The disc diameter is the test section's ``spot_diameter_fullres`` unless
    ``spot_diameter_px`` is given.
    """

    name: ClassVar[str] = "nearest_neighbour"
    description: ClassVar[str] = "Voronoi-area-weighted average of the training spots overlapping each test spot."

    def __init__(self, spot_diameter_px: float | None = None, n_samples: int = N_DISC_SAMPLES,
                 space: str = "target") -> None:
        super().__init__(spot_diameter_px=spot_diameter_px, n_samples=int(n_samples), space=check_space(space))

    def _predict_section(self, state, section):
        diameter = self.hyperparams["spot_diameter_px"] or spot_diameter_px(section)
        weights = voronoi_disc_weights(state["coords"], spot_coords(section), diameter, self.hyperparams["n_samples"])
        return weights @ state["values"], None


def voronoi_disc_weights(train_xy: np.ndarray, test_xy: np.ndarray, diameter: float, n_samples: int = N_DISC_SAMPLES):
    """Sparse (test x train) matrix: fraction of each test disc lying in each training Voronoi cell."""
    from scipy import sparse

    offsets = disc_offsets(n_samples) * (float(diameter) / 2.0)
    points = (test_xy[:, None, :] + offsets[None, :, :]).reshape(-1, 2)
    _, nearest = cKDTree(train_xy).query(points)
    rows = np.repeat(np.arange(len(test_xy)), n_samples)
    data = np.full(rows.size, 1.0 / n_samples)
    return sparse.csr_matrix((data, (rows, nearest)), shape=(len(test_xy), len(train_xy)))


# --------------------------------------------------------------------------- linear
class LinearInterpolationBaseline(SpatialBaseline):
    """XFuse's linear baseline: barycentric interpolation on the Delaunay triangulation.

    Test spots outside the convex hull of the training centres get the value of their nearest
    training spot. With fewer than three training spots, or all of them on a line, no
    triangulation exists and every test spot gets its nearest training spot (with a warning).
    """

    name: ClassVar[str] = "linear"
    description: ClassVar[str] = "Barycentric interpolation on the Delaunay triangulation of training spot centres."

    def __init__(self, space: str = "target") -> None:
        super().__init__(space=check_space(space))

    def _predict_section(self, state, section):
        train_xy, values = state["coords"], state["values"]
        test_xy = spot_coords(section)
        _, nearest = cKDTree(train_xy).query(test_xy)
        fallback = values[nearest]
        try:
            out = LinearNDInterpolator(train_xy, values)(test_xy)
        except (QhullError, ValueError):
            warnings.warn(
                "Cannot triangulate the training spots (fewer than 3, or collinear); "
                "using the nearest training spot's value instead.",
                stacklevel=3,
            )
            return fallback, None
        out = np.asarray(out).reshape(len(test_xy), values.shape[1])
        outside = np.isnan(out).any(axis=1)
        out[outside] = fallback[outside]
        return out, None
