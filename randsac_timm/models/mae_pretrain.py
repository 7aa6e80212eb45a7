"""MAE baseline on the RandSAC encoders: 75% random masking, encoder on visible tokens, light decoder.

Paper: `Masked Autoencoders Are Scalable Vision Learners` - https://arxiv.org/abs/2111.06377
(the baseline RandSAC compares against in Table 9 of https://arxiv.org/abs/2203.12054)

`forward(images)` = `random_masking` (per-sample argsort of noise) -> `forward_encoder` on the visible
tokens only, then a LayerNorm as in MAE -> `forward_decoder` (mask tokens + fixed sin-cos positions, timm `Block`s)
-> norm-pix MSE on the masked tokens. The output has the same contract as `RandSACPretrain` (`RandSACOutput`),
with `rank` 0 for visible and 1 for masked tokens: a two-segment "order", so the training engine and the
reconstruction pictures work unchanged.

Running a timm ViT on a subset of its tokens: timm has no public entry point for it (`forward_features` takes
every token; its `PatchDropout` draws its own random keep-set from the global RNG and does not return it).
We run the steps of `forward_features` ourselves on the encoder's public submodules (`first_block_input` =
`patch_embed -> _pos_embed -> patch_drop -> norm_pre`, then gather the visible tokens, then `blocks`, `norm`);
that helper, the encoder's set-up, the input checks and the output type are shared with RandSAC through
`pretrain_wrapper.py`.
The alternative that stays on `forward_features(x, attn_mask=...)` (visible tokens attend only to visible
ones) gives the same features but runs the encoder on all N tokens, losing MAE's 4x saving.

Registered as `mae_pretrain_<encoder>` for every `randsac_vit_<encoder>` (e.g. `mae_pretrain_vit_micro_patch4_32`),
with the same decoder sizes as that encoder's RandSAC wrapper (`pretrain_wrapper.PRETRAIN_ARGS`).
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional, Set, Tuple

import torch
import torch.nn as nn
from timm.layers import LayerNorm, trunc_normal_
from timm.models import VisionTransformer, register_model
from timm.models.vision_transformer import Block

from ..hub.loading import create_pretrained_wrapper, pretrain_default_cfgs
from .initialization import init_linear_and_norm
from .losses import masked_mse, pixel_target
from .pretrain_wrapper import (
    PRETRAIN_ARGS,
    PretrainWrapper,
    RandSACOutput,
    build_wrapper_encoder,
    first_block_input,
    run_block,
)

__all__ = ['RandomMasking', 'random_masking', 'MAEDecoder', 'MAEPretrain', 'create_mae_pretrain']


@dataclass(frozen=True)
class RandomMasking:
    """MAE's masking, standing where RandSAC keeps its `SegmentSpec` (`model.segments`).

    `str()` gives `'mae:<ratio>'` for logs and checkpoints; `validate` mirrors `SegmentSpec.validate`.
    """

    mask_ratio: float = 0.75

    def num_masked(self, num_tokens: int) -> int:
        return round(self.mask_ratio * num_tokens)

    def validate(self, grid_size: Tuple[int, int]) -> None:
        num_tokens = grid_size[0] * grid_size[1]
        if not 0 < self.num_masked(num_tokens) < num_tokens:
            raise ValueError(
                f'mask_ratio={self.mask_ratio} masks {self.num_masked(num_tokens)} of {num_tokens} tokens; '
                f'it must leave at least one token masked and one visible.')

    def __str__(self) -> str:
        return f'mae:{self.mask_ratio:g}'


def random_masking(
        batch_size: int,
        num_tokens: int,
        num_masked: int,
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Mask exactly `num_masked` random tokens of every sample.

    Returns:
        (B, N) bool, True = masked.
    """
    # MAE's trick: the tokens with the smallest noise are kept; argsort twice turns noise into ranks
    noise = torch.rand(batch_size, num_tokens, generator=generator, device=device)
    order = noise.argsort(dim=1).argsort(dim=1)  # (B, N) each token's position in the random order
    return order >= num_tokens - num_masked


