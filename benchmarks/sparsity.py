"""How much of the dense attention the rank-sorted paths skip, per serialization, grid and batch size.

    python benchmarks/sparsity.py --json benchmarks/results/sparsity.json

For each setting: how many tokens stay in the encoder input (the shortest last segment of the batch leaves it),
and the share of the dense score matrix that the block-sparse SDPA plan (`attn_impl='sparse'`, query blocks of
32) computes for the encoder, the decoder memory and the decoder self-attention. Counting only; no timing.
"""
import argparse
import json
from typing import List, Optional

import torch

from randsac_timm.models.attention import sorted_plan
from randsac_timm.models.segments import sample_rank


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--specs', nargs='+', default=['random', 'square:16', 'square:16-4', 'blob:7', 'blob:11-5'])
    parser.add_argument('--grids', nargs='+', type=int, default=[8, 16])
    parser.add_argument('--batch-sizes', nargs='+', type=int, default=[1, 8, 64, 128])
    parser.add_argument('--block-size', type=int, default=32)
    parser.add_argument('--json', default=None)
    args = parser.parse_args(argv)
    rows = []
    print(f'{"segments":<13}{"grid":>6}{"batch":>7}{"kept":>10}{"encoder":>9}{"memory":>8}{"decoder":>9}')
    for spec in args.specs:
        for g in args.grids:
            for b in args.batch_sizes:
                rank = sample_rank(spec, b, (g, g), generator=torch.Generator().manual_seed(0))
                plan = sorted_plan(rank, 'sparse', args.block_size)
                row = dict(segments=spec, grid=g, batch_size=b, tokens=g * g, kept_tokens=plan.order.keep_tokens,
                           encoder=plan.encoder.visited_fraction(), memory=plan.memory.visited_fraction(),
                           decoder=plan.decoder.visited_fraction())
                rows.append(row)
                print(f'{spec:<13}{g:>4}^2{b:>7}{row["kept_tokens"]:>6}/{g * g:<3}{row["encoder"]:>9.2f}'
                      f'{row["memory"]:>8.2f}{row["decoder"]:>9.2f}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(block_size=args.block_size, rows=rows), f, indent=2)


if __name__ == '__main__':
    main()
