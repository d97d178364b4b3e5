"""``stfusion impute``: add genes the spatial assay did not measure, from an scRNA-seq reference.

Registered by :mod:`stfusion.cli`; anndata, pandas and scipy are imported only when the command runs.

The output is the spatial AnnData (obs, obsm, uns kept) with the imputed genes appended:

- ``X`` (float32): ``log1p(counts / cell total x 1e4)`` of the measured genes (totals over the
  measured genes), then the imputed values (each method's own log1p space; SpaIM's and
  Tangram's are right up to a per-gene scale);
- ``layers["counts"]``: the raw counts of the measured genes (0 in imputed columns);
- ``var["imputed"]`` marks imputed genes, ``var["measured"]`` genes the spatial data measured.
- ``uns["stfusion"]["imputation"]``: method, hyperparameters (JSON), seed, training and imputed genes.

A requested gene the spatial data measures is held out: the method is fitted without it and its
column in ``X`` holds the imputed values (its measured counts stay in ``layers["counts"]``), which
is how to check an imputation against the truth. Fitting follows the benchmark's gene k-fold
path exactly (the spatial data restricted to the training genes), so the same seed gives the
same values as ``stfusion benchmark``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from stfusion import _constants as K
from stfusion.cli.options import GENES_FORMS, long_step, parse_params, show_progress
from stfusion.errors import StfusionError

if TYPE_CHECKING:
    import anndata as ad
    import numpy as np
    from scipy import sparse

METHODS = {"spaim": "spaim", "tangram": "tangram", "gimvi": "gimvi", "knn": "knn_reference",
           "knn_reference": "knn_reference"}  # fmt: skip
ALL_MISSING = "all-missing"
log = logging.getLogger("stfusion")


# ----------------------------------------------------------------------------- reading
def read_spatial_h5ad(path: Path) -> tuple[ad.AnnData, sparse.csr_matrix]:
    """The spatial AnnData as stored, and its raw counts (from X or layers["counts"])."""
    import anndata as ad

    from stfusion.data.counts import check_unique_genes, to_counts_csr
    from stfusion.errors import CountsError, InputFileError

    if not Path(path).is_file():
        raise InputFileError(f"Spatial file {path} not found.")
    adata = ad.read_h5ad(path)
    check_unique_genes(adata.var_names)
    failures = []
    for name, x in (("X", adata.X), (f"layers['{K.LAYER_COUNTS}']", adata.layers.get(K.LAYER_COUNTS))):
        if x is None:
            continue
        try:
            return adata, to_counts_csr(x, what=f"{Path(path).name} {name}")
        except CountsError as err:
            failures.append(str(err))
    raise CountsError(f"No raw counts in {path} ({'; '.join(failures)}). Store raw integer counts in X or "
                      f"layers['{K.LAYER_COUNTS}'].")  # fmt: skip


def with_coordinates(adata: ad.AnnData, units: str | None) -> ad.AnnData:
    """``obsm["spatial"]`` (the scanpy/squidpy key) filled from obs coordinate columns (``x_coord``/``y_coord``,
    ``x``/``y``, ...) when missing, and ``uns["stfusion"]["coordinate_units"]`` set, so maps and scores work."""
    from stfusion.io.reference import _obs_coords

    if units not in (None, "um", "pixels", "unknown"):
        raise typer.BadParameter(f"--coordinate-units takes um, pixels or unknown, not {units!r}.")
    meta = dict(adata.uns.get(K.STFUSION, {}))
    if K.SPATIAL not in adata.obsm:
        xy = _obs_coords(adata, None, None)
        if xy is None:
            log.warning("The spatial data has no coordinates (obsm['spatial'] or obs x/y columns); "
                        "the imputed genes cannot be drawn as maps.")  # fmt: skip
            return adata
        adata.obsm[K.SPATIAL] = xy
    if units is not None or K.COORDINATE_UNITS not in meta:
        meta[K.COORDINATE_UNITS] = units or "unknown"
    adata.uns[K.STFUSION] = meta
    return adata


def refuse_swapped(reference_path: Path, spatial: ad.AnnData) -> None:
    """Spatial data without coordinates next to a 'reference' that has them: the two were given swapped."""
    import anndata as ad

    from stfusion.io.reference import _obs_coords

    if K.SPATIAL in spatial.obsm or _obs_coords(spatial, None, None) is not None:
        return
    if Path(reference_path).suffix != ".h5ad":
        return
    ref = ad.read_h5ad(reference_path, backed="r")
    has_xy = K.SPATIAL in ref.obsm or _obs_coords(ad.AnnData(obs=ref.obs), None, None) is not None
    ref.file.close()
    if has_xy:
        raise typer.BadParameter(f"--reference {reference_path} has cell coordinates and --spatial has none: the two "
                                 "look swapped. Give the scRNA-seq data as --reference and the spatial cells as --spatial.")


def check_in_reference(genes: Sequence[str], reference: ad.AnnData) -> None:
    """Every gene to impute must be in the reference (checked before any training)."""
    import numpy as np

    counts = dict(zip(reference.var_names, np.asarray(reference.X.sum(axis=0)).ravel()))
    absent = [g for g in genes if counts.get(g, 0) <= 0]
    if absent:
        raise StfusionError(f"{len(absent)} of {len(genes)} genes to impute are not measured in the reference "
                            f"(e.g. {', '.join(absent[:5])}); imputed genes come from the reference. Drop them from "
                            "--genes, or check the gene naming (case, species, symbols vs ids).")  # fmt: skip


def resolve_genes(spec: str, reference: ad.AnnData, spatial: ad.AnnData) -> list[str]:
    """Genes to impute: ``all-missing`` (reference genes with counts that the spatial data lacks),
    a file of names (text or .npy) or comma-separated names."""
    import numpy as np

    from stfusion.cli.options import gene_names

    ref_counts = np.asarray(reference.X.sum(axis=0)).ravel()
    if spec == ALL_MISSING:
        genes = [str(g) for g, n in zip(reference.var_names, ref_counts) if n > 0 and g not in spatial.var_names]
        if not genes:
            raise StfusionError("The reference measures no gene (with counts) that the spatial data lacks; "
                                "pass --genes FILE to impute measured genes as a hold-out check.")  # fmt: skip
        return genes
    return gene_names(spec)


# ----------------------------------------------------------------------------- imputing
def make_imputer(method: str, seed: int, mode: str | None, params: dict, preset: str | None = None) -> Any:
    """The imputer for a CLI method name with the CLI's options applied."""
    from stfusion.models.registry import get

    if method not in METHODS:
        raise typer.BadParameter(f"Unknown method {method!r}; use one of spaim, tangram, gimvi, knn.")
    name = METHODS[method]
    if mode is not None and name != "tangram":
        raise typer.BadParameter("--mode is Tangram's option (cells|clusters); drop it for other methods.")
    kwargs = dict(params)
    if name != "knn_reference":
        kwargs.setdefault("seed", seed)
    if name == "spaim":
        kwargs.setdefault("progress", show_progress())
    if mode is not None:
        kwargs["mode"] = mode
    if preset not in (None, "paper", "fast") or (preset is not None and name != "spaim"):
        raise typer.BadParameter(f"--preset takes fast or paper, for spaim only (got {preset!r} for {method}).")
    cls = get(name)
    return cls.fast(**kwargs) if preset == "fast" else cls(**kwargs)  # --cell-type-key labels reach SpaIM/Tangram as obs["cell_type"] (read_reference)


