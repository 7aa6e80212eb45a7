"""CUDA bf16 correctness of the RandSAC objective (run on a GPU machine; see benchmarks/gpu_checks.sh).

    python benchmarks/gpu_bf16_check.py --data-dir DIR --json out.json

On real Fashion-MNIST images, under bf16 autocast on CUDA:
  1. causality: the prediction of a segment has exactly zero gradient w.r.t. the pixels of its own and every
     later segment (the first segment: later ones only), for several serializations;
  2. perturbing later segments leaves earlier predictions bit-identical;
  3. no NaN anywhere, and the bf16 loss agrees with the fp32 loss of the same weights and batch.
"""
import argparse
import json

import timm
import torch

import randsac_timm  # noqa: F401
from randsac_timm.models.losses import patchify, unpatchify
from randsac_timm.models.segments import sample_rank
from randsac_timm.train.data import FashionMNIST


def real_images(data_dir, n: int, device) -> torch.Tensor:
    x = FashionMNIST(data_dir, train=False).data[:n].float().div(255).unsqueeze(1)
    x = torch.nn.functional.pad(x, (2, 2, 2, 2))
    return ((x - 0.2860) / 0.3530).to(device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--data-dir', default=None)
    parser.add_argument('--json', default=None)
    parser.add_argument('--device', default='cuda', help='cpu runs the same checks with CPU bf16 autocast')
    args = parser.parse_args()
    device = torch.device(args.device)
    images = real_images(args.data_dir, 8, device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    report = {'device': name, 'checks': {}}
    ok = True
    for spec in ['random', 'square:16-4', 'blob:11-5', 'blob:11-7-3']:
        torch.manual_seed(0)
        model = timm.create_model('randsac_pretrain_vit_tiny_patch4_32', in_chans=1, segments=spec).to(device).eval()
        rank = sample_rank(spec, 8, (8, 8), generator=torch.Generator(device=device).manual_seed(1), device=device)
        x = images.clone().requires_grad_(True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(x, rank=rank)
        leaks, dependent = 0, 0
        b = 0
        num = int(rank[b].max()) + 1
        for s in sorted({0, 1, num // 2, num - 1}):
            (grad,) = torch.autograd.grad(out.pred[b][rank[b] == s].float().sum(), x, retain_graph=True)
            tok = patchify(grad, (4, 4)).abs().sum(-1)[b]
            forbidden = rank[b] > s if s == 0 else rank[b] >= s
            leaks += int((tok[forbidden] != 0).sum())
            dependent += int(s > 0 and tok[rank[b] < s].sum() > 0)
        cut = (rank.max(dim=1, keepdim=True).values + 1) // 2
        later = rank >= cut
        noise = torch.randn(patchify(images, (4, 4)).shape, device=device, generator=torch.Generator(
            device=device).manual_seed(2))
        perturbed = images + unpatchify(noise * later[..., None], (4, 4), (8, 8), 1)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            before, after = model(images, rank=rank), model(perturbed, rank=rank).pred
            loss_bf16 = before.loss.float().item()
        with torch.no_grad():
            loss_fp32 = model(images, rank=rank).loss.item()
        identical = bool(torch.equal(before.pred[~later], after[~later]))
        finite = bool(torch.isfinite(before.pred).all())
        rel = abs(loss_bf16 - loss_fp32) / loss_fp32
        passed = leaks == 0 and dependent > 0 and identical and finite and rel < 2e-2
        ok &= passed
        report['checks'][spec] = dict(
            leaking_tokens=leaks, depends_on_earlier=dependent, earlier_bit_identical=identical, finite=finite,
            loss_bf16=loss_bf16, loss_fp32=loss_fp32, rel_diff=rel, passed=passed)
        print(spec, report['checks'][spec])
    report['passed'] = ok
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=2)
    print('ALL PASSED' if ok else 'FAILED')


if __name__ == '__main__':
    main()
