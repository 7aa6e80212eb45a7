#!/usr/bin/env bash
# Wall-clock of the README's main job (`python train_pretrain.py`, the default CPU preset), from a clean output folder.
#   bash benchmarks/default_run.sh
set -eu
rm -rf output/pretrain-fmnist-micro
start=$(date +%s)
python train_pretrain.py --no-progress
echo "wall-clock: $(( $(date +%s) - start )) s on $(nproc) cores ($(uname -m))"
grep '"event": "end"' output/pretrain-fmnist-micro/log.jsonl
