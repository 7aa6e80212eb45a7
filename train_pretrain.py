#!/usr/bin/env python
"""RandSAC pretraining. `python train_pretrain.py` runs the default CPU preset on Fashion-MNIST.

    python train_pretrain.py                                        # default CPU preset
    python train_pretrain.py --config cifar10_vit_tiny --data-dir ~/data
    torchrun --nproc-per-node 8 train_pretrain.py --config imagenet1k_vit_base --data-dir /data/imagenet

Flags override the preset (`--config`), which overrides the defaults; `--help` lists them all.
A run resumes from `<output-dir>/checkpoint-last.pth` when it exists.
"""
import sys

from randsac_timm.train.config import parse_pretrain_args, run_cli
from randsac_timm.train.engine import NonFiniteLossError, train


def main(argv=None) -> int:
    # a bad value, missing data or an unusable checkpoint: one line on stderr and exit status 2 (run_cli)
    return run_cli('train_pretrain.py', lambda: train(parse_pretrain_args(argv)), (NonFiniteLossError,))


if __name__ == '__main__':
    sys.exit(main())
