#!/usr/bin/env bash
# Every CPU number of the performance tables in the README, on an otherwise idle machine (~15 minutes on 2 cores):
#   bash benchmarks/cpu_perf.sh
# (a)-(d) plus the sparse path for the micro and ViT-Tiny encoders (8x8 grid, fp32, batch 128), the same for the micro
# encoder with torch.compile (inductor; the first step's compile time is reported), and the grid-size scaling.
set -eu
python benchmarks/throughput.py --steps 8 --warmup 2 --repeats 1 --json benchmarks/results/throughput_cpu.json
python benchmarks/throughput.py --encoders randsac_vit_micro_patch4_32 --modes timm randsac randsac_sparse nomask \
  --compile --steps 6 --warmup 3 --json benchmarks/results/throughput_cpu_compile.json
bash benchmarks/grid_scaling.sh
