"""Imputed output that can be drawn and scored, impute --preset and early gene checks, and models
that refuse data they were not trained for (issue 27 items 3 and 4)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from stfusion import _constants as K
from stfusion.cli import main
from stfusion.data.synthetic import make_synthetic_pair, make_synthetic_section
from stfusion.errors import StfusionError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def osmfish_like(tmp_path_factory):
    """A pair laid out like the shared osmFISH files: the spatial cells' coordinates only in
    obs.x_coord / obs.y_coord (no obsm['spatial'])."""
    root = tmp_path_factory.mktemp("pair")
    ref, sp = make_synthetic_pair(n_ref_cells=120, n_spatial_cells=60, n_genes=16, n_types=2, seed=2)
    for a in (ref, sp):
        a.uns.clear()
    sp.obs["x_coord"], sp.obs["y_coord"] = sp.obsm["spatial"][:, 0], sp.obsm["spatial"][:, 1]
    del sp.obsm["spatial"]
    ref.write_h5ad(root / "ref.h5ad")
    sp.write_h5ad(root / "sp.h5ad")
    return root


def _impute(root, *extra, out="imp.h5ad"):
    return ["impute", "knn", "--reference", str(root / "ref.h5ad"), "--spatial", str(root / "sp.h5ad"),
            "--out", str(root / out), *extra]  # fmt: skip


def test_imputed_output_has_coordinates_and_can_be_drawn_and_scored(osmfish_like, capsys):
    root = osmfish_like
    assert main(_impute(root, "--genes", "gene_000,gene_001", "--coordinate-units", "um")) == 0
    out = ad.read_h5ad(root / "imp.h5ad")
    np.testing.assert_allclose(out.obsm["spatial"][:, 0], ad.read_h5ad(root / "sp.h5ad").obs["x_coord"])
    assert out.uns["stfusion"][K.COORDINATE_UNITS] == "um"
    assert main(["plot", "map", str(root / "imp.h5ad"), "-g", "gene_000", "--out", str(root / "m.png")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(root / "imp.h5ad"), str(root / "sp.h5ad")]) == 0
    assert "2 imputed genes scored" in capsys.readouterr().out
    assert main(["report", str(root / "imp.h5ad"), "--out", str(root / "imp.html")]) == 0


def test_imputation_map_in_um_has_a_scale_bar(osmfish_like):
    from stfusion.pl import expression_map

    assert main(_impute(osmfish_like, "--genes", "gene_000", "--coordinate-units", "um", out="u.h5ad")) == 0
    fig = expression_map(ad.read_h5ad(osmfish_like / "u.h5ad"), "gene_000")
    assert any(line.get_gid() == "scale_bar" for line in fig.axes[0].lines)


def test_impute_preset_fast_is_spaims_fast_settings():
    from stfusion.cli.impute import make_imputer
    from stfusion.models.spaim import SpaIM

    assert make_imputer("spaim", 0, None, {}, "fast").hyperparams == SpaIM.fast(seed=0, progress=False).hyperparams
    with pytest.raises(Exception, match="--preset"):
        make_imputer("knn", 0, None, {}, "fast")


def test_gene_missing_from_the_reference_is_refused_before_training(osmfish_like, monkeypatch, capsys):
    import stfusion.cli.impute as I

    monkeypatch.setattr(I, "impute_pair", lambda *a, **k: pytest.fail("trained before checking the genes"))
    assert main(_impute(osmfish_like, "--genes", "gene_000,NOT_A_GENE", out="x.h5ad")) == 1
    assert "not measured in the reference (e.g. NOT_A_GENE)" in " ".join(capsys.readouterr().err.split())


def test_a_section_sharing_none_of_the_models_genes_is_refused(tmp_path):
    from stfusion.models.api import fit

    train = make_synthetic_section(tmp_path / "a", grid=(5, 5), n_genes=4, microns_per_pixel=2.0, seed=0)
    model = fit("constant", [train])
    other = train.copy()
    other.var_names = [g.upper() for g in train.var_names]  # "human" symbols for a "mouse" model
    with pytest.raises(StfusionError, match=r"has 0 of the model's 4 genes.*4 match when upper/lower case is ignored"):
        model.predict(other)
    assert model.predict(train).n_vars == 4