def impute_pair(model: Any, reference: ad.AnnData, spatial: ad.AnnData, genes: Sequence[str],
                coverage: float | None = None, calibration_folds: int = 5,
                seed: int = 0) -> tuple[ad.AnnData, list[str]]:  # fmt: skip
    """Fit ``model`` on the shared genes other than ``genes`` (sorted, with counts in both datasets;
    the spatial data restricted to them, as the benchmark's gene k-fold does) and impute ``genes``.
    With ``coverage``, also calibrate TISSUE-style intervals on the training genes
    (``calibration_folds`` more fits) and add ``layers["lower"]``/``["upper"]``.
    Returns the imputed AnnData and the training genes."""
    import numpy as np

    from stfusion.io.reference import shared_genes

    hold = set(genes)
    shared = [g for g in shared_genes(reference, spatial) if g not in hold]  # sorted, as the gene k-fold
    detected = (np.asarray((reference[:, shared].X > 0).sum(axis=0)).ravel() > 0) & (
        np.asarray((spatial[:, shared].X > 0).sum(axis=0)).ravel() > 0)  # fmt: skip
    train = [g for g, ok in zip(shared, detected) if ok]
    if len(train) < 2:
        raise StfusionError(f"Only {len(train)} shared genes are left to learn from after holding out the requested "
                            "genes; impute fewer measured genes at a time.")  # fmt: skip
    model.fit(reference, spatial[:, train].copy())
    if coverage is None:
        return model.impute(list(genes)), train
    model.calibrate(reference, spatial[:, train].copy(), n_folds=calibration_folds, seed=seed)
    return model.impute(list(genes), coverage=coverage), train


