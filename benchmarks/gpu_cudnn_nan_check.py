"""Does the cuDNN attention backward return NaN for RandSAC's masked 64-token attention on this GPU?

    python benchmarks/gpu_cudnn_nan_check.py --json out.json

pytorch/pytorch#196678: from torch 2.11 on H100/H200, cuDNN SDPA's backward returns NaN query gradients when an
explicit mask is given, the sequence length is 64 modulo 128 and a row's log-sum-exp is below -88.7. This builds
exactly that for RandSAC's causal segment mask on an 8x8 grid (bf16, head_dim 64 as in ViT-Tiny, every logit
about -120) and counts non-finite gradients with cuDNN allowed and with it disabled (what train_pretrain.py does
by default). CUDA only.
"""
import argparse
import json
import math

import torch
import torch.nn.functional as F

from randsac_timm.models.masks import causal_segment_mask
from randsac_timm.models.segments import sample_rank


def _nonfinite_grads(cudnn: bool, q0: torch.Tensor, k0: torch.Tensor, v0: torch.Tensor, mask: torch.Tensor) -> dict:
    torch.backends.cuda.enable_cudnn_sdp(cudnn)
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q0, k0, v0))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out.backward(torch.ones_like(out))
    return {name: int((~torch.isfinite(t.grad)).sum()) for name, t in (('q', q), ('k', k), ('v', v))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    B, H, D = 8, 3, 64
    rank = sample_rank('blob:11-5', B, (8, 8), generator=torch.Generator().manual_seed(0)).cuda()
    mask = causal_segment_mask(rank)  # (B, 1, 64, 64), never a fully masked row
    q = torch.randn(B, H, 64, D, device='cuda', dtype=torch.bfloat16) * 0.1
    k = torch.randn(B, H, 64, D, device='cuda', dtype=torch.bfloat16) * 0.1
    v = torch.randn(B, H, 64, D, device='cuda', dtype=torch.bfloat16)
    q[..., 0], k[..., 0] = 1.0, -120 * math.sqrt(D)  # every logit about -120: each row's log-sum-exp < -88.7
    report = dict(torch=torch.__version__, gpu=torch.cuda.get_device_name(),
                  cudnn=torch.backends.cudnn.version(),
                  nonfinite_with_cudnn=_nonfinite_grads(True, q, k, v, mask),
                  nonfinite_without_cudnn=_nonfinite_grads(False, q, k, v, mask))
    print(json.dumps(report))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=2)


if __name__ == '__main__':
    main()
