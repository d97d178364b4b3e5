"""What ``stfusion methods`` lists, as plain data, so listing imports no model (torch, scanpy).

:data:`METHODS` copies each registered class's ``input_kind``, ``has_uncertainty``,
``has_super_resolution`` and ``description``; :data:`PROTOCOLS` the benchmark protocols
(``stfusion.benchmark.protocols.PROTOCOLS`` and ``stfusion.benchmark.papers.PAPER_PROTOCOLS``).
``tests/test_cli_help.py`` fails when either drifts from the classes it copies (a method added to
the registry needs its line here); until then ``stfusion methods`` imports the missing class itself.
"""

from __future__ import annotations

# name -> (input, has uncertainty, has super-resolution, description)
METHODS: dict[str, tuple[str, bool, bool, str]] = {
    "colour_texture_ridge": ("histology", False, False, "Ridge (per-gene alpha by GCV) on colour/texture features of each patch."),
    "constant": ("coordinates", False, False, "Each gene's mean expression over all training spots."),
    "depth_only": ("histology", False, False, "Image -> sequencing depth (ridge on colour/texture) -> per-gene linear map."),
    "encoder_ridge": ("histology", False, False, "Frozen pathology encoder + PCA(256) + ridge on each spot's 112 µm patch (HEST linear probe)."),
    "gaussian_process": ("coordinates", True, False, "Per-gene Gaussian process (squared-exponential kernel) over spot coordinates."),
    "gimvi": ("reference", False, False, "gimVI (scvi-tools): joint VAE of reference and spatial counts, decode missing genes."),
    "histogene": ("histology", False, True, "Vision transformer over all spot patches of a section (Pang et al. 2021); super-resolution"),
    "histogram_regression": ("histology", False, False, "Linear regression on 5-bin RGB histograms of each spot's patch (XFuse baseline)."),
    "knn_reference": ("reference", False, False, "Mean of the k nearest reference cells in a shared PCA space (SpaGE-like)."),
    "label_mean": ("labels", False, False, "Mean expression of training spots with the same region label."),
    "linear": ("coordinates", False, False, "Barycentric interpolation on the Delaunay triangulation of training spot centres."),
    "morphology_rf": ("histology", False, False, "Random forest on nucleus morphology statistics of each patch (ST-Net baseline)."),
    "nearest_neighbour": ("coordinates", False, False, "Voronoi-area-weighted average of the training spots overlapping each test spot."),
    "spaim": ("reference", False, False, "SpaIM: recursive style transfer from reference clusters to spatial profiles."),
    "stnet": ("histology", False, False, "ST-Net: CNN (DenseNet-121 default) + linear head on each spot's 150 µm H&E patch."),
    "tangram": ("reference", False, False, "Tangram (tangram-sc): map reference cells or clusters onto space, project genes."),
    "xfuse": ("histology", True, True, "Deep generative model of histology and counts (Bergenstråhle et al. 2022); super-resolution with uncertainty"),
}  # fmt: skip

XFUSE_2022 = "Bergenstråhle et al., Nat Biotechnol 40:476 (2022)"
# name -> (data, scored on, what it does or the paper it follows)
PROTOCOLS: dict[str, tuple[str, str, str]] = {
    "leave_one_section_out": ("sections", "strict target", "Train on all sections but one, test on that one, for each section."),
    "leave_one_patient_out": ("sections", "strict target", "Train on all patients but one; each section of the held-out patient is a test fold."),
    "spot_holdout": ("sections", "strict target", "Hide ``fraction`` of each section's spots (seeded); train on the rest of that section."),
    "gene_kfold": ("pair", "strict target", "Split the shared genes into k folds; each fold is hidden from the spatial data."),
    "xfuse2022_holdout": ("sections", "paper + strict", XFUSE_2022),
    "xfuse2022_histology": ("sections", "paper + strict", XFUSE_2022),
    "xfuse2022_pairs": ("sections", "paper + strict", XFUSE_2022),
    "histogene2021_her2st": ("sections", "paper + strict", "Pang, Su & Li 2021, HisToGene, bioRxiv 10.1101/2021.11.28.470212; "
                             "Zeng et al. 2022, Hist2ST, Brief. Bioinform. 23(5):bbac297"),
    "li2022_imputation": ("pair", "paper + strict", "Li B. et al. Benchmarking spatial and single-cell transcriptomics integration "
                          "methods for transcript distribution prediction and cell type deconvolution. Nat Methods 19, 662-670 (2022)"),
}  # fmt: skip


def method_rows() -> list[tuple[str, str, bool, bool, str]]:
    """(name, input, uncertainty, super-resolution, description) of every registered method: from
    :data:`METHODS`, and for a registered name missing there, from its class (imported)."""
    from stfusion.models.registry import available, get

    rows = []
    for name in available():
        if name in METHODS:
            rows.append((name, *METHODS[name]))
            continue
        cls = get(name)
        rows.append((name, getattr(cls, "input_kind", "?"), bool(getattr(cls, "has_uncertainty", False)),
                     bool(getattr(cls, "has_super_resolution", False)), getattr(cls, "description", "")))  # fmt: skip
    return rows
