"""RandSAC encoders: timm Vision Transformers with a fixed 2-D sin-cos position embedding.

Paper: `Self-supervision through Random Segments with Autoregressive Coding (RandSAC)`
    - https://arxiv.org/abs/2203.12054

Each encoder is a stock timm `VisionTransformer` (no class token, average pooling) whose only
difference is the position embedding: a fixed 2-D sin-cos table held as a persistent buffer under
the usual `pos_embed` key. Because the key and shape are timm's own, an exported state dict loads
into a plain `vit_*` model with `class_token=False, global_pool='avg'`. When the input size changes
the table is recomputed for the new grid, never interpolated.
"""
from typing import Any, Dict, Optional, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import build_sincos2d_pos_embed, to_2tuple
from timm.models import VisionTransformer, build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._input import update_model_input_size  # private in 1.0.x; the parent uses it the same way

__all__ = ['RandSACVisionTransformer', 'sincos_pos_embed', 'checkpoint_filter_fn']

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
PAPER_ID = 'arXiv:2203.12054'


def sincos_pos_embed(
        grid_size: Tuple[int, int],
        dim: int,
        device: Optional[torch.device] = None,
        dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fixed 2-D sin-cos position table for a `grid_size = (h, w)` token grid.

    Returns:
        (1, h * w, dim) in raster order (timm's `build_sincos2d_pos_embed` layout).
    """
    return build_sincos2d_pos_embed(list(grid_size), dim=dim, device=device, dtype=dtype).unsqueeze(0)


class RandSACVisionTransformer(VisionTransformer):
    """timm `VisionTransformer` with a fixed, recomputable sin-cos position embedding.

    Only the position embedding differs from the parent (as `deit.py` overrides only what differs).
    `pos_embed` is a persistent buffer, so it is saved under timm's key but is not a trainable parameter.
    """

    def __init__(self, class_token: bool = False, global_pool: str = 'avg', reg_tokens: int = 0, **kwargs: Any):
        if class_token or reg_tokens:
            raise ValueError(
                'RandSAC encoders have no class or register tokens (the paper pools the mean of the last block); '
                'use a stock timm vit_* model if you need them.')
        if kwargs.get('pos_embed', 'learn') != 'learn':
            raise ValueError('RandSAC encoders always use their fixed sin-cos position embedding; drop `pos_embed=`.')
        img_size, patch_size = to_2tuple(kwargs.get('img_size', 224)), to_2tuple(kwargs.get('patch_size', 16))
        if img_size[0] % patch_size[0] or img_size[1] % patch_size[1]:
            raise ValueError(
                f'img_size {img_size} is not divisible by patch_size {patch_size}; '
                f'pick an img_size that is a multiple of the patch size.')
        embed_dim = kwargs.get('embed_dim', 768)
        if embed_dim % 4:
            raise ValueError(f'embed_dim={embed_dim} must be divisible by 4 for the 2-D sin-cos position embedding.')
        super().__init__(class_token=False, global_pool=global_pool, reg_tokens=0, **kwargs)
        table = sincos_pos_embed(self.patch_embed.grid_size, self.embed_dim, device=self.pos_embed.device)
        del self.pos_embed  # replace timm's learned parameter by a buffer under the same key
        self.register_buffer('pos_embed', table, persistent=True)

    def init_weights(self, mode: str = '', needs_reset: bool = True) -> None:
        super().init_weights(mode, needs_reset=needs_reset)
        if isinstance(self.pos_embed, torch.Tensor):  # the parent's init overwrote the table with noise
            with torch.no_grad():
                self.pos_embed.copy_(sincos_pos_embed(self.patch_embed.grid_size, self.embed_dim))

    def set_input_size(
            self,
            img_size: Optional[Tuple[int, int]] = None,
            patch_size: Optional[Tuple[int, int]] = None,
    ) -> None:
        """Change the input resolution / patch size; the sin-cos table is recomputed for the new grid."""
        self.patch_embed.set_input_size(img_size=img_size, patch_size=patch_size)
        self.pos_embed = sincos_pos_embed(
            self.patch_embed.grid_size, self.embed_dim, device=self.pos_embed.device, dtype=self.pos_embed.dtype)
        update_model_input_size(self, self.patch_embed.img_size, patch_size=patch_size)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_img_size:
            B, H, W, C = x.shape  # NHWC from the dynamic patch embed
            if (H, W) == tuple(self.patch_embed.grid_size):
                pos_embed = self.pos_embed
            else:
                pos_embed = sincos_pos_embed((H, W), C, device=x.device, dtype=self.pos_embed.dtype)
            x = x.reshape(B, H * W, C)
        else:
            pos_embed = self.pos_embed
        return self.pos_drop(x + pos_embed.to(x.dtype))


def checkpoint_filter_fn(
        state_dict: Dict[str, torch.Tensor],
        model: RandSACVisionTransformer,
) -> Dict[str, torch.Tensor]:
    """Adapt an encoder state dict (ours, a pretraining checkpoint, or a plain timm ViT) to `model`.

    Unwraps `model` / `state_dict` containers and the pretraining wrapper's `encoder.` prefix, drops
    decoder keys, and recomputes the sin-cos table when the grid differs instead of interpolating it.
    """
    for key in ('model', 'state_dict'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    if any(k.startswith('encoder.') for k in state_dict):
        state_dict = {k[len('encoder.'):]: v for k, v in state_dict.items() if k.startswith('encoder.')}
    out = {}
    for k, v in state_dict.items():
        if k == 'pos_embed' and v.shape != model.pos_embed.shape:
            v = sincos_pos_embed(model.patch_embed.grid_size, model.embed_dim, dtype=v.dtype)
        out[k] = v
    return out


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': None,
        'crop_pct': 0.9,
        'interpolation': 'bicubic',
        'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj',
        'classifier': 'head',
        'license': 'apache-2.0',
        'paper_ids': PAPER_ID,
        'paper_name': 'Self-supervision through Random Segments with Autoregressive Coding (RandSAC)',
        **kwargs,
    }


def _cifar_cfg(**kwargs: Any) -> Dict[str, Any]:
    return _cfg(num_classes=10, input_size=(3, 32, 32), crop_pct=1.0, mean=CIFAR10_MEAN, std=CIFAR10_STD, **kwargs)


default_cfgs = generate_default_cfgs({
    # CPU-sized encoder, defaults to Fashion-MNIST (1 channel, padded 28 -> 32)
    'randsac_vit_micro_patch4_32': _cfg(
        num_classes=10, input_size=(1, 32, 32), crop_pct=1.0, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD),
    'randsac_vit_tiny_patch4_32': _cifar_cfg(),
    'randsac_vit_small_patch4_32': _cifar_cfg(),
    'randsac_vit_small_patch16_224': _cfg(),
    'randsac_vit_base_patch16_224': _cfg(),
    'randsac_vit_large_patch16_224': _cfg(),
    'randsac_vit_base': _cfg(),
})


def _create_randsac_vit(variant: str, pretrained: bool = False, **kwargs: Any) -> RandSACVisionTransformer:
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(
        RandSACVisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


# Encoder sizes. Each pretraining wrapper in `randsac_pretrain.py` pairs one of these with the paper's decoder.
ENCODER_ARGS: Dict[str, Dict[str, Union[int, float]]] = {
    # ours: 6 x 128d, small enough for minutes of pretraining on 2 CPU cores (DESIGN.md section 9)
    'randsac_vit_micro_patch4_32': dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4),
    'randsac_vit_tiny_patch4_32': dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3),
    'randsac_vit_small_patch4_32': dict(img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6),
    'randsac_vit_small_patch16_224': dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6),
    'randsac_vit_base_patch16_224': dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    'randsac_vit_large_patch16_224': dict(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    'randsac_vit_base': dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
}


def _entry(name: str, pretrained: bool, kwargs: Dict[str, Any]) -> RandSACVisionTransformer:
    return _create_randsac_vit(name, pretrained=pretrained, **dict(ENCODER_ARGS[name], **kwargs))


@register_model
def randsac_vit_micro_patch4_32(pretrained: bool = False, **kwargs: Any) -> RandSACVisionTransformer:
    """ViT-Micro (6 x 128d, 4 heads), 4x4 patches at 32x32: the CPU-sized encoder."""
    return _entry('randsac_vit_micro_patch4_32', pretrained, kwargs)


@register_model
def randsac_vit_tiny_patch4_32(pretrained: bool = False, **kwargs: Any) -> RandSACVisionTransformer:
    """ViT-Tiny (12 x 192d, 3 heads), 4x4 patches at 32x32: the paper's CIFAR-10 ablation encoder."""
    return _entry('randsac_vit_tiny_patch4_32', pretrained, kwargs)


@register_model
def randsac_vit_small_patch4_32(pretrained: bool = False, **kwargs: Any) -> RandSACVisionTransformer:
    """ViT-Small (12 x 384d, 6 heads), 4x4 patches at 32x32: the paper's low-data CIFAR encoder."""
    return _entry('randsac_vit_small_patch4_32', pretrained, kwargs)


@register_model
def randsac_vit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> RandSACVisionTransformer:
    """ViT-Small/16 at 224: the paper's ImageNet-100 encoder."""
    return _entry('randsac_vit_small_patch16_224', pretrained, kwargs)


@register_model
def randsac_vit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> RandSACVisionTransformer:
    """ViT-Base/16 at 224: the paper's ImageNet-1K encoder."""
    return _entry('randsac_vit_base_patch16_224', pretrained, kwargs)


@register_model
def randsac_vit_large_patch16_224(pretrained: bool = False, **kwargs: Any) -> RandSACVisionTransformer:
    """ViT-Large/16 at 224 (not in the paper; same recipe as ViT-B)."""
    return _entry('randsac_vit_large_patch16_224', pretrained, kwargs)


@register_model
def randsac_vit_base(pretrained: bool = False, **kwargs: Any) -> RandSACVisionTransformer:
    """Short name for `randsac_vit_base_patch16_224`."""
    return _entry('randsac_vit_base', pretrained, kwargs)
