#!/usr/bin/env bash
# timm's own train.py and validate.py on a randsac_* model (docs/evaluation.md), on a small Fashion-MNIST PNG folder.
#   bash benchmarks/timm_scripts_check.sh /path/to/pytorch-image-models
set -eu
TIMM_REPO=$1
WORK=${WORK:-$(mktemp -d)}
python - "$WORK/fmnist_png" <<'PY'
import os, sys
from randsac_timm.train.data import FashionMNIST
for split, train, n in (('train', True, 200), ('validation', False, 100)):
    ds = FashionMNIST(train=train)
    for i in range(n):
        img, y = ds[i]
        d = os.path.join(sys.argv[1], split, ds.classes[y].replace('/', '-'))
        os.makedirs(d, exist_ok=True)
        img.save(os.path.join(d, f'{i}.png'))
PY
WEIGHTS=$(python -c "import os, randsac_timm.hub.names as m; print(os.path.join(m.PACKAGED_WEIGHTS_DIR, 'randsac_vit_micro_patch4_32.fmnist.safetensors'))")
COMMON="--data-dir $WORK/fmnist_png --model randsac_vit_micro_patch4_32 --num-classes 10 --in-chans 1 --input-size 1 32 32 --mean 0.2860 --std 0.3530 --device cpu --no-prefetcher --workers 1"
cd "$TIMM_REPO"
python train.py --device-modules randsac_timm $COMMON --pretrained --pretrained-path "$WEIGHTS" \
    --opt adamw --lr 5e-4 --weight-decay 0.05 --opt-betas 0.9 0.999 --layer-decay 0.65 --sched cosine --epochs 1 \
    --warmup-epochs 0 --aa rand-m9-mstd0.5 --reprob 0.25 --mixup 0.8 --cutmix 1.0 --smoothing 0.1 --drop-path 0.1 \
    --batch-size 32 --output "$WORK/train"
CKPT=$(ls -d "$WORK"/train/*/ | tail -1)model_best.pth.tar
python -c "import randsac_timm, runpy; runpy.run_path('validate.py', run_name='__main__')" $COMMON \
    --split validation --checkpoint "$CKPT"
