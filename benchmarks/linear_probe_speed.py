#!/usr/bin/env python
"""Wall-clock of the fast linear probe (features extracted once, head on the cache) on full Fashion-MNIST.

    python benchmarks/linear_probe_speed.py [--threads N] [--workers N]

Random-init `randsac_vit_micro_patch4_32`, 60k train / 10k test, the paper's head recipe (90 epochs, batch 4096),
plus kNN and the raw-pixel baselines. Goal: under 5 minutes on 2 CPU cores, feature extraction included.
"""
import argparse
import tempfile
import time

import torch

from randsac_timm.eval.config import parse_linear_args
from randsac_timm.eval.linear_probe import run_linear_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch default)')
    parser.add_argument('--workers', type=int, default=2)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as out:
        start = time.time()
        results = run_linear_probe(parse_linear_args([
            '--model', 'randsac_vit_micro_patch4_32', '--fast', '--workers', str(args.workers), '--no-progress',
            '--output-dir', out]))
        wall = time.time() - start
    t = results['timings_s']
    print(f'fast linear probe, full Fashion-MNIST: {wall:.1f} s wall ({torch.get_num_threads()} threads): '
          f'features {t["feature_extraction_s"]:.1f} s, heads {t["head_training_s"]:.1f} s, '
          f'eval+kNN {t["evaluation_s"]:.1f} s')


if __name__ == '__main__':
    main()