class MAEDecoder(nn.Module):
    """MAE's decoder: embed visible latents, fill mask tokens, add sin-cos positions, timm `Block`s, predict pixels.

    Args:
        encoder_dim: encoder width.
        out_dim: pixels per token, `P * P * C`.
        embed_dim: decoder width.
        depth: decoder blocks.
        num_heads: decoder attention heads.
        mlp_ratio: decoder MLP expansion.
        drop_path_rate: stochastic depth in the decoder.
    """

    def __init__(
            self,
            encoder_dim: int,
            out_dim: int,
            embed_dim: int = 512,
            depth: int = 8,
            num_heads: int = 16,
            mlp_ratio: float = 4.0,
            drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.embed = nn.Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i]) for i in range(depth)])
        self.norm = LayerNorm(embed_dim)
        self.pred = nn.Linear(embed_dim, out_dim)
        self.grad_checkpointing = False
        self.apply(init_linear_and_norm)
        trunc_normal_(self.mask_token, std=0.02)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        """
        Args:
            latent: (B, N_vis, D_enc) encoder output of the visible tokens (visible first, see `MAEPretrain`).
            ids_restore: (B, N) for each raster position, its index in `[visible..., masked...]`.
            pos_embed: (1, N, D_dec) fixed sin-cos positions.

        Returns:
            (B, N, out_dim) predictions of every token, raster order.
        """
        x = self.embed(latent)
        B, N = ids_restore.shape
        x = torch.cat([x, self.mask_token.to(x.dtype).expand(B, N - x.shape[1], -1)], dim=1)  # (B, N, D_dec)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # back to raster order
        x = x + pos_embed.to(x.dtype)
        for blk in self.blocks:
            x = run_block(blk, x, self.grad_checkpointing)
        return self.pred(self.norm(x))


class MAEPretrain(PretrainWrapper):
    """MAE objective around a timm `VisionTransformer` without prefix tokens (a RandSAC encoder).

    Args:
        encoder: the encoder; run on the visible tokens through its public submodules (see module docstring).
        mask_ratio: fraction of tokens masked per sample (`round(mask_ratio * N)` exactly).
        decoder_embed_dim: decoder width.
        decoder_depth: number of decoder blocks.
        decoder_num_heads: decoder attention heads.
        decoder_mlp_ratio: decoder MLP expansion.
        norm_pix: per-patch normalised pixel target (MAE's norm_pix_loss).
        decoder_drop_path_rate: stochastic depth in the decoder.
    """

    def __init__(
            self,
            encoder: VisionTransformer,
            mask_ratio: float = 0.75,
            decoder_embed_dim: int = 512,
            decoder_depth: int = 8,
            decoder_num_heads: int = 16,
            decoder_mlp_ratio: float = 4.0,
            norm_pix: bool = True,
            decoder_drop_path_rate: float = 0.0,
    ):
        super().__init__(encoder, 'this MAE baseline')
        if not isinstance(encoder.patch_drop, nn.Identity):
            raise ValueError('MAE does its own token dropping: create the encoder with patch_drop_rate=0.')
        self.mask_ratio = mask_ratio
        self.segments = RandomMasking(mask_ratio)
        self.segments.validate(self.grid_size)
        self.norm_pix = norm_pix
        # MAE's decoder reads LayerNorm'd encoder tokens. timm's ViT with average pooling keeps its final LayerNorm in
        # `fc_norm` (pooled features, frozen here) and makes `norm` an Identity, so the wrapper trains its own norm
        # there; like the decoder it is not part of the exported encoder.
        self.latent_norm = LayerNorm(encoder.embed_dim) if isinstance(encoder.norm, nn.Identity) else nn.Identity()
        self.decoder = MAEDecoder(
            encoder_dim=encoder.embed_dim,
            out_dim=self.patch_size[0] * self.patch_size[1] * self.in_chans,
            embed_dim=decoder_embed_dim,
            depth=decoder_depth,
            num_heads=decoder_num_heads,
            mlp_ratio=decoder_mlp_ratio,
            drop_path_rate=decoder_drop_path_rate,
        )
        self.register_decoder_positions()

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        # an embedding, like timm's pos_embed / cls_token (MAE decays neither)
        return {'decoder.mask_token'}

    def forward_encoder(self, images: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """
        Args:
            images: (B, C, H, W).
            ids_keep: (B, N_vis) raster indices of the visible tokens.

        Returns:
            (B, N_vis, D_enc) LayerNorm'd encoder output of the visible tokens (the encoder's `norm`, or the
            wrapper's `latent_norm` where that is an Identity).
        """
        x = first_block_input(self.encoder, images)  # (B, N, D_enc); norm_pre is per token, so gathering after is fine
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, N_vis, D_enc)
        for blk in self.encoder.blocks:
            x = run_block(blk, x, self.encoder.grad_checkpointing)
        return self.latent_norm(self.encoder.norm(x))

    def forward(
            self,
            images: torch.Tensor,
            rank: Optional[torch.Tensor] = None,
            generator: Optional[torch.Generator] = None,
    ) -> RandSACOutput:
        """
        Args:
            images: (B, C, H, W) normalised images.
            rank: optional (B, N) mask in RandSAC's output form, 1 = masked, 0 = visible, with the same number of
                masked tokens in every sample; sampled (`mask_ratio`) when None.
            generator: RNG for the mask (the global RNG when None).

        Returns:
            `RandSACOutput` with `rank` = `loss_mask` as int64 (0 visible, 1 masked).
        """
        h, w = self.check_images(images)
        B, N = images.shape[0], h * w
        if rank is None:
            num_masked = self.segments.num_masked(N)
            if (h, w) != self.grid_size:
                self.segments.validate((h, w))
            mask = random_masking(B, N, num_masked, generator=generator, device=images.device)
        else:
            if rank.shape != (B, N) or not ((rank == 0) | (rank == 1)).all():
                raise ValueError(f'rank must be a (B, N) = {(B, N)} mask of 0 (visible) and 1 (masked)')
            mask = rank.bool()
            num_masked = int(mask[0].sum())
            if not (mask.sum(1) == num_masked).all() or num_masked in (0, N):
                raise ValueError('a given MAE mask must hide the same number of tokens (>0, <N) in every sample')
        # visible tokens first, each group in raster order; ids_restore undoes this permutation
        ids_shuffle = mask.to(torch.uint8).argsort(dim=1, stable=True)  # (B, N)
        ids_restore = ids_shuffle.argsort(dim=1)
        latent = self.forward_encoder(images, ids_shuffle[:, :N - num_masked])
        pred = self.decoder(latent, ids_restore, self.decoder_positions((h, w), images.device))
        target = pixel_target(images, self.patch_size, norm_pix=self.norm_pix)
        loss = masked_mse(pred, target, mask)
        return RandSACOutput(loss=loss, pred=pred, target=target, rank=mask.long(), loss_mask=mask)


