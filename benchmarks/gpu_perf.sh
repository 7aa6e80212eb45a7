#!/usr/bin/env bash
# The performance issue's prepared GPU run (one call of the device tool; ~8 minutes on an H100/H200, not run yet):
# ViT-B/16 at 224, bf16, batch 256: images/s and peak memory of (a) timm, (b) dense RandSAC, (b') sparse and
# FlexAttention RandSAC, (c) no masks, (d) MAE; then the same with torch.compile on each step. First, whether
# cuDNN's attention backward returns NaN for RandSAC's masked 64-token attention here (gpu_cudnn_nan_check.py).
#   bash benchmarks/gpu_perf.sh             # JSON files into $OUT, by default benchmarks/results/gpu/
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then  # the machine's timm may be older than 1.0.31
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"
timeout 60 python3 benchmarks/gpu_cudnn_nan_check.py --json "$OUT/cudnn_nan_check.json"
MODES="timm randsac randsac_sparse randsac_flex nomask mae"
ARGS="--device cuda --amp --encoders randsac_vit_base_patch16_224 --batch-size 256 --modes $MODES"
timeout 200 python3 benchmarks/throughput.py $ARGS --steps 10 --warmup 3 --json "$OUT/throughput_gpu.json"
timeout 360 python3 benchmarks/throughput.py $ARGS --steps 10 --warmup 5 --compile --json "$OUT/throughput_gpu_compile.json"
# the grid-size scaling on GPU: ViT-B/16 at 224 (14x14), 256 (16x16) and 384 (24x24)
for size in 256 384; do
  timeout 120 python3 benchmarks/throughput.py --device cuda --amp --encoders randsac_vit_base_patch16_224 \
    --img-size $size --batch-size 64 --modes timm randsac randsac_sparse randsac_flex nomask --steps 5 --warmup 3 \
    --json "$OUT/grid_scaling_gpu_$size.json"
done
ls -la "$OUT"
