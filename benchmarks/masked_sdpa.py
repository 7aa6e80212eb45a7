"""What a boolean mask costs PyTorch's attention kernel, at the shapes of a RandSAC step.

    python benchmarks/masked_sdpa.py --json benchmarks/results/masked_sdpa_cpu.json

Times forward + backward of `scaled_dot_product_attention` on `(batch, heads, tokens, head_dim)` with no mask,
with RandSAC's causal segment mask as booleans `(B, 1, N, N)`, and with the same mask as an additive float
tensor, in turns, reporting the median of `--steps` runs. Default shapes: ViT-Tiny (3 heads of 64) and the
micro encoder (4 heads of 32) on an 8x8 grid at batch 128.
"""
import argparse
import json
import statistics
import time
from typing import Optional

import torch
import torch.nn.functional as F

from randsac_timm.models.masks import additive_mask, causal_segment_mask
from randsac_timm.models.segments import sample_rank


def _time(q: torch.Tensor, mask: Optional[torch.Tensor]) -> float:
    t0 = time.perf_counter()
    out = F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    out.sum().backward()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--grid', type=int, default=8)
    parser.add_argument('--steps', type=int, default=9)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    rank = sample_rank('blob:11-5', args.batch_size, (args.grid, args.grid),
                       generator=torch.Generator().manual_seed(0)).to(device)
    bool_mask = causal_segment_mask(rank)
    float_mask = additive_mask(bool_mask, torch.float32)
    report = dict(device=str(device), torch=torch.__version__, threads=torch.get_num_threads(),
                  batch_size=args.batch_size, tokens=args.grid ** 2, rows=[])
    for name, heads, head_dim in (('ViT-Tiny', 3, 64), ('micro', 4, 32)):
        q = torch.randn(args.batch_size, heads, args.grid ** 2, head_dim, device=device, requires_grad=True)
        times = {'none': [], 'bool': [], 'float': []}
        for _ in range(args.steps):
            for key, mask in (('none', None), ('bool', bool_mask), ('float', float_mask)):
                times[key].append(_time(q, mask))
        row = dict(encoder=name, heads=heads, head_dim=head_dim,
                   **{f'{k}_ms': 1e3 * statistics.median(v) for k, v in times.items()})
        row['bool_over_none'] = row['bool_ms'] / row['none_ms']
        row['float_over_none'] = row['float_ms'] / row['none_ms']
        report['rows'].append(row)
        print(f'{name:<9} no mask {row["none_ms"]:7.1f} ms   bool mask {row["bool_ms"]:7.1f} ms '
              f'({row["bool_over_none"]:.2f}x)   float mask {row["float_ms"]:7.1f} ms ({row["float_over_none"]:.2f}x)')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=2)


if __name__ == '__main__':
    main()