_WRAPPER_KWARGS = (
    'mask_ratio', 'norm_pix', 'decoder_embed_dim', 'decoder_depth', 'decoder_num_heads', 'decoder_mlp_ratio',
    'decoder_drop_path_rate',
)


def create_mae_pretrain(encoder_name: str, pretrained: bool = False, **kwargs: Any) -> MAEPretrain:
    """Build the MAE wrapper for a registered `randsac_vit_*` encoder, with its RandSAC decoder sizes.

    Wrapper kwargs (`mask_ratio`, `norm_pix`, `decoder_*`) configure the objective; every other kwarg goes to the
    encoder (`img_size`, `in_chans`, `drop_path_rate`, ...), so an unknown one (`segments` included) raises
    `TypeError` there.
    """
    encoder, own = build_wrapper_encoder(encoder_name, pretrained, kwargs, _WRAPPER_KWARGS, 'MAE wrapper')
    decoder_args = {k: v for k, v in PRETRAIN_ARGS[encoder_name].items() if k.startswith('decoder_')}
    decoder_args.update(own)
    return MAEPretrain(encoder, **decoder_args)


# full MAE models packaged in randsac_timm/hub/weights/ (`hub package --full`) become tags; none is declared
default_cfgs = pretrain_default_cfgs({f'mae_pretrain_{name[len("randsac_"):]}': name for name in PRETRAIN_ARGS}, {})


def _entry(name: str, pretrained: bool, kwargs: Dict[str, Any]) -> MAEPretrain:
    encoder_name = name.replace('mae_pretrain_', 'randsac_', 1)
    return create_pretrained_wrapper(name, lambda **kw: create_mae_pretrain(encoder_name, **kw), pretrained, kwargs)


@register_model
def mae_pretrain_vit_micro_patch4_32(pretrained: bool = False, **kwargs: Any) -> MAEPretrain:
    return _entry('mae_pretrain_vit_micro_patch4_32', pretrained, kwargs)


@register_model
def mae_pretrain_vit_micro_patch4_28(pretrained: bool = False, **kwargs: Any) -> MAEPretrain:
    return _entry('mae_pretrain_vit_micro_patch4_28', pretrained, kwargs)


@register_model
def mae_pretrain_vit_tiny_patch4_32(pretrained: bool = False, **kwargs: Any) -> MAEPretrain:
    return _entry('mae_pretrain_vit_tiny_patch4_32', pretrained, kwargs)


@register_model
def mae_pretrain_vit_small_patch4_32(pretrained: bool = False, **kwargs: Any) -> MAEPretrain:
    return _entry('mae_pretrain_vit_small_patch4_32', pretrained, kwargs)


@register_model
def mae_pretrain_vit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> MAEPretrain:
    return _entry('mae_pretrain_vit_small_patch16_224', pretrained, kwargs)


@register_model
def mae_pretrain_vit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> MAEPretrain:
    return _entry('mae_pretrain_vit_base_patch16_224', pretrained, kwargs)


@register_model
def mae_pretrain_vit_large_patch16_224(pretrained: bool = False, **kwargs: Any) -> MAEPretrain:
    return _entry('mae_pretrain_vit_large_patch16_224', pretrained, kwargs)


@register_model
def mae_pretrain_vit_base(pretrained: bool = False, **kwargs: Any) -> MAEPretrain:
    return _entry('mae_pretrain_vit_base', pretrained, kwargs)
