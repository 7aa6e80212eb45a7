#!/usr/bin/env python
"""RandSAC pretraining. `python train_pretrain.py` runs the default CPU preset on Fashion-MNIST.

    python train_pretrain.py                                        # default CPU preset
    python train_pretrain.py --config cifar10_vit_tiny --data-dir ~/data
    torchrun --nproc-per-node 8 train_pretrain.py --config imagenet1k_vit_base --data-dir /data/imagenet

Flags override the preset (`--config`), which overrides the defaults; `--help` lists them all.
A run resumes from `<output-dir>/checkpoint-last.pth` when it exists.
"""
import sys

from randsac_timm.config import parse_pretrain_args
from randsac_timm.engine import train


def main(argv=None) -> int:
    cfg = parse_pretrain_args(argv)
    train(cfg)
    return 0


if __name__ == '__main__':
    sys.exit(main())
