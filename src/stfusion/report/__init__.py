"""Self-contained HTML reports of a benchmark run or a prediction (``stfusion report``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from stfusion.errors import InputFileError
from stfusion.report.benchmark_run import benchmark_page, load_run
from stfusion.report.html import Page, external_references, write_html
from stfusion.report.prediction import prediction_page

__all__ = ["Page", "benchmark_page", "build_report", "external_references", "load_run", "prediction_page", "write_html"]

log = logging.getLogger("stfusion")


def build_report(
    source: str | Path,
    out: str | Path,
    *,
    truth: str | Path | None = None,
    super_resolved: str | Path | None = None,
    genes: Sequence[str] = (),
) -> Page:
    """Write the report of a benchmark run folder or a prediction ``.h5ad`` to ``out`` (HTML).

    Parameters
    ----------
    source
        A run folder from ``stfusion benchmark`` or a prediction from ``stfusion predict``.
    out
        The HTML file to write (atomically).
    truth
        For a prediction: the measured section (``.h5ad`` from ``stfusion read``) to score
        against and draw beside it.
    super_resolved
        For a prediction: a super-resolved grid prediction of the same section to draw too.
    genes
        For a prediction: genes to draw besides the best and the median one.
    """
    source = Path(source)
    if source.is_dir():
        if truth is not None or super_resolved is not None or genes:
            raise InputFileError("--truth, --super-resolved and --gene apply to a prediction .h5ad, not to a benchmark run folder.")
        page = benchmark_page(load_run(source))
    elif source.suffix == ".h5ad" and source.is_file():
        page = _prediction(source, truth, super_resolved, genes)
    else:
        raise InputFileError(
            f"{source} is neither a benchmark run folder nor a prediction .h5ad file. "
            "Pass the folder given to `stfusion benchmark --out`, or the file from `stfusion predict --out`."
        )
    write_html(page.render(), out)
    log.info(f"wrote {out} ({page.n_images} figures)")
    return page


def _prediction(source: Path, truth, super_resolved, genes) -> Page:
    import anndata as ad

    from stfusion.io import read_h5ad

    for path in (truth, super_resolved):
        if path is not None and not Path(path).is_file():
            raise InputFileError(f"{path} does not exist.")
    return prediction_page(
        ad.read_h5ad(source),
        truth=read_h5ad(truth) if truth is not None else None,
        super_resolved=ad.read_h5ad(super_resolved) if super_resolved is not None else None,
        genes=genes,
        name=source.name,
    )
