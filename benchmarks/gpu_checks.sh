#!/usr/bin/env bash
# The prepared GPU run (one call of the device tool, ~8 minutes on an H100/H200):
#   bf16 correctness of the objective, the ViT-Tiny preset on Fashion-MNIST in bf16 and fp32 (300 steps each:
#   images/s, peak memory, loss agreement), step throughput of ViT-B/16 at 224, and the zoo's pretraining runs.
# Needs Fashion-MNIST's idx files in $DATA and, where the machine's timm is older than 1.0.31, its wheel in .whl/.
#   DATA=.gpu_data OUT=/tmp/out bash benchmarks/gpu_checks.sh
set -u
OUT=${OUT:-/tmp/gpu_out}
DATA=${DATA:-.gpu_data}
RUNS=${RUNS:-/tmp/gpu_runs}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"
step() { local name=$1 limit=$2; shift 2; echo "=== $name"; local t0=$SECONDS; timeout "$limit" "$@"; echo "=== $name rc=$? $((SECONDS - t0))s"; }

step bf16-check 60 python3 benchmarks/gpu_bf16_check.py --data-dir "$DATA" --json "$OUT/bf16_check.json"
for amp in amp no-amp; do
  step "tiny-300-$amp" 90 python3 train_pretrain.py --config fmnist_vit_tiny --data-dir "$DATA" --max-steps 300 \
    --log-every 25 --vis-every 0 --save-every 0 --no-progress "--$amp" --output-dir "$RUNS/tiny-$amp"
done
python3 - "$RUNS" "$OUT/tiny_bf16_vs_fp32.json" <<'PY'
import json, sys
runs, out = sys.argv[1], sys.argv[2]
summary = {}
for amp in ('amp', 'no-amp'):
    recs = [json.loads(l) for l in open(f'{runs}/tiny-{amp}/log.jsonl')]
    train = [r for r in recs if r['event'] == 'train']
    summary[amp] = dict(losses=[r['loss'] for r in train], steps=[r['step'] for r in train],
                        images_per_s=sum(r['images_per_s'] for r in train[2:]) / max(len(train[2:]), 1),
                        peak_memory_mb=max(r.get('peak_memory_mb', 0) for r in train),
                        device=next(r for r in recs if r['event'] == 'start')['gpu'])
a, b = summary['amp']['losses'], summary['no-amp']['losses']
summary['max_rel_loss_diff'] = max(abs(x - y) / y for x, y in zip(a, b))
json.dump(summary, open(out, 'w'), indent=2)
print(json.dumps({k: v for k, v in summary.items() if k != 'amp' and k != 'no-amp'}),
      {k: (v['images_per_s'], v['peak_memory_mb']) for k, v in summary.items() if isinstance(v, dict)})
PY
step throughput 150 python3 benchmarks/throughput.py --device cuda --amp --encoders randsac_vit_base_patch16_224 \
  --batch-size 256 --steps 10 --warmup 3 --json "$OUT/throughput_gpu.json"
step micro-zoo 120 python3 train_pretrain.py --config fmnist_micro_cpu_bench --device cuda --workers 8 \
  --data-dir "$DATA" --no-progress --vis-every 0 --output-dir "$RUNS/micro"
cp "$RUNS/micro/encoder.safetensors" "$OUT/micro_encoder.safetensors"; cp "$RUNS/micro/log.jsonl" "$OUT/micro_log.jsonl"
step tiny-zoo 180 python3 train_pretrain.py --config fmnist_vit_tiny --epochs 30 --data-dir "$DATA" --no-progress \
  --vis-every 0 --output-dir "$RUNS/tiny"
cp "$RUNS/tiny/log.jsonl" "$OUT/tiny_log.jsonl"
# fp16 copy of the ViT-Tiny encoder so it fits the transfer limit (the packaged weights are stored in fp16 too)
python3 - "$RUNS/tiny/encoder.safetensors" "$OUT/tiny_encoder_fp16.safetensors" <<'PY'
import sys
from safetensors import safe_open
from safetensors.torch import save_file
with safe_open(sys.argv[1], 'pt') as f:
    meta = f.metadata()
    tensors = {k: f.get_tensor(k).half() for k in f.keys()}
save_file(tensors, sys.argv[2], metadata=dict(meta, stored_dtype='float16'))
PY
ls -la "$OUT"
