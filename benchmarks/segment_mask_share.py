"""Share of a RandSAC pretraining step spent sampling ranks and building the masks.

    python benchmarks/segment_mask_share.py                      # ViT-Tiny, 8x8 grid, batch 128, CPU fp32
    python benchmarks/segment_mask_share.py --json out.json

Times (a) `sample_rank` + `build_masks` and (b) one full training step (forward, backward, AdamW) of the
pretraining wrapper on the same batch, after warm-up, and prints the share (a) / (b). Target: < 2 %.
"""
import argparse
import json
import platform
import time

import timm
import torch

import randsac_timm  # noqa: F401
from randsac_timm.models.masks import build_masks
from randsac_timm.models.segments import sample_rank


def _timeit(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='randsac_pretrain_vit_tiny_patch4_32')
    parser.add_argument('--segments', default='blob:11-5')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--steps', type=int, default=3, help='timed training steps (after one warm-up step)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--json', default=None, help='also write the figures to this JSON file')
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, segments=args.segments).to(device)
    grid = model.grid_size
    images = torch.randn(args.batch_size, model.in_chans, *model.encoder.patch_embed.img_size, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize()

    def masks_only():
        rank = sample_rank(model.segments, args.batch_size, grid, generator=generator, device=device)
        build_masks(rank)
        sync()

    def train_step():
        loss = model(images, generator=generator).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()

    mask_s = _timeit(masks_only, repeats=50, warmup=5)
    step_s = _timeit(train_step, repeats=args.steps, warmup=1)
    share = mask_s / step_s
    result = dict(
        model=args.model, segments=args.segments, batch_size=args.batch_size, grid=list(grid),
        device=str(device), threads=torch.get_num_threads(), torch=torch.__version__, cpu=platform.processor(),
        sample_and_masks_ms=mask_s * 1e3, train_step_ms=step_s * 1e3, mask_share=share,
    )
    print(f'{args.model} {args.segments} batch {args.batch_size} grid {grid[0]}x{grid[1]} on {device} '
          f'({torch.get_num_threads()} threads)')
    print(f'  sample ranks + build masks: {mask_s * 1e3:8.2f} ms')
    print(f'  one training step:          {step_s * 1e3:8.2f} ms')
    print(f'  share:                      {100 * share:8.3f} %  (target < 2 %)')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)


if __name__ == '__main__':
    main()
