"""Reconstruction pictures for RandSAC pretraining: segment order, input and prediction side by side.

One row per image, three panels under a header of labels:

- ``segments (order)``: every token coloured by its prediction order ``rank / rank.max()`` through a
  viridis-like colormap (dark purple = predicted first, yellow = last), segment boundaries in white and,
  where a segment is big enough, its rank (0 = first) written at its centre.
- ``input``: the image de-normalised to [0, 1].
- ``reconstruction``: the predicted pixels of every token, de-normalised (per patch first when the model
  uses ``norm_pix``). Tokens outside the loss (the first segment unless ``loss_first_segment``) read their
  own encoding, so their "prediction" is not made from context: they are drawn washed out
  (``0.5 * x + 0.25``).

Small images are upscaled with nearest neighbour so each panel is about ``panel_size`` pixels.

Command line::

    python -m randsac_timm.visualize CHECKPOINT [--images DIR_OR_DATASET] [--data-dir DIR]
        [--num-images 8] [--seed 0] [--out PATH]
"""
import argparse
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image, ImageDraw, ImageFont

from .models.losses import patchify, unpatchify
from .models.randsac_pretrain import RandSACPretrain
from .train.checkpoint import atomic_write, load_pretrain_model
from .train.data import (
    build_dataset,
    build_eval_transform,
    canonical_dataset_name,
    dataset_pad_to,
    dataset_stats,
    denormalize,
)

__all__ = [
    'BOUNDARY_COLOR', 'HEADER_HEIGHT', 'MAX_IMAGES', 'PANEL_GAP', 'PANEL_TITLES', 'load_pretrain_checkpoint_model',
    'main', 'order_colors', 'panel_box', 'prediction_to_images', 'render_reconstruction', 'save_reconstruction',
]

MAX_IMAGES = 16
PANEL_TITLES = ('segments (order)', 'input', 'reconstruction')
PANEL_GAP = 4  # pixels between panels and around the picture
HEADER_HEIGHT = 16  # the row of panel titles
BOUNDARY_COLOR = (255, 255, 255)  # segment boundaries; no colormap entry is white
_DARK_TEXT = (0, 0, 0)  # order numbers on the light end of the colormap
_BACKGROUND = (255, 255, 255)
_IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')

# viridis sampled at 0, 0.2, ..., 1 (matplotlib's values, rounded to 8 bits); linear in between
_VIRIDIS = torch.tensor([
    [68, 1, 84], [65, 68, 135], [42, 120, 142], [34, 168, 132], [122, 209, 81], [253, 231, 37],
], dtype=torch.float32) / 255


def order_colors(t: torch.Tensor) -> torch.Tensor:
    """Viridis-like colormap: values in [0, 1] (clamped), any shape `S` -> RGB in [0, 1], shape `(*S, 3)`."""
    x = t.float().clamp(0, 1) * (len(_VIRIDIS) - 1)
    lo = x.floor().long().clamp(max=len(_VIRIDIS) - 2)
    frac = (x - lo).unsqueeze(-1)
    return _VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac


