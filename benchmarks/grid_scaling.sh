#!/usr/bin/env bash
# How a RandSAC step's cost grows with the token grid: the CPU-sized encoder (4x4 patches) at 8x8, 14x14 and 16x16.
#   bash benchmarks/grid_scaling.sh          # CPU, fp32, batch 64; JSON per size in benchmarks/results/
set -eu
for size in 32 56 64; do
  python benchmarks/throughput.py --encoders randsac_vit_micro_patch4_32 --img-size $size --batch-size 64 \
    --modes timm randsac randsac_sparse nomask --steps 6 --warmup 2 --json benchmarks/results/grid_scaling_${size}.json
done
