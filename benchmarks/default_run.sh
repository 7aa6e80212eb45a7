#!/usr/bin/env bash
# Wall-clock of the README's main job (`python train_pretrain.py`, the default CPU preset), from a clean output folder.
#   bash benchmarks/default_run.sh          # the run's log is kept as benchmarks/results/default_run_log.jsonl
set -eu
rm -rf output/pretrain-fmnist-micro
start=$(date +%s)
python train_pretrain.py --no-progress
echo "wall-clock: $(( $(date +%s) - start )) s on $(nproc) cores ($(uname -m))"
grep '"event": "end"' output/pretrain-fmnist-micro/log.jsonl
cp output/pretrain-fmnist-micro/log.jsonl benchmarks/results/default_run_log.jsonl
