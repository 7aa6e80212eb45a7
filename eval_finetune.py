#!/usr/bin/env python
"""End-to-end fine-tuning of a RandSAC encoder (the paper's recipe: AdamW, layer decay 0.65, RandAugment,
mixup/cutmix, label smoothing, drop path; every value a flag).

    python eval_finetune.py --checkpoint output/pretrain/encoder.safetensors --epochs 10 --batch-size 128
    torchrun --nproc-per-node 8 eval_finetune.py --checkpoint ckpt.pth --dataset imagefolder --data-dir /data/in1k

Writes `<output-dir>/results.json` and `<output-dir>/model.safetensors`, and prints a one-line summary.
"""
import sys

from randsac_timm.eval.config import parse_finetune_args
from randsac_timm.eval.finetune import run_finetune
from randsac_timm.train.config import run_cli


def main(argv=None) -> int:
    return run_cli('eval_finetune.py', lambda: run_finetune(parse_finetune_args(argv)))


if __name__ == '__main__':
    sys.exit(main())
