#!/usr/bin/env bash
# ST-Net (issue 4) benchmark on her2st patient C; run from the repository root.
# Two runners fill the same run folder from both ends of the fold list (finished cells are
# skipped, so either can be restarted); the last command rewrites the tables from all cells.
set -euo pipefail
OUT=${1:-benchmarks/runs/stnet}
nice .venv/bin/stfusion benchmark benchmarks/stnet/stnet_her2st.toml --out "$OUT" &
nice .venv/bin/stfusion benchmark benchmarks/stnet/stnet_her2st_reverse.toml --out "$OUT" &
wait
.venv/bin/stfusion benchmark benchmarks/stnet/stnet_her2st.toml --out "$OUT"   # all cells done: writes the tables
cp "$OUT"/summary.md "$OUT"/summary.csv "$OUT"/timings.csv benchmarks/stnet/
cp "$OUT"/*.png benchmarks/stnet/ 2>/dev/null || true
# learning-rate experiment (benchmarks/stnet/diagnostics/lr_experiment.md)
# nice .venv/bin/python benchmarks/stnet/diagnostics/lr_experiment.py 8 0.01 0.1 1.0