def imputed_output(spatial: ad.AnnData, counts: sparse.csr_matrix, imputed: ad.AnnData) -> ad.AnnData:
    """The spatial AnnData with the imputed genes appended (see the module docstring)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    from scipy import sparse

    from stfusion.data.normalize import log1p_normalize_total

    genes = list(imputed.var_names)
    keep = ~spatial.var_names.isin(genes)
    measured = log1p_normalize_total(counts, 1e4)
    x = np.hstack([measured[:, keep], np.asarray(imputed[spatial.obs_names, genes].X)]).astype(np.float32)
    held = spatial.var_names.get_indexer(genes)
    layer = sparse.hstack([counts[:, np.flatnonzero(keep)], _columns(counts, held)], format="csr")
    var = pd.DataFrame(index=pd.Index([*spatial.var_names[keep], *genes]))
    var["imputed"] = np.r_[np.zeros(keep.sum(), bool), np.ones(len(genes), bool)]
    var["measured"] = np.r_[np.ones(keep.sum(), bool), held >= 0]
    out = ad.AnnData(X=x, obs=spatial.obs.copy(), var=var, obsm=dict(spatial.obsm), uns=dict(spatial.uns))
    out.layers[K.LAYER_COUNTS] = layer.astype(np.int32)
    if K.LAYER_LOWER in imputed.layers:  # intervals of the imputed genes; measured genes: the value itself
        for key in (K.LAYER_LOWER, K.LAYER_UPPER):
            values = np.asarray(imputed[spatial.obs_names, genes].layers[key])
            out.layers[key] = np.hstack([measured[:, keep], values]).astype(np.float32)
    return out


def _columns(counts: sparse.csr_matrix, idx: np.ndarray) -> sparse.csr_matrix:
    """Counts of the columns ``idx`` (zeros where -1: genes the spatial data did not measure)."""
    from scipy import sparse

    rows = [counts[:, [i]] if i >= 0 else sparse.csr_matrix((counts.shape[0], 1), dtype=counts.dtype) for i in idx]
    return sparse.hstack(rows, format="csr") if rows else sparse.csr_matrix((counts.shape[0], 0), dtype=counts.dtype)


# ----------------------------------------------------------------------------- command
def impute_cmd(
    method: Annotated[str, typer.Argument(help="spaim, tangram, gimvi or knn.")],
    reference: Annotated[Path, typer.Option("--reference", help="scRNA-seq reference .h5ad (raw counts).")],
    spatial: Annotated[Path, typer.Option("--spatial", help="Spatial cells .h5ad (raw counts in X or layers['counts']).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .h5ad: the spatial data with imputed genes added.")],
    genes: Annotated[str, typer.Option(help=f"Genes to impute: {GENES_FORMS}, or 'all-missing'.")] = ALL_MISSING,
    preset: Annotated[Optional[str], typer.Option(help="SpaIM settings: fast (short training) or paper (default).")] = None,
    coordinate_units: Annotated[
        Optional[str], typer.Option("--coordinate-units", help="Units of the spatial coordinates: um, pixels or unknown.")
    ] = None,
    cell_type_key: Annotated[Optional[str], typer.Option(help="Reference obs column of cell types (SpaIM, Tangram clusters).")] = None,
    mode: Annotated[Optional[str], typer.Option(help="Tangram only: clusters (default) or cells.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    param: Annotated[list[str], typer.Option("--param", "-p", help="Hyperparameter key=value (repeatable).")] = [],  # noqa: B006
    coverage: Annotated[Optional[float], typer.Option(
        help="Add prediction intervals (layers lower/upper) of this nominal coverage, e.g. 0.9 (TISSUE-style "
             "calibration: --calibration-folds more fits).")] = None,
    calibration_folds: Annotated[int, typer.Option(
        "--calibration-folds", help="Folds of the measured genes for --coverage (each one more fit).")] = 5,
) -> None:
    """Impute genes the spatial data did not measure from a single-cell reference."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from stfusion.io import write_h5ad
    from stfusion.io.reference import read_reference

    if coverage is not None and not 0 < coverage < 1:
        raise typer.BadParameter(f"--coverage takes a fraction between 0 and 1 (e.g. 0.9), not {coverage}.")
    if calibration_folds < 2:
        raise typer.BadParameter(f"--calibration-folds must be at least 2, not {calibration_folds}.")
    model = make_imputer(method.lower(), seed, mode, parse_params(param), preset)
    sp_full, counts = read_spatial_h5ad(spatial)
    refuse_swapped(reference, sp_full)
    sp_full = with_coordinates(sp_full, coordinate_units)
    ref = read_reference(reference, cell_type_key=cell_type_key)
    sp = ad.AnnData(X=counts, obs=pd.DataFrame(index=sp_full.obs_names), var=pd.DataFrame(index=sp_full.var_names),
                    obsm={k: v for k, v in sp_full.obsm.items() if isinstance(v, np.ndarray)})  # fmt: skip
    wanted = resolve_genes(genes, ref, sp)
    check_in_reference(wanted, ref)
    measured = [g for g in wanted if g in sp.var_names]
    if measured:
        log.warning(f"{len(measured)} requested genes are measured in the spatial data; they are held out of training "
                    f"and imputed (measured counts kept in layers['counts']): {measured[:5]}")  # fmt: skip
    with long_step(f"imputing {len(wanted)} genes ({method})"):
        imputed, train = impute_pair(model, ref, sp, wanted, coverage, calibration_folds, seed)
    result = imputed_output(sp_full, counts, imputed)
    result.uns[K.STFUSION] = {**dict(sp_full.uns.get(K.STFUSION, {})), "imputation": {
        "method": model.name, "hyperparams_json": json.dumps(model.hyperparams), "seed": seed,
        "training_genes": train, "imputed_genes": wanted,
        "expression_space": imputed.uns.get(K.STFUSION, {}).get("expression_space", ""),
    }}  # fmt: skip
    if K.COVERAGE in imputed.uns.get(K.STFUSION, {}):
        result.uns[K.STFUSION][K.COVERAGE] = imputed.uns[K.STFUSION][K.COVERAGE]
    write_h5ad(result, out)
    log.info(f"wrote {out} ({result.n_obs} cells, {len(wanted)} imputed + {result.n_vars - len(wanted)} measured genes)")