def prediction_to_images(
        pred: torch.Tensor,
        images: torch.Tensor,
        patch_size: Tuple[int, int],
        norm_pix: bool,
        eps: float = 1e-6,
) -> torch.Tensor:
    """Turn per-token pixel predictions back into images, in the normalised space of `images`.

    Args:
        pred: (B, N, ph * pw * C) predictions, raster order (`RandSACOutput.pred`).
        images: (B, C, H, W) the normalised model inputs the targets were cut from.
        patch_size: (ph, pw).
        norm_pix: the prediction is per-patch normalised; undo it with each input patch's own mean and
            variance, computed exactly as `losses.pixel_target` does (unbiased variance, `eps`).
        eps: the `pixel_target` epsilon.

    Returns:
        (B, C, H, W) float32; apply `data.denormalize` with the dataset mean/std to get [0, 1] pixels.
    """
    B, C, H, W = images.shape
    ph, pw = patch_size
    patches = pred.float()
    if norm_pix:
        source = patchify(images.float(), patch_size)  # (B, N, ph * pw * C)
        mean = source.mean(dim=-1, keepdim=True)
        var = source.var(dim=-1, keepdim=True)
        patches = patches * (var + eps) ** 0.5 + mean
    return unpatchify(patches, patch_size, (H // ph, W // pw), C)


def panel_box(row: int, col: int, panel_hw: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """Pixel box `(left, top, right, bottom)` of panel `col` (0 segments, 1 input, 2 reconstruction) of image
    `row` in a picture from `render_reconstruction` whose panels are `panel_hw = (height, width)` pixels."""
    height, width = panel_hw
    left = PANEL_GAP + col * (width + PANEL_GAP)
    top = HEADER_HEIGHT + row * (height + PANEL_GAP)
    return left, top, left + width, top + height


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(B, 1 or 3, H, W) in [0, 1] -> (B, 3, H, W)."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _upscale(x: torch.Tensor, scale_h: int, scale_w: Optional[int] = None) -> torch.Tensor:
    """Nearest-neighbour upscaling of the last two dims by integer factors (`scale_w` defaults to `scale_h`)."""
    return x.repeat_interleave(scale_h, dim=-2).repeat_interleave(scale_w or scale_h, dim=-1)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return x.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


def _paste(canvas: Image.Image, pixels: torch.Tensor, box: Tuple[int, int, int, int]) -> None:
    canvas.paste(Image.fromarray(pixels.numpy(), mode='RGB'), box[:2])


def _draw_order_numbers(
        draw: ImageDraw.ImageDraw,
        font: Any,
        rank: torch.Tensor,
        grid_size: Tuple[int, int],
        cell_hw: Tuple[int, int],
        origin: Tuple[int, int],
) -> None:
    """Write each segment's rank at its token nearest the centroid, when the segment is big enough to hold it."""
    h, w = grid_size
    ch, cw = cell_hw
    if min(ch, cw) < 6:
        return
    rows = torch.arange(h).repeat_interleave(w).float()
    cols = torch.arange(w).repeat(h).float()
    num_segments = int(rank.max()) + 1
    for k in range(num_segments):
        idx = (rank == k).nonzero().flatten()
        if idx.numel() == 0:
            continue
        text = str(k)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        # skip tiny segments: the number should cover at most a quarter of the segment
        if idx.numel() * ch * cw < 4 * (right - left) * (bottom - top):
            continue
        r, c = rows[idx], cols[idx]
        nearest = idx[((r - r.mean()) ** 2 + (c - c.mean()) ** 2).argmin()]
        cy = origin[1] + (int(nearest) // w + 0.5) * ch
        cx = origin[0] + (int(nearest) % w + 0.5) * cw
        color = _DARK_TEXT if k / max(num_segments - 1, 1) > 0.6 else BOUNDARY_COLOR
        draw.text((round(cx - (left + right) / 2), round(cy - (top + bottom) / 2)), text, fill=color, font=font)


def render_reconstruction(
        model: RandSACPretrain,
        images: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        generator: Optional[torch.Generator] = None,
        rank: Optional[torch.Tensor] = None,
        panel_size: int = 96,
        show_order: bool = True,
) -> Image.Image:
    """Draw segment order, input and reconstruction of a few images, one row per image.

    The model runs in eval mode under `no_grad` (its training mode is restored afterwards).

    Args:
        model: the pretraining wrapper.
        images: (B, C, H, W) normalised images, B <= `MAX_IMAGES`, C = 1 or 3.
        mean: dataset mean used to normalise `images` (one value per channel).
        std: dataset std.
        generator: RNG for sampling the segments (on the model's device); None uses the global RNG.
        rank: optional (B, N) serialization to draw instead of sampling one.
        panel_size: target panel size in pixels; images are upscaled by the integer factor
            `max(1, panel_size // max(H, W))`.
        show_order: write each big-enough segment's rank (0 = predicted first) on the segment map.

    Returns:
        An RGB image of `3 * W' + 4 * PANEL_GAP` x `HEADER_HEIGHT + B * (H' + PANEL_GAP)` pixels, where
        `H' x W'` is the upscaled image size; `panel_box` gives each panel's position.
    """
    if images.dim() != 4 or not 1 <= images.shape[0] <= MAX_IMAGES:
        raise ValueError(f'images must be (B, C, H, W) with 1 <= B <= {MAX_IMAGES}, got shape {tuple(images.shape)}')
    B, C, H, W = images.shape
    if C not in (1, 3):
        raise ValueError(f'can only draw 1- or 3-channel images, got {C} channels')
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(images.to(device), rank=None if rank is None else rank.to(device), generator=generator)
    finally:
        model.train(was_training)

    ph, pw = model.patch_size
    grid_size = (H // ph, W // pw)
    images = images.detach().float().cpu()
    rank = out.rank.cpu()
    scored = out.loss_mask.cpu()
    scale = max(1, panel_size // max(H, W))

    inputs = denormalize(images, mean, std).clamp(0, 1)
    recon = denormalize(prediction_to_images(out.pred.cpu(), images, (ph, pw), model.norm_pix), mean, std).clamp(0, 1)
    scored_px = _upscale(scored.view(B, 1, *grid_size), ph, pw)
    recon = torch.where(scored_px, recon, recon * 0.5 + 0.25)  # washed out: not predicted from context

    order = rank.float() / rank.amax(dim=1, keepdim=True).clamp(min=1)
    seg = order_colors(order).view(B, *grid_size, 3).permute(0, 3, 1, 2)  # (B, 3, h, w)
    seg = _upscale(seg, ph * scale, pw * scale)
    rank_px = _upscale(rank.view(B, *grid_size), ph * scale, pw * scale)  # (B, H', W')
    boundary = torch.zeros_like(rank_px, dtype=torch.bool)
    boundary[:, 1:, :] |= rank_px[:, 1:, :] != rank_px[:, :-1, :]
    boundary[:, :, 1:] |= rank_px[:, :, 1:] != rank_px[:, :, :-1]
    seg = torch.where(boundary.unsqueeze(1), torch.tensor(BOUNDARY_COLOR, dtype=seg.dtype).view(1, 3, 1, 1) / 255, seg)

    panel_hw = (H * scale, W * scale)
    canvas = Image.new('RGB', (3 * panel_hw[1] + 4 * PANEL_GAP, HEADER_HEIGHT + B * (panel_hw[0] + PANEL_GAP)),
                       _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.fontmode = '1'  # no anti-aliasing: labels add exactly one colour
    font = ImageFont.load_default()
    for col, title in enumerate(PANEL_TITLES):
        draw.text((panel_box(0, col, panel_hw)[0], 2), title, fill=(0, 0, 0), font=font)
    panels = (seg, _upscale(_to_rgb(inputs), scale), _upscale(_to_rgb(recon), scale))
    for row in range(B):
        for col, panel in enumerate(panels):
            _paste(canvas, _to_uint8(panel[row]), panel_box(row, col, panel_hw))
        if show_order:
            _draw_order_numbers(draw, font, rank[row], grid_size, (ph * scale, pw * scale),
                                panel_box(row, 0, panel_hw)[:2])
    return canvas


def save_reconstruction(
        path: str,
        model: RandSACPretrain,
        images: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        generator: Optional[torch.Generator] = None,
        rank: Optional[torch.Tensor] = None,
) -> str:
    """Render with `render_reconstruction` and write a PNG atomically (temp file in the same folder, then
    `os.replace`), so a reader never sees a half-written picture. Returns `path`."""
    picture = render_reconstruction(model, images, mean, std, generator=generator, rank=rank)
    atomic_write(path, lambda tmp: picture.save(tmp, format='PNG'))
    return path


def load_pretrain_checkpoint_model(path: str) -> Tuple[RandSACPretrain, Dict[str, Any]]:
    """Rebuild the pretraining wrapper saved in a checkpoint; returns (model in eval mode, run config dict).

    Raises:
        FileNotFoundError: no file at `path`.
        CheckpointError (a ValueError): the file is truncated, corrupt, not a pretraining checkpoint, or its
            weights do not fit the model it names.
    """
    model, state = load_pretrain_model(path)
    return model, dict(state.get('config') or {})


# ----------------------------------------------------------------------------------------------------
# Command line


def _model_stats(model: RandSACPretrain, config: Dict[str, Any]) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Normalisation the model was trained with: the config's dataset, else the encoder's pretrained_cfg."""
    if config.get('dataset'):
        mean, std = dataset_stats(config['dataset'])
    else:
        mean, std = model.pretrained_cfg['mean'], model.pretrained_cfg['std']
    if len(mean) != model.in_chans:  # e.g. RGB stats on a 1-channel model: use their average
        mean, std = (sum(mean) / len(mean),) * model.in_chans, (sum(std) / len(std),) * model.in_chans
    return tuple(mean), tuple(std)


def _folder_images(
        folder: str, num_images: int, mode: str, resize: Callable, pad: Optional[Callable], pad_to: Optional[int],
) -> List[torch.Tensor]:
    """The first `num_images` PNG/JPG files under `folder` (recursive, sorted), converted to `mode`; zero-padded
    by `pad` when they fit in `pad_to` (as the training data was, e.g. Fashion-MNIST 28 -> 32), else `resize`d."""
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder) for name in names if name.lower().endswith(_IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f'no PNG or JPG images under {folder}')
    out = []
    for file in files[:num_images]:
        with Image.open(file) as img:
            img = img.convert(mode)
        fits = pad is not None and max(img.size) <= pad_to
        out.append((pad if fits else resize)(img))
    return out


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(
        prog='python -m randsac_timm.visualize',
        description='Draw the segment order, input and reconstruction of a few images for a pretraining checkpoint.')
    parser.add_argument('checkpoint', help='pretraining checkpoint (.pth)')
    parser.add_argument('--images', default=None,
                        help="folder of PNG/JPG images, or a dataset name (its 'val' split); default: the "
                             "checkpoint's dataset")
    parser.add_argument('--data-dir', default=None, help="dataset folder (default: the checkpoint config's data_dir)")
    parser.add_argument('--num-images', type=int, default=8, help=f'images to draw, 1..{MAX_IMAGES} (default 8)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the segment sampling (default 0)')
    parser.add_argument('--out', default=None,
                        help='PNG to write (default: <checkpoint stem>-reconstruction.png beside it)')
    args = parser.parse_args(argv)
    if not 1 <= args.num_images <= MAX_IMAGES:
        parser.error(f'--num-images must be in 1..{MAX_IMAGES}, got {args.num_images}')

    model, config = load_pretrain_checkpoint_model(args.checkpoint)
    mean, std = _model_stats(model, config)
    height, width = model.encoder.patch_embed.img_size
    img_size = height if height == width else (height, width)
    mode = 'L' if model.in_chans == 1 else 'RGB'
    resize = build_eval_transform(img_size, mean, std)
    if args.images is not None and os.path.isdir(args.images):
        pad_to = dataset_pad_to(config['dataset'], img_size) if config.get('dataset') else None
        pad = build_eval_transform(img_size, mean, std, pad_to=pad_to) if pad_to else None
        samples = _folder_images(args.images, args.num_images, mode, resize, pad, pad_to)
    else:
        name = args.images or config.get('dataset')
        if not name:
            raise ValueError(f'{args.images!r} is not a folder and checkpoint {args.checkpoint} names no dataset; '
                             'pass --images DIR or --images DATASET')
        try:
            canonical_dataset_name(name)
        except ValueError as e:
            raise ValueError(f'--images {name!r} is neither a folder nor a known dataset ({e})') from None
        pad_to = dataset_pad_to(name, img_size)
        transform = build_eval_transform(img_size, mean, std, pad_to=pad_to)
        dataset = build_dataset(name, 'val', args.data_dir or config.get('data_dir'),
                                lambda img: transform(img.convert(mode)))
        samples = [dataset[i][0] for i in range(min(args.num_images, len(dataset)))]

    out = args.out or os.path.splitext(args.checkpoint)[0] + '-reconstruction.png'
    generator = torch.Generator().manual_seed(args.seed)
    save_reconstruction(out, model, torch.stack(samples), mean, std, generator=generator)
    print(out)
    return out


if __name__ == '__main__':
    main()
