#!/usr/bin/env bash
# The baseline floor of issue 3: every model must clear these tables.
# The run goes to benchmarks/runs/baselines (ignored by git; resumable: delete it to re-time);
# the tables are copied into benchmarks/results/baselines.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/runs/baselines
mkdir -p benchmarks/runs
/usr/bin/time -v .venv/bin/stfusion benchmark benchmarks/baselines.toml --out "$out" 2> "$out.time.txt" || { cat "$out.time.txt"; exit 1; }
grep -E "Elapsed|User time|System time|Maximum resident" "$out.time.txt"
.venv/bin/python benchmarks/export_results.py "$out" benchmarks/results/baselines
