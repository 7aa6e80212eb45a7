#!/usr/bin/env bash
# Issue 17 item 5: turn one finished Fashion-MNIST pretraining run into the packaged `.fmnist` weights, with cards
# made from its own measurements (nothing typed by hand but the optional notes):
#   1. the full-split probe of its encoder (eval_linear.py --fast: LARS, converged L-BFGS readout, per block, kNN,
#      and the raw-pixel floor on the same split) -> RUN/package-probe/results.json;
#   2. `hub package` of the encoder and of the full pretraining model (decoder included) into
#      randsac_timm/hub/weights/ (named after the run's wrapper: a 28x28 run of randsac_pretrain_vit_micro_patch4_28
#      gives randsac_vit_micro_patch4_28.fmnist and leaves the older _patch4_32.fmnist tag as it is);
#   3. `hub card` -> docs/model_cards/<name>.md for both, with docs/model_cards/notes/<name>.md as `--notes` where it
#      exists (the only hand-written part, under its own heading).
# The run is the race's seed-0 RandSAC run by default (the best recipe, one CPU-hour of training):
#   bash benchmarks/fmnist_weights.sh [RUN_DIR] [TAG]
#   DATA=/usr/share/datasets/fashion-mnist bash benchmarks/fmnist_weights.sh output/race/race_recipe/RandSAC-seed0
# PROBE_ARGS adds eval_linear.py flags (a smoke check: PROBE_ARGS='--max-train-samples 1000 --max-eval-samples 1000
# --epochs 2'; weights for users are probed on the full split).
set -euo pipefail
RUN=${1:-output/race/race_recipe/RandSAC-seed0}
TAG=${2:-fmnist}
DATA=${DATA:-}
PY=${PY:-python}
CHECKPOINT=$RUN/checkpoint-last.pth
if [ ! -f "$CHECKPOINT" ]; then
  echo "fmnist_weights.sh: error: $CHECKPOINT does not exist: give the folder of a finished pretraining run" >&2
  exit 2
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY eval_linear.py --checkpoint "$CHECKPOINT" --fast --pixel-baselines --no-progress \
  --output-dir "$RUN/package-probe" ${DATA:+--data-dir "$DATA"} ${PROBE_ARGS:-}
$PY -m randsac_timm.hub package "$CHECKPOINT" --results "$RUN/package-probe/results.json" --tag "$TAG"
$PY -m randsac_timm.hub package "$CHECKPOINT" --full --tag "$TAG"
# the names the two packages took: the wrapper the checkpoint was written by, and its encoder
WRAPPER=$($PY -c "import sys; from randsac_timm.train.checkpoint import load_checkpoint
print(load_checkpoint(sys.argv[1])['model_name'])" "$CHECKPOINT")
ENCODER=randsac_${WRAPPER#*_pretrain_}
# the publisher's own notes (how far from the targets, what is left), where docs/model_cards/notes/ has them
for name in "$ENCODER.$TAG" "$WRAPPER.$TAG"; do
  NOTES=()
  if [ -f "docs/model_cards/notes/$name.md" ]; then NOTES=(--notes "docs/model_cards/notes/$name.md"); fi
  $PY -m randsac_timm.hub card "randsac_timm/hub/weights/$name.json" "docs/model_cards/$name.md" "${NOTES[@]}"
done
echo "packaged $ENCODER.$TAG and $WRAPPER.$TAG; probe: $RUN/package-probe/results.json"
