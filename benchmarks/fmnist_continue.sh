#!/usr/bin/env bash
# Issue 17, item 5's untested lever ("more pretraining would close the rest"), tested once on CPU: continue the
# shipped RandSAC Fashion-MNIST model (`randsac_pretrain_vit_micro_patch4_28.fmnist`, the race's seed-0 run: 6.06
# epochs, one CPU-hour) for as many steps again with the same recipe, then probe it on the full split exactly as the
# shipped weights were probed (eval_linear.py --fast --pixel-baselines: LARS, converged readout per block, kNN, the
# raw-pixel floor). The continuation is a warm restart (`--init`: fresh optimizer, warmup and cosine schedule), not
# one 12-epoch schedule; its data order uses seed 1 so it does not replay the first run's batches, and its online
# evaluation the race's subsets (--eval-seed 0), so its curve continues the race's.
#   PY=.venv/bin/python nohup bash benchmarks/fmnist_continue.sh >> output/fmnist_continue.log 2>&1 &
# Result: benchmarks/results/fmnist_continue.json (probe results + the run's training CPU time); the run lives in
# output/continue/ (resumable: rerun the command after a kill). Measured: 79 wall-min of training (128 CPU-min
# at torch's default 2 threads) plus a 6-min probe, on 2 cores.
set -euo pipefail
PY=${PY:-python}
RUN=${RUN:-output/continue/randsac_28-x2}
DATA=${DATA:-}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# the race's RandSAC recipe (benchmarks/results/race_recipe/RandSAC-seed0.json, "config"), continued
$PY train_pretrain.py --model randsac_pretrain_vit_micro_patch4_28 --init randsac_pretrain_vit_micro_patch4_28.fmnist \
  --dataset fashion_mnist --img-size 28 --max-train-samples 60000 --epochs 6.064034151547492 --batch-size 64 \
  --blr 0.003 --min-lr 1e-05 --warmup-epochs 0.6064034151547493 --weight-decay 0.05 --betas 0.9 0.999 \
  --segments blob:11-5 --no-norm-pix-loss --skip-memory paper_last --workers 0 --device cpu --seed 1 \
  --save-every 100 --log-every 10 --vis-every 0 --no-progress --eval-every 0.7580042689434365 --eval-lbfgs \
  --eval-seed 0 --output-dir "$RUN" ${DATA:+--data-dir "$DATA"}
$PY eval_linear.py --checkpoint "$RUN/checkpoint-last.pth" --fast --pixel-baselines --no-progress \
  --output-dir "$RUN/probe" ${DATA:+--data-dir "$DATA"}
$PY - "$RUN" <<'EOF'
import json, sys
from randsac_timm.train.curves import read_curves
from randsac_timm.train.run_log import read_log
run = sys.argv[1]
with open(f'{run}/probe/results.json') as f:
    probe = json.load(f)
records = read_log(f'{run}/log.jsonl')
train = [r for r in records if r.get('event') == 'train']
evals = [r for r in records if r.get('event') == 'eval']
# training time as the race counts it (benchmarks/race.py): stitched across resumes, the online evaluations left out
curves = read_curves(f'{run}/log.jsonl')
timing = dict(train_cpu_min=curves.train_cpu_s[-1] / 60, train_wall_min=curves.train_wall_s[-1] / 60,
              eval_cpu_min=sum(r.get('eval_cpu_s', 0.0) for r in evals) / 60, torch_threads='default (one per core)')
out = dict(init='randsac_pretrain_vit_micro_patch4_28.fmnist', continued_epochs=6.064034151547492, seed=1,
           last_train_record=train[-1] if train else None, online_evals=evals, probe=probe, **timing,
           command='PY=.venv/bin/python bash benchmarks/fmnist_continue.sh')
with open('benchmarks/results/fmnist_continue.json', 'w') as f:
    json.dump(out, f, indent=2)
print(json.dumps({k: probe.get(k) for k in probe if not isinstance(probe[k], (list, dict))}, indent=1))
EOF
