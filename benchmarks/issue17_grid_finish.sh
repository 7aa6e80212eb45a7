#!/usr/bin/env bash
# The last four runs of issue 17's claim grid (benchmarks/issue17_cpu.sh, step 4), rebalanced over the two cores.
# A fresh checkout lost the two in-flight checkpoints, so these start again; issue17_cpu.sh's split would have left
# one process three rows and the other one. Here each process runs two RandSAC-sized runs, split by seed, with the
# same grid settings (epochs included) as every finished row, then the table is written again.
#   PY=.venv/bin/python nohup bash benchmarks/issue17_grid_finish.sh >> output/issue17.log 2>&1 &
set -euo pipefail
PY=${PY:-python}
BEST=benchmarks/results/recipe_search-best.json
EPOCHS=${EPOCHS:-4.55}  # what issue17_cpu.sh computed from the race's calibration (about 45 CPU-min per row)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p output
GRID=(benchmarks/ablation_grid.py --recipes "$BEST" --train-samples 60000 --epochs "$EPOCHS" --threads 1)
( $PY "${GRID[@]}" --rows 'blob 11->5 two-stream' --only-seeds 1 &&
  $PY "${GRID[@]}" --rows 'patch-random' --only-seeds 0 ) > output/issue17-grid-a.log 2>&1 &
A=$!
( $PY "${GRID[@]}" --rows 'blob 16->4' --only-seeds 1 &&
  $PY "${GRID[@]}" --rows 'patch-random' --only-seeds 1 ) > output/issue17-grid-b.log 2>&1 &
B=$!
wait $A || { echo "grid runs A failed: output/issue17-grid-a.log" >&2; exit 1; }
wait $B || { echo "grid runs B failed: output/issue17-grid-b.log" >&2; exit 1; }
$PY "${GRID[@]}" --table-only
