"""Issue 24, item 2: the XFuse levers table from the runs of ``holdout_seed0.toml`` / ``holdout_seed1.toml``.

Reads every finished cell of ``benchmarks/runs/xfuse_levers_seed{0,1}`` (the runner's per-gene
rows: ``target`` = ``paper``, raw counts, and ``strict``) and writes ``levers.md`` / ``levers.csv``
beside this script: per method, section and fold seed the median gene-wise Pearson r under both
views, the Gaussian process's on the same fold, the differences, and the cell's time and peak
memory. Rows of methods whose cells are missing are left out (a run that has not finished).

Run (repository root): ``.venv/bin/python benchmarks/xfuse/levers/table.py``
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
RUNS = HERE.parents[2] / "benchmarks" / "runs"
BASELINE = "gaussian_process"


def medians(run_dir: Path, seed: int) -> pd.DataFrame:
    from stfusion.benchmark.report import load_cells

    rows, timings = load_cells(run_dir)
    if rows.empty:
        return pd.DataFrame()
    r = rows[(rows.metric == "pearson") & (rows.kind == "model")]
    med = r.groupby(["method", "fold", "target"])["value"].median().unstack("target")
    med = med.rename(columns={"paper": "r_counts", "strict": "r_strict"}).reset_index()
    t = timings[timings.kind == "model"][["method", "fold", "seconds", "peak_rss_mb"]]
    out = med.merge(t, on=["method", "fold"], how="left").assign(seed=seed)
    out["section"] = out["fold"].str.split(":").str[0]
    return out


def table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    df = pd.concat([f for f in frames if not f.empty], ignore_index=True)
    gp = df[df.method == BASELINE].set_index(["section", "seed"])[["r_counts", "r_strict"]]
    gp.columns = ["gp_counts", "gp_strict"]
    df = df.join(gp, on=["section", "seed"])
    df["d_counts"] = df["r_counts"] - df["gp_counts"]
    df["d_strict"] = df["r_strict"] - df["gp_strict"]
    cols = ["method", "section", "seed", "r_counts", "gp_counts", "d_counts", "r_strict", "gp_strict", "d_strict",
            "seconds", "peak_rss_mb"]
    return df[cols].sort_values(["method", "section", "seed"]).reset_index(drop=True)


def main() -> None:
    frames = [medians(RUNS / f"xfuse_levers_seed{s}", s) for s in (0, 1) if (RUNS / f"xfuse_levers_seed{s}").is_dir()]
    if not frames:
        sys.exit(f"no runs under {RUNS}: run the two configs first (see their headers).")
    df = table(frames)
    df.to_csv(HERE / "levers.csv", index=False, float_format="%.4f")
    md = df.copy()
    for c in ("r_counts", "gp_counts", "d_counts", "r_strict", "gp_strict", "d_strict"):
        md[c] = md[c].map(lambda v: "—" if pd.isna(v) else f"{v:+.3f}" if c.startswith("d_") else f"{v:.3f}")
    md["seconds"] = md["seconds"].map(lambda v: f"{v:.0f}")
    md["peak_rss_mb"] = md["peak_rss_mb"].map(lambda v: f"{v:.0f}")
    lines = ["| " + " | ".join(md.columns) + " |", "|" + "---|" * len(md.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in md.itertuples(index=False)]
    (HERE / "levers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
