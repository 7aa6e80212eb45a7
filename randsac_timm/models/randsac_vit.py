"""RandSAC encoders: timm Vision Transformers with a fixed 2-D sin-cos position embedding.

Paper: `Self-supervision through Random Segments with Autoregressive Coding (RandSAC)`
    - https://arxiv.org/abs/2203.12054

Each encoder is a stock timm `VisionTransformer` (no class token, average pooling) whose only
difference is the position embedding: a fixed 2-D sin-cos table held as a persistent buffer under
the usual `pos_embed` key. Because the key and shape are timm's own, an exported state dict loads
into a plain `vit_*` model with `class_token=False, global_pool='avg'`. When the input size changes
the table is recomputed for the new grid, never interpolated.
"""
import json
import os
import warnings
from typing import Any, Dict, List, Optional, Set, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import build_sincos2d_pos_embed, to_2tuple
from timm.models import (
    VisionTransformer,
    build_model_with_cfg,
    generate_default_cfgs,
    get_arch_pretrained_cfgs,
    list_pretrained,
    register_model,
    resolve_pretrained_cfg,
)
from timm.models._input import update_model_input_size  # private in 1.0.x; the parent uses it the same way

from ..hub.names import PACKAGED_WEIGHTS_DIR, PUBLISHED_TAGS, hub_repo_id

__all__ = [
    'RandSACVisionTransformer', 'sincos_pos_embed', 'checkpoint_filter_fn',
    'packaged_weight_cfgs', 'register_packaged_weights',
]

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

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Names of the parameters that take no weight decay: none besides the 1-D ones timm already exempts.

        The parent names `pos_embed`, `cls_token`, `reg_token` and `dist_token`; here `pos_embed` is a fixed buffer
        and the tokens do not exist, and timm's contract (and a user's optimizer factory) wants real parameters only.
        """
        params = dict(self.named_parameters())
        return {name for name in super().no_weight_decay() if name in params}

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


_BASE_CFGS: Dict[str, Dict[str, Any]] = {
    # CPU-sized encoder, defaults to Fashion-MNIST (1 channel, padded 28 -> 32)
    'randsac_vit_micro_patch4_32': _cfg(
        num_classes=10, input_size=(1, 32, 32), crop_pct=1.0, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD),
    # the same encoder at Fashion-MNIST's native 28x28 (a 7x7 grid, no padding)
    'randsac_vit_micro_patch4_28': _cfg(
        num_classes=10, input_size=(1, 28, 28), crop_pct=1.0, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD),
    'randsac_vit_tiny_patch4_32': _cifar_cfg(),
    'randsac_vit_small_patch4_32': _cifar_cfg(),
    'randsac_vit_small_patch16_224': _cfg(),
    'randsac_vit_base_patch16_224': _cfg(),
    'randsac_vit_large_patch16_224': _cfg(),
    'randsac_vit_base': _cfg(),
}
_DATA_KEYS = ('input_size', 'interpolation', 'crop_pct', 'crop_mode', 'mean', 'std', 'license')


def packaged_weight_cfgs(folder: str) -> Dict[str, Dict[str, Any]]:
    """Pretrained cfgs of the `<encoder>.<tag>.safetensors` files in `folder` that have their `.json` beside them.

    The cfg's `file` (absolute path) wins over its `hf_hub_id` in timm's order (state_dict > file > hf_hub_id >
    url), so packaged weights load offline; the hub id documents where the same weights are published.

    Returns:
        {'<encoder>.<tag>': cfg dict}; empty when the folder does not exist.
    """
    cfgs: Dict[str, Dict[str, Any]] = {}
    if not os.path.isdir(folder):
        return cfgs
    for fname in sorted(os.listdir(folder)):
        name_tag, ext = os.path.splitext(fname)
        encoder, _, tag = name_tag.partition('.')
        meta_path = os.path.join(folder, name_tag + '.json')
        if ext != '.safetensors' or encoder.startswith(('randsac_pretrain_', 'mae_pretrain_')):
            continue  # full pretraining models: their wrappers register them (hub.loading.pretrain_default_cfgs)
        if not tag or encoder not in _BASE_CFGS or not os.path.isfile(meta_path):
            warnings.warn(f'{os.path.join(folder, fname)} is not registered: packaged weights are named '
                          f'<encoder>.<tag>.safetensors with <encoder>.<tag>.json beside them', stacklevel=2)
            continue
        with open(meta_path) as f:
            meta = json.load(f)
        data = meta.get('config', {}).get('pretrained_cfg', {})
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in _DATA_KEYS}
        cfgs[name_tag] = dict(
            _BASE_CFGS[encoder], **data, num_classes=0, file=os.path.join(os.path.abspath(folder), fname),
            hf_hub_id=meta.get('hf_hub_id') or hub_repo_id(encoder, tag))
    return cfgs


def _published_cfgs() -> Dict[str, Dict[str, Any]]:
    return {f'{enc}.{tag}': dict(_BASE_CFGS[enc], num_classes=0, hf_hub_id=hub_repo_id(enc, tag))
            for enc, tags in PUBLISHED_TAGS.items() for tag in tags}


def _generate_cfgs(tagged: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    # '.*' keeps the weight-less untagged cfg the default, so a model built without `pretrained` (its head size,
    # input size) does not change with the weight files installed; `pretrained=True` names its tag explicitly.
    # (timm makes the first tag with weights the default unless a later key ends in '*', hence tags first)
    has_tags = {name.partition('.')[0] for name in tagged}
    return generate_default_cfgs({
        **tagged, **{(f'{name}.*' if name in has_tags else name): cfg for name, cfg in _BASE_CFGS.items()}})


default_cfgs = _generate_cfgs({**_published_cfgs(), **packaged_weight_cfgs(PACKAGED_WEIGHTS_DIR)})


def _missing_weights_message(variant: str, tag: Optional[str]) -> str:
    name = f'{variant}.{tag}' if tag else variant
    available = [n for n in list_pretrained('randsac_vit*') if '.' in n]
    wrapper = variant.replace('randsac_', 'randsac_pretrain_', 1)
    new_tag = tag or '<tag>'
    return (
        f'no pretrained weights exist for {name!r}; pretrained tags in this install: '
        f'{", ".join(available) or "none yet"} (timm.list_pretrained("randsac*")). To make {variant}.{new_tag}: '
        f'train it with `python train_pretrain.py --model {wrapper} --output-dir OUT ...`, export it with '
        f'`python -m randsac_timm.hub export OUT/checkpoint-last.pth DIR --tag {new_tag}` (load that with '
        f'timm.create_model("local-dir:DIR", pretrained=True)), and publish it with `python -m randsac_timm.hub push '
        f'OUT/checkpoint-last.pth --tag {new_tag}` (repo {hub_repo_id(variant, new_tag)}) or package it with '
        f'`python -m randsac_timm.hub package ...`; see docs/model_zoo.md. Use pretrained=False for random init.')


def _create_randsac_vit(variant: str, pretrained: bool = False, defaults: Optional[Dict[str, Any]] = None,
                        **kwargs: Any) -> RandSACVisionTransformer:
    """Build `variant` from its `defaults` (ENCODER_ARGS) under the caller's `kwargs`. A pretrained tag whose
    weights were trained at another input size than the variant's (a 28x28 run of `_patch4_32`, packaged) builds at
    that size unless the caller gives `img_size`: its cfg's `input_size` then describes the model it returns."""
    given = set(kwargs)
    kwargs = dict(defaults or {}, **kwargs)
    if pretrained:
        # timm itself only says "No pretrained weights exist"; name the tags that do and how to make the missing one
        asked = kwargs.get('pretrained_cfg')
        try:
            cfg = resolve_pretrained_cfg(variant, asked, kwargs.get('pretrained_cfg_overlay'))
        except RuntimeError as e:  # a tag that is not registered
            raise RuntimeError(_missing_weights_message(variant, asked)) from e
        if not (cfg.state_dict or cfg.has_weights):
            raise RuntimeError(_missing_weights_message(variant, asked if isinstance(asked, str) else cfg.tag))
        # (timm's own ViTs keep the variant's size and only report the cfg's; ours follow the weights)
        if 'img_size' not in given and cfg.input_size:
            height, width = cfg.input_size[-2:]
            kwargs['img_size'] = height if height == width else (height, width)
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
    'randsac_vit_micro_patch4_28': dict(img_size=28, patch_size=4, embed_dim=128, depth=6, num_heads=4),
    'randsac_vit_tiny_patch4_32': dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3),
    'randsac_vit_small_patch4_32': dict(img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6),
    'randsac_vit_small_patch16_224': dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6),
    'randsac_vit_base_patch16_224': dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    'randsac_vit_large_patch16_224': dict(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    'randsac_vit_base': dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
}


