#!/usr/bin/env python
"""Linear probe, weighted kNN and raw-pixel baselines of a frozen RandSAC encoder (paper protocol by default).

    python eval_linear.py --checkpoint output/pretrain/checkpoint-last.pth            # paper: 90 epochs of crops
    python eval_linear.py --checkpoint output/pretrain/encoder.safetensors --fast     # cached features (CPU)
    python eval_linear.py --model randsac_vit_micro_patch4_32 --fast                  # random-init baseline

Writes `<output-dir>/results.json` and prints a one-line summary; `--help` lists every option.
"""
import sys

from randsac_timm.eval.config import parse_linear_args
from randsac_timm.eval.linear_probe import run_linear_probe
from randsac_timm.train.config import run_cli


def main(argv=None) -> int:
    return run_cli('eval_linear.py', lambda: run_linear_probe(parse_linear_args(argv)))


if __name__ == '__main__':
    sys.exit(main())
