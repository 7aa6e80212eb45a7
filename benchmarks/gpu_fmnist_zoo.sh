#!/usr/bin/env bash
# Issue 17's prepared GPU run (one call of the device tool, about 9 minutes on an H100/H200):
#   1. benchmarks/gpu_cudnn_nan_check.py (is this card's cuDNN masked-attention backward still broken?);
#   2. the micro encoder with the recipe search's best RandSAC recipe for $MICRO_EPOCHS epochs on the full 60k split;
#   3. the ViT-Tiny RandSAC / MAE pair with the same recipe (each method's best; the decoder sizes stay ViT-Tiny's);
#   4. the fast linear probe (LARS, converged L-BFGS, per block, kNN; pixels once) of every encoder;
#   5. the encoders copied to $OUT (ViT-Tiny in fp16, to fit the transfer limit) with their logs and results.
# Recipes: $RECIPES, a {method: {PretrainConfig field: value}} file (default: the search's
# benchmarks/results/recipe_search-best.json; without it, the race's base recipes).
#   DATA=.gpu_data OUT=/tmp/out bash benchmarks/gpu_fmnist_zoo.sh
#   DEVICE=cpu SMOKE=1 DATA=/usr/share/datasets/fashion-mnist bash benchmarks/gpu_fmnist_zoo.sh   # CPU check, minutes
set -u
OUT=${OUT:-/tmp/gpu_out}
DATA=${DATA:-.gpu_data}
RUNS=${RUNS:-/tmp/gpu_runs}
DEVICE=${DEVICE:-cuda}
MICRO_EPOCHS=${MICRO_EPOCHS:-30}   # the shipped 6-epoch model took 46 s on an H200 (batch 256): ~4 minutes
TINY_EPOCHS=${TINY_EPOCHS:-15}
RECIPES=${RECIPES:-benchmarks/results/recipe_search-best.json}
# SMOKE=1: 4 steps on 512 images and probes on 1000 images, to check the script end to end on a CPU
# (and every step's time limit x4: a CPU is that much slower even at this size)
if [ "${SMOKE:-0}" = 1 ]; then
  LIMIT="--max-steps 4 --max-train-samples 512"; PROBE_LIMIT="--max-train-samples 1000 --max-eval-samples 1000 --epochs 2"
  SCALE=4
else
  LIMIT=""; PROBE_LIMIT=""; SCALE=1
fi
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
step() {
  local name=$1 limit=$(($2 * SCALE)); shift 2
  echo "=== $name"; local t0=$SECONDS; timeout "$limit" "$@"; echo "=== $name rc=$? $((SECONDS - t0))s"
}

[ "$DEVICE" = cuda ] && step cudnn-nan-check 60 python3 benchmarks/gpu_cudnn_nan_check.py --json "$OUT/cudnn_nan_check.json"

# one YAML per run: the 6-epoch zoo preset (full split, batch 256), the method's recipe on top (the search writes
# its batch, blr and input size into it, so those are what the search measured), this run's size
python3 - "$RECIPES" "$RUNS" "$DEVICE" "$MICRO_EPOCHS" "$TINY_EPOCHS" <<'PY'
import json, os, re, sys
import yaml
sys.path.insert(0, 'benchmarks')
from ablation_grid import RECIPES, load_recipes
from randsac_timm.train.config import load_yaml_config, resolve_preset, PretrainConfig
path, runs, device, micro_epochs, tiny_epochs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
recipes = load_recipes(path) if os.path.isfile(path) else dict(RECIPES)  # each entry over the method's default
print('recipes from', path if os.path.isfile(path) else 'ablation_grid.RECIPES (no search results yet)', json.dumps(recipes))
base = load_yaml_config(resolve_preset('fmnist_micro_cpu_bench'), PretrainConfig)
for method, recipe in recipes.items():
    for size, epochs in (('micro', micro_epochs), ('tiny', tiny_epochs)):
        if size == 'micro' and method != 'RandSAC':
            continue
        values = dict(base, **recipe, device=device, workers=8 if device == 'cuda' else 1, epochs=epochs, warmup_epochs=max(1, epochs // 10),
                      save_every=0, vis_every=0, log_every=50, progress=False, output_dir=f'{runs}/{size}-{method}')
        if size == 'tiny':  # ViT-Tiny keeps its own decoder (the micro decoder's width need not fit its heads)
            values = {k: v for k, v in values.items() if not k.startswith('decoder_') or k == 'decoder'}
            # the tiny wrapper of the same objective; the recipe's img_size stays (a 28x28 micro recipe names
            # the _patch4_28 wrapper, and ViT-Tiny is registered at 32 only: img_size=28 gives it the 7x7 grid)
            values.update(model=re.sub(r'vit_micro_patch4_\d+', 'vit_tiny_patch4_32', values['model']),
                          amp=device == 'cuda')
        yaml.safe_dump(values, open(f'{runs}/{size}-{method}.yaml', 'w'))
PY

run() {  # name, seconds: pretrain, probe, copy out
  local name=$1 limit=$2
  step "pretrain-$name" "$limit" python3 train_pretrain.py --config "$RUNS/$name.yaml" $LIMIT
  cp "$RUNS/$name/log.jsonl" "$OUT/${name}_log.jsonl" 2>/dev/null
  step "probe-$name" 90 python3 eval_linear.py --checkpoint "$RUNS/$name/encoder.safetensors" --fast --device "$DEVICE" \
    --data-dir "$DATA" --no-progress --output-dir "$RUNS/$name/probe" $PIXELS $PROBE_LIMIT
  cp "$RUNS/$name/probe/results.json" "$OUT/${name}_linear_results.json" 2>/dev/null
  PIXELS=--no-pixel-baselines  # the pixel floor once is enough: it does not depend on the encoder
}
PIXELS=--pixel-baselines
sed -i "s#^data_dir:.*##" "$RUNS"/*.yaml; for f in "$RUNS"/*.yaml; do echo "data_dir: $DATA" >> "$f"; done
run micro-RandSAC 300
cp "$RUNS/micro-RandSAC/encoder.safetensors" "$OUT/micro_encoder.safetensors" 2>/dev/null
for method in RandSAC MAE; do
  run "tiny-$method" 150
  # fp16 copy so that it fits the transfer limit (the packaged weights are stored in fp16 too)
  python3 - "$RUNS/tiny-$method/encoder.safetensors" "$OUT/tiny_${method}_encoder_fp16.safetensors" <<'PY'
import os, sys
from safetensors import safe_open
from safetensors.torch import save_file
if os.path.exists(sys.argv[1]):
    with safe_open(sys.argv[1], 'pt') as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k).half() for k in f.keys()}
    save_file(tensors, sys.argv[2], metadata=dict(meta, stored_dtype='float16'))
PY
done
ls -la "$OUT"
