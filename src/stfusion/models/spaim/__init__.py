"""SpaIM (Li et al., Nat Commun 2025): style-transfer imputation of spatial genes from a scRNA-seq reference."""

from stfusion.models.spaim.model import (
    FAST, SpaIM, UnimputableGenesError, cluster_means, log1p_expression, reference_clusters,
)  # fmt: skip
from stfusion.models.spaim.nn import SpaIMNet, gram_matrix, spaim_loss

__all__ = [
    "FAST", "SpaIM", "SpaIMNet", "UnimputableGenesError", "cluster_means", "gram_matrix", "log1p_expression",
    "reference_clusters", "spaim_loss",
]  # fmt: skip
