"""Pixel targets and the masked reconstruction loss shared by the pretraining objectives."""
from typing import Tuple

import torch

__all__ = ['patchify', 'unpatchify', 'pixel_target', 'masked_mse']


def patchify(images: torch.Tensor, patch_size: Tuple[int, int]) -> torch.Tensor:
    """Cut images into raster-ordered patch vectors.

    Args:
        images: (B, C, H, W) with H, W divisible by the patch size.
        patch_size: (ph, pw).

    Returns:
        (B, N, ph * pw * C) with N = (H / ph) * (W / pw); pixels ordered (row, col, channel) like MAE.
    """
    B, C, H, W = images.shape
    ph, pw = patch_size
    if H % ph or W % pw:
        raise ValueError(f'image size {H}x{W} is not divisible by the patch size {ph}x{pw}')
    h, w = H // ph, W // pw
    x = images.reshape(B, C, h, ph, w, pw)
    x = torch.einsum('bchpwq->bhwpqc', x)
    return x.reshape(B, h * w, ph * pw * C)


def unpatchify(patches: torch.Tensor, patch_size: Tuple[int, int], grid_size: Tuple[int, int],
               channels: int) -> torch.Tensor:
    """Inverse of `patchify`: (B, N, ph * pw * C) -> (B, C, H, W)."""
    B = patches.shape[0]
    ph, pw = patch_size
    h, w = grid_size
    x = patches.reshape(B, h, w, ph, pw, channels)
    x = torch.einsum('bhwpqc->bchpwq', x)
    return x.reshape(B, channels, h * ph, w * pw)


def pixel_target(images: torch.Tensor, patch_size: Tuple[int, int], norm_pix: bool = False,
                 eps: float = 1e-6) -> torch.Tensor:
    """Per-token regression target, optionally normalised per patch (MAE's norm_pix_loss).

    Returns:
        (B, N, ph * pw * C) float32.
    """
    target = patchify(images.float(), patch_size)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    return target


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error averaged over the scored tokens.

    Args:
        pred: (B, N, D) predictions.
        target: (B, N, D).
        mask: (B, N) bool, True = scored.

    Returns:
        Scalar loss: per-token MSE averaged over every True token of the batch.
    """
    per_token = (pred.float() - target).pow(2).mean(dim=-1)  # (B, N)
    weights = mask.to(per_token.dtype)
    # clamp: a batch with no scored token (e.g. every sample one segment) gives 0, not NaN
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)