def _entry(name: str, pretrained: bool, kwargs: Dict[str, Any]) -> RandSACVisionTransformer:
    return _create_randsac_vit(name, pretrained=pretrained, defaults=ENCODER_ARGS[name], **kwargs)


@register_model
def randsac_vit_micro_patch4_32(pretrained: bool = False, **kwargs: Any) -> RandSACVisionTransformer:
    """ViT-Micro (6 x 128d, 4 heads), 4x4 patches at 32x32: the CPU-sized encoder."""
    return _entry('randsac_vit_micro_patch4_32', pretrained, kwargs)


@register_model
def randsac_vit_micro_patch4_28(pretrained: bool = False, **kwargs: Any) -> RandSACVisionTransformer:
    """ViT-Micro at Fashion-MNIST's native 28x28 (7x7 grid of 4x4 patches): the same weights' shapes as _32."""
    return _entry('randsac_vit_micro_patch4_28', pretrained, kwargs)


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


def register_packaged_weights(folder: str) -> List[str]:
    """Register the packaged-style weights in `folder` (see `packaged_weight_cfgs`) as tags, after import.

    The package's own `weights/` folder is registered at import; this adds another folder (tests, a local model
    zoo) by re-running timm's `register_model` on the affected entrypoints with the extra tags.

    Returns:
        the registered '<encoder>.<tag>' names.
    """
    extra = packaged_weight_cfgs(folder)
    encoders = sorted({name.partition('.')[0] for name in extra})
    for encoder in encoders:
        tagged = {n: c.to_dict(remove_source=False) for n, c in get_arch_pretrained_cfgs(encoder).items() if '.' in n}
        tagged.update({n: c for n, c in extra.items() if n.startswith(encoder + '.')})
        default_cfgs[encoder] = _generate_cfgs(tagged)[encoder]
        with warnings.catch_warnings():  # re-registering on purpose: timm warns about overwriting
            warnings.simplefilter('ignore')
            register_model(globals()[encoder])
    return sorted(extra)
