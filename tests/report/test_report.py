"""``stfusion report``: self-contained HTML of a benchmark run and of a prediction."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from stfusion.benchmark.report import write_outputs
from stfusion.cli import main
from stfusion.errors import InputFileError, StfusionError
from stfusion.io import write_h5ad
from stfusion.report import build_report, external_references
from stfusion.report.benchmark_run import load_run, summary_table
from stfusion.report.browser import find_chromium, screenshot, screenshot_stats
from tests.pl import synthetic as S

HIST_METRICS = ("pearson", "spearman", "rmse", "auroc", "pearson_smoothed", "pvalue")
IMP_METRICS = ("pearson", "ssim", "rmse", "js")
IMG = re.compile(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"')


def _cell(run, dataset, protocol, method, kind, fold, metrics, centre, rng, seconds):
    rows = []
    for g in range(30):
        for m in metrics:
            value = centre + 0.1 * rng.normal() if m == "pearson" else abs(rng.normal()) * 0.01
            rows.append({"gene": f"G{g}", "metric": m, "value": value})
    df = pd.DataFrame(rows).assign(dataset=dataset, protocol=protocol, fold=fold, method=method, kind=kind)
    if kind == "null":
        df["permutation"] = 0
    path = run / "cells" / dataset / method / kind / f"{fold}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    path.with_suffix(".json").write_text(json.dumps({"seconds": seconds, "peak_rss_mb": 100.0 + seconds, "rss_increase_mb": 1.0}))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder in the runner's layout: a histology dataset (with a null) and an imputation one."""
    run = tmp_path_factory.mktemp("bench") / "run"
    rng = np.random.default_rng(0)
    for fold in ("S1", "S2"):
        _cell(run, "toy", "leave_one_section_out", "ridge", "model", fold, HIST_METRICS, 0.4, rng, 2.0)
        _cell(run, "toy", "leave_one_section_out", "ridge", "null", fold, HIST_METRICS, 0.0, rng, 9.0)
        _cell(run, "toy", "leave_one_section_out", "constant", "model", fold, HIST_METRICS, 0.0, rng, 0.5)
    for fold in ("k1", "k2"):
        _cell(run, "pair", "gene_kfold", "knn", "model", fold, IMP_METRICS, 0.2, rng, 1.0)
        _cell(run, "pair", "gene_kfold", "mean", "model", fold, IMP_METRICS, 0.1, rng, 1.0)
    cfg = {"name": "toyrun", "seed": 3, "datasets": [{"name": "toy", "reader": "h5ad", "sections": ["S1", "S2"]},
                                                    {"name": "pair", "reader": "merfish_pair", "sections": []}],
           "methods": [{"name": "ridge", "params": {"alpha": 2}, "null_permutations": 1}], "environment": {"stfusion": "0.1.0"}}
    (run / "config.resolved.json").write_text(json.dumps(cfg))
    write_outputs(run)
    return run


def _check_self_contained(text: str) -> None:
    assert external_references(text) == []
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "<link" not in text


def test_benchmark_report(run_dir, tmp_path):
    out = tmp_path / "report.html"
    page = build_report(run_dir, out)
    text = out.read_text()
    _check_self_contained(text)
    assert len(IMG.findall(text)) == page.n_images == 4  # per dataset: boxplot + time/memory
    assert text.count("<table>") == 2 + 2 * 2  # overview + methods; per dataset: summary + best genes
    for word in ("toyrun", "toy (leave_one_section_out)", "pair (gene_kfold)", "ridge", "knn", "median PCC", "null mean r (max)"):
        assert word in text, word
    assert not list(tmp_path.glob(".*part*"))  # no temporary file left behind


