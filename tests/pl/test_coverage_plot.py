"""stfusion.pl.coverage: observed vs nominal, from a coverage table or the benchmark's per-gene rows."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from stfusion.errors import StfusionError
from stfusion.pl.coverage import coverage_from_per_gene, coverage_plot


def _per_gene() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for method, shift in (("calibrated", 0.0), ("overconfident", -0.15)):
        for fold in ("f1", "f2"):
            for level in (50, 80, 90, 95):
                for g in range(30):
                    v = np.clip(level / 100 + shift + 0.02 * rng.normal(), 0, 1)
                    rows.append((f"g{g}", f"coverage_{level}", v, "d", fold, method, "model"))
                    rows.append((f"g{g}", f"width_{level}", 1.0, "d", fold, method, "model"))
    return pd.DataFrame(rows, columns=["gene", "metric", "value", "dataset", "fold", "method", "kind"])


def test_table_from_per_gene_and_plot():
    table = coverage_from_per_gene(_per_gene())
    assert set(table.method) == {"calibrated", "overconfident"} and sorted(set(table.nominal)) == [0.5, 0.8, 0.9, 0.95]
    cal = table[table.method == "calibrated"].sort_values("nominal")
    np.testing.assert_allclose(cal.observed, [0.5, 0.8, 0.9, 0.95], atol=0.01)
    assert (table.q10 <= table.observed).all() and (table.observed <= table.q90).all()
    fig = coverage_plot(_per_gene(), title="d")  # the per-gene table is accepted directly
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "calibrated" in labels and "nominal" in labels
    plt.close(fig)
    with pytest.raises(StfusionError, match="coverage_"):
        coverage_from_per_gene(_per_gene().assign(metric="pearson"))
