"""The README's user workflow, one command per step, on the tiniest data (issue 8).

Runs benchmarks/workflow/workflow.sh in ``tiny`` mode: read Visium + legacy ST, fit ST-Net,
HisToGene and XFuse, predict spots and super-resolved grids, impute with SpaIM, benchmark,
HTML reports.
"""

import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]


@pytest.fixture(scope="module")
def workflow(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("workflow")
    env = dict(os.environ, STFUSION_SHARED_DATA=str(shared_data), STFUSION=str(Path(sys.executable).parent / "stfusion"))
    env.setdefault("OMP_NUM_THREADS", "1")
    run = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "workflow" / "workflow.sh"), "tiny", str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def test_every_step_wrote_its_output(workflow):
    for name in ("visium.h5ad", "section.h5ad", "pred_stnet.h5ad", "pred_histogene.h5ad", "superres_histogene.h5ad",
                 "pred_xfuse.h5ad", "grid_xfuse.h5ad", "imputed.h5ad", "benchmark/summary.csv",
                 "benchmark_report.html", "prediction_report.html"):
        assert (workflow / name).is_file(), name


def test_predictions_match_the_section(workflow):
    section = ad.read_h5ad(workflow / "section.h5ad")
    for method in ("stnet", "histogene", "xfuse"):
        pred = ad.read_h5ad(workflow / f"pred_{method}.h5ad")
        assert list(pred.obs_names) == list(section.obs_names)
        assert pred.n_vars == 10 and np.isfinite(pred.X).all()
    assert "sd" in ad.read_h5ad(workflow / "pred_xfuse.h5ad").layers
    superres = ad.read_h5ad(workflow / "superres_histogene.h5ad")
    assert superres.n_obs >= 4 * section.n_obs * 0.9  # about four sub-patches per spot


def test_imputed_genes_are_marked(workflow):
    imputed = ad.read_h5ad(workflow / "imputed.h5ad")
    assert imputed.var["imputed"].sum() == 10 and (~imputed.var["imputed"]).sum() == 50
    x = imputed[:, imputed.var["imputed"].to_numpy()].X
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    assert np.isfinite(x).all() and x.std(axis=0).min() > 0  # every imputed gene varies over cells


def test_reports_are_self_contained(workflow):
    for name in ("benchmark_report.html", "prediction_report.html"):
        html = (workflow / name).read_text()
        assert "<img" in html and "http://" not in html and "https://" not in html
