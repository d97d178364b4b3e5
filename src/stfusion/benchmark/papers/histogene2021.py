"""her2st as the HisToGene / Hist2ST code scores it (protocol ``histogene2021_her2st``).

Read from the reference code (facts only; the code below is ours):

- **Truth** — maxpmx/HisToGene ``dataset.py``, ``ViT_HER2ST.__init__`` (and ``HER2ST.__init__``),
  identical in biomed-AI/Hist2ST ``dataset.py``, ``ViT_HER2ST.__init__``::

      exp = scp.transform.log(scp.normalize.library_size_normalize(m[gene_set].values))

  ``m`` is the section's count table (every row of ``ST-cnts/<S>.tsv`` joined to its spot file),
  ``gene_set`` the 785 genes of ``her_hvg_cut_1000.npy``. The **sub-matrix is taken first**, so
  the library size is the spot's total over the 785 genes, not over all genes. scprep
  (KrishnaswamyLab/scprep, ``scprep/normalize.py``, ``library_size_normalize``; default
  ``rescale=10000`` since scprep 1.0.0, October 2019, before both papers; neither repository pins
  scprep, and before 1.0 the default was the median library size) divides each row by its
  L1 norm (sklearn ``normalize(norm="l1")``: a row summing to 0 stays 0) and multiplies by 1e4;
  ``scprep/transform.py``, ``log`` defaults to ``pseudocount=1, base=10``. Truth per section:
  ``log10(1 + 1e4 * c_sub / sum(c_sub))`` (:func:`paper_expression`).
- **Metric** — biomed-AI/Hist2ST ``predict.py``, ``get_R(data1, data2, dim=1, func=pearsonr)``:
  ``scipy.stats.pearsonr`` of prediction and truth for each gene over the spots of the one
  held-out section; ``HIST2ST_train.py`` (and ``run_trained_models.ipynb``) report
  ``np.nanmean(R)``: genes whose r is NaN (a constant prediction or a constant truth in that
  section) are **dropped**, not counted as 0 (:func:`gene_pearson`, :func:`mean_of_means`).
  maxpmx/HisToGene ships no scoring script (``predict.py``, ``model_predict`` only returns the
  prediction and the truth in that space); Hist2ST's code is the published version of that
  evaluation and reproduces HisToGene as its baseline.
- **Aggregation** — one mean r per held-out section (one fold = one section), then the mean over
  the sections (:meth:`HisToGene2021Her2st.summarise`).
- **Split** — both ``ViT_HER2ST`` take ``samples = names[1:33]`` (the 36 sections sorted, less A1
  and H1–H3: 32 sections of 7 patients), test on ``samples[fold]`` and train on the 31 others
  (leave one *section* out; the held-out section's own patient is in the training set). Here it
  runs on the sections the dataset gives (her2st patient C, C2–C6: the only sections with an
  image besides the low-depth B4): leave one section out within patient C, 4 training sections
  per fold instead of 31.

**Which space each prediction is compared in.** The prediction is taken *as the method
returns it*: every stfusion model predicts the strict target (log1p(counts / spot total over all
genes × 1e4)); HisToGene ``fast`` trains on the papers' log10 space (``normalization =
"reference"``) and maps its output back to the strict space before returning it. The paper's
code compared its network's own output (in the log10 sub-matrix space) with the truth in that
space. Pearson r per gene does not see the base of the logarithm nor any affine rescaling, so
the only difference between "our prediction" and "a prediction in their space" is the
denominator (total over all genes vs over the 785: away from the pseudocount, a per-spot shift
in log space); we do not convert the predictions (that would need each model's predicted total
over the 785 genes), we convert the truth. For HisToGene the difference was measured: its network
output in the papers' space scores 0.176 in the paper view against 0.175 for the returned
prediction (``benchmarks/histogene2021/diagnostics/spaces.md``).
Paper rows: r(returned prediction, paper truth). Strict rows: :func:`score_histology` of the
same prediction (r against log1p(cp10k over all genes); a constant prediction scores 0 there).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from stfusion.benchmark.methods import make_model
from stfusion.benchmark.papers.base import PAPER, STRICT, PaperProtocol, tidy
from stfusion.benchmark.protocols import Fold, leave_one_section_out
from stfusion.errors import ConfigError

GENE_FILE = "her_hvg_cut_1000.npy"  # the papers' 785 genes (in both repositories' data/)
RESCALE = 1e4  # scprep >= 1.0 library_size_normalize(rescale=10000)


def paper_expression(counts: Any, *, rescale: float = RESCALE) -> np.ndarray:
    """``scp.transform.log(scp.normalize.library_size_normalize(sub))`` for a spots x genes
    count matrix ``counts`` that is *already* the gene sub-matrix: each row divided by its sum
    (a row summing to 0 stays 0), times ``rescale``, then ``log10(1 + x)``."""
    from scipy import sparse

    x = counts.toarray() if sparse.issparse(counts) else np.asarray(counts)
    x = x.astype(float)
    totals = x.sum(axis=1, keepdims=True)
    return np.log10(1.0 + x / np.where(totals == 0, 1.0, totals) * rescale)


def gene_pearson(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``get_R``: scipy ``pearsonr`` per gene (column) over the spots; (r, p-value), NaN for a
    gene whose prediction or truth is constant."""
    from scipy.stats import pearsonr

    pred, truth = np.asarray(pred, float), np.asarray(truth, float)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape.")
    r, p = np.full(pred.shape[1], np.nan), np.full(pred.shape[1], np.nan)
    with warnings.catch_warnings():  # scipy warns on a constant input and returns NaN
        warnings.simplefilter("ignore")
        for g in range(pred.shape[1]):
            res = pearsonr(pred[:, g], truth[:, g])
            r[g], p[g] = float(res[0]), float(res[1])
    return r, p