def test_benchmark_report_shows_interval_coverage(run_dir, tmp_path):
    """A method with intervals (coverage_* rows) gets the observed-vs-nominal figure and table columns."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir / "cells", run / "cells")
    cell = run / "cells" / "toy" / "ridge" / "model" / "S1.csv"
    df = pd.read_csv(cell)
    extra = [{"gene": f"G{g}", "metric": f"coverage_{p}", "value": p / 100 - 0.05} for g in range(30) for p in (50, 80, 90, 95)]
    extra = pd.DataFrame(extra).assign(**{c: df[c].iloc[0] for c in ("dataset", "protocol", "fold", "method", "kind")})
    pd.concat([df, extra], ignore_index=True).to_csv(cell, index=False)
    page = build_report(run, tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    assert page.n_images == 5  # the 4 of test_benchmark_report + the toy dataset's coverage figure
    assert "Observed vs nominal coverage" in text and "coverage 90%" in text
    row = summary_table(load_run(run), "toy").set_index("method").loc["ridge"]
    assert row["coverage 90%"] == pytest.approx(0.85, abs=1e-9)  # fold S1 only


def test_summary_rows_sorted_best_first(run_dir):
    run = load_run(run_dir)
    toy = summary_table(run, "toy")
    assert list(toy["method"]) == ["ridge", "constant"]
    assert toy.iloc[0]["mean r"] == pytest.approx(0.4, abs=0.05)
    assert list(toy.columns[-2:]) == ["seconds", "peak RSS MB"]
    assert toy.iloc[0]["seconds"] == pytest.approx(4.0)  # two folds of 2 s; the null's 9 s are not counted
    assert list(summary_table(run, "pair")["method"]) == ["knn", "mean"]


def test_report_from_cells_of_an_unfinished_run(run_dir, tmp_path):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(run_dir / "cells", partial / "cells")
    page = build_report(partial, tmp_path / "r.html")
    assert page.n_images == 4


def test_report_of_the_committed_baselines_export(tmp_path):
    """benchmarks/results/baselines (Pearson r only, no nulls): numbers as in its summary.md."""
    from pathlib import Path

    export = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "baselines"
    if not export.is_dir():
        pytest.skip(f"{export} not found")
    run = load_run(export)
    assert set(run.per_gene["protocol"]) == {"leave_one_section_out", "spot_holdout", "gene_kfold"}
    her2st = summary_table(run, "her2st_C")
    assert her2st.iloc[0]["method"] == "colour_texture_ridge" and her2st.iloc[0]["mean r"] == pytest.approx(0.121, abs=5e-4)
    page = build_report(export, tmp_path / "r.html")
    assert page.n_images == 2 * len(run.datasets)
    assert "<td>BGN</td>" in (tmp_path / "r.html").read_text()  # its best-predicted her2st gene


def test_not_a_run_folder(tmp_path):
    with pytest.raises(InputFileError, match="not a benchmark run folder"):
        build_report(tmp_path, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pred")
    truth = S.section(tmp)
    pred = S.prediction(truth)
    paths = {"truth": tmp / "truth.h5ad", "pred": tmp / "pred.h5ad", "sr": tmp / "sr.h5ad"}
    write_h5ad(truth, paths["truth"])
    pred.write_h5ad(paths["pred"])
    S.superres(truth).write_h5ad(paths["sr"])
    return truth, pred, paths


def test_prediction_report_with_truth(files, tmp_path):
    truth, pred, paths = files
    out = tmp_path / "pred.html"
    page = build_report(paths["pred"], out, truth=paths["truth"], super_resolved=paths["sr"])
    text = out.read_text()
    _check_self_contained(text)
    assert len(IMG.findall(text)) == page.n_images == 1 + 2 + 2  # score boxplot; best + median maps; both super-resolved
    # gene marker_0 has the least noise: it is the best gene, with the r computed independently
    totals = np.asarray(truth.X.sum(axis=1)).ravel()
    y = np.log1p(truth[:, "marker_0"].X.toarray().ravel() / totals * 1e4)
    r = np.corrcoef(y, pred[:, "marker_0"].X.ravel())[0, 1]
    assert f"marker_0: best gene, r = {r:.3f}." in text
    assert "Super-resolved maps" in text and "uncertainty (sd)" not in text  # titles live inside the PNGs


def test_superres_prediction_is_scored_at_the_spots(files, tmp_path):
    _, _, paths = files
    page = build_report(paths["sr"], tmp_path / "sr.html", truth=paths["truth"])
    text = (tmp_path / "sr.html").read_text()
    assert "4× super-res. (cell side 48.0 µm)" in text  # k=2 cells of half the 48 px pitch at 2 µm/px
    best = re.search(r"best gene, r = ([0-9]+\.[0-9]+)", text)
    assert best and float(best.group(1)) > 0.9  # the cells carry the spot's truth plus small noise
    assert page.n_images == 3


def test_prediction_report_without_truth(files, tmp_path):
    _, _, paths = files
    page = build_report(paths["pred"], tmp_path / "p.html", genes=["noise_1"])
    text = (tmp_path / "p.html").read_text()
    assert page.n_images == 3  # two most variable genes + the requested one
    assert "Scores against" not in text and "noise_1: requested." in text


def test_unknown_gene_leaves_existing_output_untouched(files, tmp_path):
    _, _, paths = files
    out = tmp_path / "keep.html"
    out.write_text("old")
    with pytest.raises(StfusionError, match="not predicted"):
        build_report(paths["pred"], out, genes=["NOPE"])
    assert out.read_text() == "old"


def test_cli(run_dir, files, tmp_path, capsys):
    _, _, paths = files
    assert main(["report", str(run_dir), "--out", str(tmp_path / "b.html")]) == 0
    assert main(["report", str(paths["pred"]), "--truth", str(paths["truth"]), "-g", "noise_2", "-o", str(tmp_path / "p.html")]) == 0
    assert (tmp_path / "b.html").stat().st_size > 10_000 and (tmp_path / "p.html").exists()
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "x.html")]) == 1
    assert "neither a benchmark run folder" in capsys.readouterr().err
    assert main(["report", str(run_dir), "--truth", str(paths["truth"]), "--out", str(tmp_path / "y.html")]) == 1


@pytest.mark.skipif(find_chromium() is None, reason="Chromium not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    build_report(run_dir, tmp_path / "report.html")
    png = screenshot(tmp_path / "report.html", tmp_path / "shot.png", width=1000, height=1400)
    stats = screenshot_stats(png)
    assert (stats.width, stats.height) == (1000, 1400)
    assert stats.grey_std > 20  # a blank page has ~0
    assert stats.ink_fraction > 0.01 and stats.colour_fraction > 0.01  # text and coloured figures drawn
