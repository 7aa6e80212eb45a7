"""What every pretraining wrapper shares: the encoder it wraps, the tokens it feeds it, its input checks and output.

RandSAC (`randsac_pretrain.py`) and the MAE baseline (`mae_pretrain.py`) wrap the same headless timm encoder
and differ in nothing but the objective, so the pieces below live here, once, and each wrapper's file holds
only its own objective:

- `PRETRAIN_ARGS`: per encoder, the paper's decoder (RandSAC takes all of it, MAE the decoder sizes) and
  default segments; both registries and the hub's rebuild recipe are generated from it;
- `build_wrapper_encoder`: a factory's kwargs split into the wrapper's and the encoder's, the encoder built and
  initialised for pretraining;
- `PretrainWrapper`: the base class: adopts the encoder (no prefix tokens, downstream-only head frozen),
  checks images, holds the decoder's fixed sin-cos positions, switches gradient checkpointing;
- `first_block_input` and `run_block`: for the paths that run the encoder's blocks themselves on a chosen
  token sequence (RandSAC's rank-sorted paths and two-stream content stream, MAE's visible tokens), the input
  timm's `forward_features` gives its first block, and one block, checkpointed when asked;
- `RandSACOutput`: what every wrapper's `forward` returns, so the training engine and the pictures take any.
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

import timm
import torch
import torch.nn as nn
from timm.models import VisionTransformer
from torch.utils.checkpoint import checkpoint

from .attention import AttendFn, block_forward
from .initialization import init_pretraining_encoder
from .randsac_vit import sincos_pos_embed

__all__ = [
    'PRETRAIN_ARGS', 'RandSACOutput', 'PretrainWrapper', 'build_wrapper_encoder', 'first_block_input', 'run_block',
]

# encoder name -> the paper's decoder and default segments for that setting (DESIGN.md section 6); the MAE baseline
# takes the same decoder sizes, so that the two objectives differ in nothing but the objective
PRETRAIN_ARGS: Dict[str, Dict[str, Any]] = {
    'randsac_vit_micro_patch4_32': dict(  # ours, CPU-sized
        decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4, segments='blob:11-5'),
    'randsac_vit_micro_patch4_28': dict(  # the same at the native 28x28 (49 tokens: 11 and 5 blobs still fit)
        decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4, segments='blob:11-5'),
    'randsac_vit_tiny_patch4_32': dict(
        decoder_embed_dim=192, decoder_depth=3, decoder_num_heads=3, segments='blob:11-5'),
    'randsac_vit_small_patch4_32': dict(
        decoder_embed_dim=384, decoder_depth=6, decoder_num_heads=6, segments='blob:11-5'),
    'randsac_vit_small_patch16_224': dict(
        decoder_embed_dim=384, decoder_depth=4, decoder_num_heads=12, segments='blob:11-5'),
    'randsac_vit_base_patch16_224': dict(
        decoder_embed_dim=512, decoder_depth=4, decoder_num_heads=16, segments='blob:11-7-3'),
    # not in the paper: ViT-L takes the ViT-B decoder
    'randsac_vit_large_patch16_224': dict(
        decoder_embed_dim=512, decoder_depth=4, decoder_num_heads=16, segments='blob:11-7-3'),
    'randsac_vit_base': dict(
        decoder_embed_dim=512, decoder_depth=4, decoder_num_heads=16, segments='blob:11-7-3'),
}


@dataclass
class RandSACOutput:
    """What one pretraining forward returns (RandSAC's, and the MAE baseline's with a two-segment `rank`).

    Attributes:
        loss: scalar, MSE averaged over the scored tokens.
        pred: (B, N, P*P*C) predicted pixels of every token (raster order).
        target: (B, N, P*P*C) regression target (per-patch normalised when `norm_pix`).
        rank: (B, N) int64 segment order of each token.
        loss_mask: (B, N) bool, True = token entered the loss.
    """

    loss: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    rank: torch.Tensor
    loss_mask: torch.Tensor


def build_wrapper_encoder(
        encoder_name: str,
        pretrained: bool,
        kwargs: Dict[str, Any],
        wrapper_keys: Tuple[str, ...],
        what: str,
) -> Tuple[VisionTransformer, Dict[str, Any]]:
    """Split a pretraining factory's kwargs into the wrapper's own (`wrapper_keys`) and the encoder's, and build
    the headless encoder from the rest (an unknown kwarg raises `TypeError` there), initialised for pretraining
    (`initialization.py`). Shared by every objective."""
    kwargs.pop('pretrained_cfg', None)
    kwargs.pop('pretrained_cfg_overlay', None)
    if pretrained:
        # the registered entrypoints load full pretrained models themselves (hub.loading.create_pretrained_wrapper)
        raise ValueError(
            f'this factory builds a random-init {what} of {encoder_name}; load a full pretrained one by its tag, '
            f'timm.create_model("<wrapper>.<tag>", pretrained=True) (tags: timm.list_pretrained("*_pretrain_*")), or '
            f'published encoder weights with timm.create_model("{encoder_name}.<tag>", pretrained=True).')
    own = {k: kwargs.pop(k) for k in wrapper_keys if k in kwargs}
    kwargs.setdefault('num_classes', 0)
    # the paper's pretraining init (xavier), the same for every objective; timm's default stays for fine-tuning
    return init_pretraining_encoder(timm.create_model(encoder_name, **kwargs)), own


def first_block_input(encoder: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """The token sequence a timm ViT feeds its first block, as its `forward_features` builds it.

    For the paths that run the blocks themselves on another sequence (a subset, a permutation); the steps are
    timm's own (`patch_embed -> _pos_embed -> patch_drop -> norm_pre`), so a token-wise gather after them is
    what the blocks would otherwise have read.

    Args:
        encoder: a timm `VisionTransformer` without prefix tokens.
        images: (B, C, H, W).

    Returns:
        (B, N, D) raster-ordered patch embeddings plus position embedding (`_pos_embed` recomputes the
        sin-cos table for a new grid with `dynamic_img_size`).
    """
    x = encoder._pos_embed(encoder.patch_embed(images))
    return encoder.norm_pre(encoder.patch_drop(x))


def run_block(
        blk: nn.Module,
        x: torch.Tensor,
        grad_checkpointing: bool = False,
        attend: Union[AttendFn, torch.Tensor, None] = None,
) -> torch.Tensor:
    """One timm `Block` on `x: (B, N, D)` with an attention kernel or mask (`attention.block_forward`; None: every
    token reads every token), checkpointed when asked and a backward will follow."""
    if grad_checkpointing and torch.is_grad_enabled():
        return checkpoint(block_forward, blk, x, attend, use_reentrant=False)
    return block_forward(blk, x, attend)


class PretrainWrapper(nn.Module):
    """Base of the pretraining wrappers: the encoder, its token grid, the input checks, the decoder positions.

    A subclass builds its `self.decoder` (with an `embed_dim` and a `grad_checkpointing` flag), then calls
    `register_decoder_positions()`.

    Args:
        encoder: a timm `VisionTransformer` without class/register tokens.
        objective: the wrapper's name, for the error message.
    """

    def __init__(self, encoder: VisionTransformer, objective: str):
        super().__init__()
        if getattr(encoder, 'num_prefix_tokens', 0):
            raise ValueError(f'{objective} needs an encoder without class/register tokens (class_token=False).')
        self.encoder = encoder
        # The pooled-feature norm and head serve downstream use only; freezing them keeps DDP from
        # waiting on parameters the objective never touches.
        for module in (encoder.fc_norm, encoder.head):
            module.requires_grad_(False)
        self.pretrained_cfg = getattr(encoder, 'pretrained_cfg', {})
        self.patch_size: Tuple[int, int] = tuple(encoder.patch_embed.patch_size)
        self.in_chans = encoder.patch_embed.proj.in_channels
        self.grid_size: Tuple[int, int] = tuple(encoder.patch_embed.grid_size)

    def register_decoder_positions(self) -> None:
        # fixed sin-cos at the decoder's width, derived, so not saved
        self.register_buffer(
            'decoder_pos_embed', sincos_pos_embed(self.grid_size, self.decoder.embed_dim), persistent=False)

    def decoder_positions(self, grid_size: Tuple[int, int], device: Optional[torch.device] = None) -> torch.Tensor:
        """(1, h*w, D_dec) fixed sin-cos positions of a grid: the buffer, or a new table for another grid."""
        if grid_size == self.grid_size:
            return self.decoder_pos_embed
        return sincos_pos_embed(grid_size, self.decoder.embed_dim, device=device)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # timm's ViT runs masked blocks without checkpointing (it never drops the mask), so RandSAC's dense path
        # checkpoints the decoder only; the paths that run the encoder blocks themselves (`run_block`) read the
        # encoder's flag and checkpoint them too
        self.encoder.set_grad_checkpointing(enable)
        self.decoder.grad_checkpointing = enable

    def check_images(self, images: torch.Tensor) -> Tuple[int, int]:
        """Validate `images: (B, C, H, W)` and return the token grid `(h, w)`."""
        if images.dim() != 4:
            raise ValueError(f'images must be (B, C, H, W), got shape {tuple(images.shape)}')
        _, C, H, W = images.shape
        if C != self.in_chans:
            raise ValueError(
                f'images have {C} channels but the model was built for in_chans={self.in_chans}; '
                f'create it with in_chans={C} (Fashion-MNIST is 1 channel, RGB is 3).')
        ph, pw = self.patch_size
        if H % ph or W % pw:
            raise ValueError(
                f'image size {H}x{W} is not divisible by the patch size {ph}x{pw}; resize or pad the images '
                f'to a multiple of {ph}x{pw}.')
        if not self.encoder.dynamic_img_size and (H, W) != tuple(self.encoder.patch_embed.img_size):
            h, w = self.encoder.patch_embed.img_size
            raise ValueError(
                f'image size {H}x{W} does not match the model img_size {h}x{w}; create the model with '
                f'img_size=({H}, {W}) or dynamic_img_size=True.')
        return H // ph, W // pw