def mean_of_means(rows: pd.DataFrame, by: list[str]) -> pd.Series:
    """``np.nanmean`` of ``value`` over the genes of each fold (NaN genes dropped), then the
    plain mean of those fold means over the folds, for each group of ``by``."""
    with warnings.catch_warnings():  # a fold whose genes are all NaN gives NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        per_fold = rows.groupby([*by, "fold"])["value"].agg(lambda v: np.nanmean(v.to_numpy(float)))
    return per_fold.groupby(level=list(range(len(by)))).mean()


def _find_file(name: str | Path, sections: list[Any]) -> Path:
    """``name`` as given (absolute, or relative to the working folder), else relative to a
    folder above the sections' count files: a config gives files relative to its data root,
    and the sections are read from below it."""
    from stfusion import _constants as K

    path = Path(name)
    if path.is_file():
        return path
    tried = [path]
    for s in sections:
        source = s.uns.get(K.STFUSION, {}).get("source")
        for parent in Path(str(source)).parents if source else []:
            if (parent / path).is_file():
                return parent / path
            tried.append(parent / path)
    raise ConfigError(
        f"protocol 'histogene2021_her2st': gene file {str(name)!r} not found (looked at "
        f"{', '.join(str(t) for t in dict.fromkeys(tried))}). Set the dataset's genes to the papers' {GENE_FILE}."
    )


class HisToGene2021Her2st(PaperProtocol):
    """her2st scored as HisToGene (Pang et al. 2021) / Hist2ST (Zeng et al. 2022) score it (see
    the module docstring for every fact and its source)."""

    name = "histogene2021_her2st"
    paper = ("Pang, Su & Li 2021, HisToGene, bioRxiv 10.1101/2021.11.28.470212; "
             "Zeng et al. 2022, Hist2ST, Brief. Bioinform. 23(5):bbac297")  # fmt: skip
    source = ("maxpmx/HisToGene dataset.py ViT_HER2ST.__init__ and biomed-AI/Hist2ST dataset.py "
              "ViT_HER2ST.__init__ (truth: scprep log10(1 + 1e4 x library-size-normalised 785-gene "
              "sub-matrix); biomed-AI/Hist2ST predict.py get_R (scipy pearsonr per gene) and "
              "HIST2ST_train.py np.nanmean(R) (NaN genes dropped) per held-out section, mean over sections; "
              "split: leave one section out (samples = names[1:33]), here within the sections given")  # fmt: skip
    data_kind = "sections"
    summary = "her2st, leave one section out, log10 library-size truth on the 785 genes, nanmean gene r per section"
    published: ClassVar[dict[str, float]] = {}

    def check(self, data: Any) -> None:
        super().check(data)
        if len(data) < 2:
            raise ConfigError(
                f"protocol {self.name!r} holds out one section at a time: it needs at least two sections."
            )

    def folds(self, data: Any, seed: int) -> list[Fold]:
        self.check(data)
        return list(leave_one_section_out(data))

    def genes(self, fold: Fold, requested: Any) -> list[str]:
        from stfusion.data.genes import resolve_genes

        sections = [*fold.train, fold.test]
        if isinstance(requested, (list, tuple)):
            return list(resolve_genes(list(requested), sections))
        if isinstance(requested, int) or (isinstance(requested, str) and requested.isdigit()):
            raise ConfigError(
                f"protocol {self.name!r} scores the papers' 785 genes ({GENE_FILE}), not the top {requested}: "
                f"set the dataset's genes to that file (or leave it out)."
            )
        path = _find_file(requested if requested is not None else GENE_FILE, sections)
        return list(resolve_genes(str(path), sections))

    def run(self, method: Any, fold: Fold, genes: list[str], seed: int) -> pd.DataFrame:
        from stfusion.benchmark.scoring import score_histology
        from stfusion.models.base import dense

        model = make_model(method, seed)
        model.fit(fold.train, genes=genes)
        pred = model.predict(fold.test)
        p = dense(pred[list(fold.test.obs_names), list(genes)].X).astype(float)
        truth = paper_expression(fold.test[:, list(genes)].X)  # the sub-matrix first, then normalise
        r, pv = gene_pearson(p, truth)
        paper = tidy({"pearson": r, "pvalue": pv}, genes, PAPER)
        strict = score_histology(pred, fold.test, genes).assign(target=STRICT)
        return pd.concat([paper, strict], ignore_index=True)

    def summarise(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Mean Pearson r as the papers report it: per held-out section the mean over genes with
        NaN genes dropped, then the mean over sections; the strict rows the same way (their
        constant-prediction genes already count as r = 0). Also: the paper view's sections
        (folds), and the mean number of NaN genes dropped per section."""
        r = rows[(rows.get("kind", "model") == "model") & (rows.metric == "pearson")]
        table = mean_of_means(r, ["method", "target"]).unstack("target")
        table = table.reindex(columns=[PAPER, STRICT]).rename(columns=lambda t: f"mean r ({t})")
        paper = r[r.target == PAPER]
        table["sections"] = paper.groupby("method")["fold"].nunique()
        table["NaN genes dropped per section (paper)"] = (
            paper.assign(nan=paper.value.isna()).groupby(["method", "fold"])["nan"].sum().groupby(level=0).mean()
        )
        return table.reset_index().sort_values("mean r (paper)", ascending=False, na_position="last")
