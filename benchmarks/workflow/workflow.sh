#!/usr/bin/env bash
# A new user's workflow, one stfusion command per step (issue 8):
# read a Visium outs folder and a legacy ST section, fit each histology model, predict the
# spots and a super-resolved grid, impute genes with SpaIM, run a benchmark, write the HTML
# report.
#
#   benchmarks/workflow/workflow.sh tiny OUT   # xfuse toy section + synthetic pair (CI, ~2 min)
#   benchmarks/workflow/workflow.sh full OUT   # STUtility MOB1 + osmFISH pair (tens of minutes)
#
# Needs the shared data (../shared/data, or $STFUSION_SHARED_DATA) and the stfusion command
# ($STFUSION, default .venv/bin/stfusion of this repository).
set -euo pipefail

MODE=${1:?usage: workflow.sh tiny|full OUT}
OUT=${2:?usage: workflow.sh tiny|full OUT}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DATA=${STFUSION_SHARED_DATA:-$REPO/../shared/data}
ST=${STFUSION:-$REPO/.venv/bin/stfusion}
PY=$(dirname "$ST")/python
mkdir -p "$OUT"
step() { echo "== $*" >&2; "$ST" --quiet "$@"; }

# 1. read: a Visium outs folder and a legacy ST section -> validated .h5ad sections
step read visium "$DATA/squidpy_visium_fixture" --out "$OUT/visium.h5ad"
if [ "$MODE" = tiny ]; then
    T="$DATA/xfuse_mob_toy"
    step read st --counts "$T/counts.tsv" --spots "$T/spots.tsv" --image "$T/image.jpg" --out "$OUT/section.h5ad"
    GENES=10
    FIT_STNET=(--epochs 1 -p batch_size=32)
    FIT_HISTOGENE=(--epochs 2)
    FIT_XFUSE=(-p steps=20 -p patch_px=64)
    GRID_UM=50
    SAMPLES=2
else
    step read stutility "$DATA/stutility_mob" --section MOB1 --out "$OUT/section.h5ad"
    GENES=100
    FIT_STNET=(); FIT_HISTOGENE=(); FIT_XFUSE=()
    GRID_UM=20
    SAMPLES=10
fi

# 2. fit each histology model, predict its spots; super-resolve where the model can
step fit stnet "$OUT/section.h5ad" --genes "$GENES" --preset fast --seed 0 "${FIT_STNET[@]}" --out "$OUT/models/stnet"
step predict "$OUT/models/stnet" "$OUT/section.h5ad" --out "$OUT/pred_stnet.h5ad"
step fit histogene "$OUT/section.h5ad" --genes "$GENES" --preset fast --seed 0 "${FIT_HISTOGENE[@]}" --out "$OUT/models/histogene"
step predict "$OUT/models/histogene" "$OUT/section.h5ad" --out "$OUT/pred_histogene.h5ad"
step predict "$OUT/models/histogene" "$OUT/section.h5ad" --super-resolution 4 --out "$OUT/superres_histogene.h5ad"
step fit xfuse "$OUT/section.h5ad" --genes "$GENES" --seed 0 "${FIT_XFUSE[@]}" --out "$OUT/models/xfuse"
step predict "$OUT/models/xfuse" "$OUT/section.h5ad" --samples "$SAMPLES" --out "$OUT/pred_xfuse.h5ad"
step predict "$OUT/models/xfuse" "$OUT/section.h5ad" --grid-um "$GRID_UM" --samples "$SAMPLES" --out "$OUT/grid_xfuse.h5ad"

# 3. impute genes the spatial assay did not measure, from a single-cell reference
if [ "$MODE" = tiny ]; then
    "$PY" -c "
from stfusion.data.synthetic import make_synthetic_pair
ref, sp = make_synthetic_pair(seed=0)
ref.write_h5ad('$OUT/reference.h5ad'); sp[:, sp.var_names[10:]].copy().write_h5ad('$OUT/spatial.h5ad')"
    REF="$OUT/reference.h5ad"; SPATIAL="$OUT/spatial.h5ad"; IMPUTE=(-p epochs=20)
else
    REF="$DATA/stdiff_osmfish/dataset2_seq_33.h5ad"; SPATIAL="$DATA/stdiff_osmfish/dataset2_spatial_33.h5ad"; IMPUTE=()
fi
step impute spaim --reference "$REF" --spatial "$SPATIAL" --seed 0 "${IMPUTE[@]}" --out "$OUT/imputed.h5ad"

# 4. benchmark and 5. HTML reports (of the benchmark and of a prediction)
step benchmark "$HERE/$MODE.toml" --out "$OUT/benchmark" --no-progress > /dev/null
step report "$OUT/benchmark" --out "$OUT/benchmark_report.html"
step report "$OUT/pred_xfuse.h5ad" --truth "$OUT/section.h5ad" --out "$OUT/prediction_report.html"
echo "workflow ($MODE) finished: $OUT" >&2
