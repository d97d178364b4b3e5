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
from stfusion.cli.options import parse_params, show_progress
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


def resolve_genes(spec: str, reference: ad.AnnData, spatial: ad.AnnData) -> list[str]:
    """Genes to impute: ``all-missing`` (reference genes with counts that the spatial data lacks) or a file."""
    import numpy as np

    ref_counts = np.asarray(reference.X.sum(axis=0)).ravel()
    if spec == ALL_MISSING:
        genes = [str(g) for g, n in zip(reference.var_names, ref_counts) if n > 0 and g not in spatial.var_names]
        if not genes:
            raise StfusionError("The reference measures no gene (with counts) that the spatial data lacks; "
                                "pass --genes FILE to impute measured genes as a hold-out check.")  # fmt: skip
        return genes
    path = Path(spec)
    if not path.is_file():
        raise StfusionError(f"--genes {spec!r} is neither '{ALL_MISSING}' nor an existing file of gene names.")
    genes = [line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not genes:
        raise StfusionError(f"{path} lists no genes (one gene name per line).")
    return list(dict.fromkeys(genes))


# ----------------------------------------------------------------------------- imputing
def make_imputer(method: str, seed: int, mode: str | None, params: dict) -> Any:
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
    return get(name)(**kwargs)  # --cell-type-key labels reach SpaIM/Tangram as obs["cell_type"] (read_reference)


def impute_pair(model: Any, reference: ad.AnnData, spatial: ad.AnnData, genes: Sequence[str]) -> tuple[ad.AnnData, list[str]]:
    """Fit ``model`` on the shared genes other than ``genes`` (sorted, with counts in both datasets;
    the spatial data restricted to them, as the benchmark's gene k-fold does) and impute ``genes``.
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
    return model.impute(list(genes)), train


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
    genes: Annotated[str, typer.Option(help="File of gene names (one a line) or 'all-missing'.")] = ALL_MISSING,
    cell_type_key: Annotated[Optional[str], typer.Option(help="Reference obs column of cell types (SpaIM, Tangram clusters).")] = None,
    mode: Annotated[Optional[str], typer.Option(help="Tangram only: clusters (default) or cells.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    param: Annotated[list[str], typer.Option("--param", "-p", help="Hyperparameter key=value (repeatable).")] = [],  # noqa: B006
) -> None:
    """Impute genes the spatial data did not measure from a single-cell reference."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from stfusion.io import write_h5ad
    from stfusion.io.reference import read_reference

    model = make_imputer(method.lower(), seed, mode, parse_params(param))
    ref = read_reference(reference, cell_type_key=cell_type_key)
    sp_full, counts = read_spatial_h5ad(spatial)
    sp = ad.AnnData(X=counts, obs=pd.DataFrame(index=sp_full.obs_names), var=pd.DataFrame(index=sp_full.var_names),
                    obsm={k: v for k, v in sp_full.obsm.items() if isinstance(v, np.ndarray)})  # fmt: skip
    wanted = resolve_genes(genes, ref, sp)
    measured = [g for g in wanted if g in sp.var_names]
    if measured:
        log.warning(f"{len(measured)} requested genes are measured in the spatial data; they are held out of training "
                    f"and imputed (measured counts kept in layers['counts']): {measured[:5]}")  # fmt: skip
    imputed, train = impute_pair(model, ref, sp, wanted)
    result = imputed_output(sp_full, counts, imputed)
    result.uns[K.STFUSION] = {**dict(sp_full.uns.get(K.STFUSION, {})), "imputation": {
        "method": model.name, "hyperparams_json": json.dumps(model.hyperparams), "seed": seed,
        "training_genes": train, "imputed_genes": wanted,
        "expression_space": imputed.uns.get(K.STFUSION, {}).get("expression_space", ""),
    }}  # fmt: skip
    write_h5ad(result, out)
    log.info(f"wrote {out} ({result.n_obs} cells, {len(wanted)} imputed + {result.n_vars - len(wanted)} measured genes)")
