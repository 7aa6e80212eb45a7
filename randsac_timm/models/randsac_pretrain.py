"""RandSAC pretraining wrappers: a timm encoder, random hierarchical segments, a masked decoder.

Paper: `Self-supervision through Random Segments with Autoregressive Coding (RandSAC)`
    - https://arxiv.org/abs/2203.12054

`forward(images)` = sample a serialization `rank` -> build the masks once -> run the encoder through
timm's public `forward_intermediates(x, attn_mask=...)` -> decode position queries against the
memory of earlier segments -> masked MSE on the pixels of the scored tokens.

`attn_impl=` picks how attention runs (`attention.py`), all giving the same loss and gradients: `'dense'`
(default; raster order, full masks, the encoder through `forward_intermediates`), `'sparse'` (tokens sorted
by rank, the last segment dropped from the encoder, block-sparse SDPA that skips fully masked key blocks) or
`'flex'` (the same layout with FlexAttention, compiled on CUDA). The sorted paths run the encoder's own
modules (`patch_embed -> _pos_embed -> blocks`) instead of `forward_intermediates`, because they feed
it a permuted, shortened token sequence.

`decoder=` picks the network (paper Table 8): `'skip'` (default, trainable skips), `'plain'` (every decoder
layer reads the last block, same as `skip_connections=False`), or `'two_stream'` (XLNet-style query stream
through the shared encoder blocks, see `two_stream.py`).

Registered as `randsac_pretrain_<encoder>` (e.g. `randsac_pretrain_vit_tiny_patch4_32`), each with the
paper's decoder for that setting (DESIGN.md section 6).
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional, Set, Tuple, Union

import timm
import torch
import torch.nn as nn
from timm.models import VisionTransformer, register_model
from torch.utils.checkpoint import checkpoint

from ..hub.loading import create_pretrained_wrapper, pretrain_default_cfgs
from .attention import ATTN_IMPLS, block_forward, check_block_encoder, sorted_plan
from .decoder import RandSACDecoder
from .initialization import init_pretraining_encoder
from .losses import masked_mse, pixel_target
from .masks import additive_mask, attention_dtype, build_masks
from .masks import loss_mask as loss_mask_of
from .randsac_vit import sincos_pos_embed
from .segments import SegmentSpec, parse_segments, sample_rank
from .two_stream import TwoStreamHead, check_two_stream_encoder, content_stream_inputs, first_block_input

__all__ = [
    'RandSACOutput', 'RandSACPretrain', 'build_wrapper_encoder', 'create_randsac_pretrain', 'PRETRAIN_ARGS', 'DECODERS',
]

DECODERS = ('skip', 'plain', 'two_stream')


@dataclass
class RandSACOutput:
    """What one pretraining forward returns.

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


class RandSACPretrain(nn.Module):
    """RandSAC objective around any timm `VisionTransformer` without prefix tokens.

    Args:
        encoder: the encoder; reached only through `forward_intermediates(..., attn_mask=...)`.
        segments: serialization in the paper's notation, e.g. `'blob:11-5'` (see `segments.py`).
        decoder_embed_dim: decoder width.
        decoder_depth: number of decoder blocks.
        decoder_num_heads: decoder attention heads.
        decoder_mlp_ratio: decoder MLP expansion.
        skip_connections: trainable encoder->decoder skips (True) or every layer reads the last block.
        norm_pix: per-patch normalised pixel target (MAE's norm_pix_loss).
        loss_first_segment: also score the first segment (it reads its own encoding; off by default).
        decoder_drop_path_rate: stochastic depth in the decoder.
        decoder: `'skip'`, `'plain'` (alias of `skip_connections=False`) or `'two_stream'`. The two-stream
            variant has no decoder blocks (the query stream runs through the encoder's), so `decoder_*` and
            `skip_connections` do not apply to it; `self.decoder` is then a `TwoStreamHead`.
        attn_impl: `'dense'`, `'sparse'` or `'flex'` (see the module docstring); the sorted paths need plain
            timm `Block`s without patch dropout.
        attn_block_size: query block of the sorted paths (default 32 for `'sparse'`, 128 for `'flex'`).
        skip_memory: how the skip decoder mixes encoder levels: `'level_norm'` (default), `'paper'` (the paper's
            `sum_k W[l, k] H_k`, one norm after mixing) or `'paper_last'` (the same, `W` starting on the last
            block); see `decoder.py`. Only with `decoder='skip'`.
    """

    def __init__(
            self,
            encoder: VisionTransformer,
            segments: Union[str, SegmentSpec] = 'blob:11-5',
            decoder_embed_dim: int = 512,
            decoder_depth: int = 4,
            decoder_num_heads: int = 16,
            decoder_mlp_ratio: float = 4.0,
            skip_connections: bool = True,
            norm_pix: bool = False,
            loss_first_segment: bool = False,
            decoder_drop_path_rate: float = 0.0,
            decoder: str = 'skip',
            attn_impl: str = 'dense',
            attn_block_size: Optional[int] = None,
            skip_memory: Optional[str] = None,
    ):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f'decoder={decoder!r} is not one of {", ".join(map(repr, DECODERS))}')
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f'attn_impl={attn_impl!r} is not one of {", ".join(map(repr, ATTN_IMPLS))}')
        if attn_impl != 'dense':
            check_block_encoder(encoder, f'attn_impl={attn_impl!r} (use attn_impl="dense" otherwise)')
        if attn_block_size is not None and attn_block_size < 1:
            raise ValueError(f'attn_block_size must be >= 1 (or None for the default), got {attn_block_size}')
        self.attn_impl = attn_impl
        self.attn_block_size = attn_block_size
        if getattr(encoder, 'num_prefix_tokens', 0):
            raise ValueError('RandSAC needs an encoder without class/register tokens (class_token=False).')
        self.encoder = encoder
        # The pooled-feature norm and head serve downstream use only; freezing them keeps DDP from
        # waiting on parameters the objective never touches.
        for module in (encoder.fc_norm, encoder.head):
            module.requires_grad_(False)
        self.pretrained_cfg = getattr(encoder, 'pretrained_cfg', {})
        self.patch_size: Tuple[int, int] = tuple(encoder.patch_embed.patch_size)
        self.in_chans = encoder.patch_embed.proj.in_channels
        self.grid_size: Tuple[int, int] = tuple(encoder.patch_embed.grid_size)
        self.segments = parse_segments(segments)
        self.segments.validate(self.grid_size)
        self.norm_pix = norm_pix
        self.loss_first_segment = loss_first_segment
        out_dim = self.patch_size[0] * self.patch_size[1] * self.in_chans
        # 'plain' and skip_connections=False are the same network; the resolved name is what gets saved
        self.decoder_kind = 'plain' if decoder == 'plain' or (decoder == 'skip' and not skip_connections) else decoder
        if skip_memory is not None and self.decoder_kind != 'skip':
            raise ValueError(f'skip_memory={skip_memory!r} mixes the skip decoder\'s levels; '
                             f'decoder={self.decoder_kind!r} '
                             f'has no skips (drop skip_memory, or use decoder="skip")')
        if self.decoder_kind == 'two_stream':
            check_two_stream_encoder(encoder)
            self.decoder = TwoStreamHead(encoder.embed_dim, out_dim)
        else:
            self.decoder = RandSACDecoder(
                encoder_dim=encoder.embed_dim,
                encoder_depth=len(encoder.blocks),
                out_dim=out_dim,
                embed_dim=decoder_embed_dim,
                depth=decoder_depth,
                num_heads=decoder_num_heads,
                mlp_ratio=decoder_mlp_ratio,
                skip_connections=self.decoder_kind == 'skip',
                drop_path_rate=decoder_drop_path_rate,
                skip_memory=skip_memory or 'level_norm',
            )
        # queries are position-only: fixed sin-cos at decoder (two-stream: encoder) width, derived, so not saved
        self.register_buffer(
            'decoder_pos_embed', sincos_pos_embed(self.grid_size, self.decoder.embed_dim), persistent=False)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        # skip weights are mixing coefficients, not a projection: decaying them would pull every skip to 0;
        # the two-stream query bias is an embedding, like timm's pos_embed
        names = {'decoder.query_bias'} if self.decoder_kind == 'two_stream' else {'decoder.memory.skip_weights'}
        params = dict(self.named_parameters())
        return {name for name in names if name in params}  # the plain decoder has no skip weights

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # timm's ViT runs masked blocks without checkpointing (it never drops the mask), so with
        # attn_impl='dense' only the decoder checkpoints; the sorted paths run the encoder blocks here and
        # checkpoint them too, with the kernels passed along.
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

    def _queries(self, grid_size: Tuple[int, int], batch_size: int, like: torch.Tensor) -> torch.Tensor:
        pos = self.decoder_pos_embed
        if grid_size != self.grid_size:
            pos = sincos_pos_embed(grid_size, self.decoder.embed_dim, device=like.device)
        return pos.to(like.dtype).expand(batch_size, -1, -1)

    def forward(
            self,
            images: torch.Tensor,
            rank: Optional[torch.Tensor] = None,
            generator: Optional[torch.Generator] = None,
    ) -> RandSACOutput:
        """
        Args:
            images: (B, C, H, W) normalised images.
            rank: optional (B, N) int64 serialization; sampled from `self.segments` when None.
            generator: RNG for sampling `rank` (the global RNG when None).
        """
        grid_size = self.check_images(images)
        B = images.shape[0]
        if rank is None:
            if grid_size != self.grid_size:
                self.segments.validate(grid_size)
            rank = sample_rank(self.segments, B, grid_size, generator=generator, device=images.device)
        elif rank.shape != (B, grid_size[0] * grid_size[1]):
            raise ValueError(f'rank must have shape {(B, grid_size[0] * grid_size[1])}, got {tuple(rank.shape)}')
        if self.attn_impl == 'dense':
            masks = build_masks(rank, include_first_segment=self.loss_first_segment)
            pred, loss_mask = self._forward_dense(images, grid_size, masks), masks.loss
        else:
            pred, loss_mask = self._forward_sorted(images, grid_size, rank), loss_mask_of(rank, self.loss_first_segment)
        target = pixel_target(images, self.patch_size, norm_pix=self.norm_pix)
        loss = masked_mse(pred, target, loss_mask)
        return RandSACOutput(loss=loss, pred=pred, target=target, rank=rank, loss_mask=loss_mask)

    def _forward_dense(self, images: torch.Tensor, grid_size: Tuple[int, int], masks) -> torch.Tensor:
        """Raster order, (B, 1, N, N) masks; the encoder through timm's `forward_intermediates`."""
        B = images.shape[0]
        # the boolean masks as additive biases, once per step: every layer then shares one tensor instead of SDPA
        # converting (and saving for backward) its own copy in each call
        dtype = attention_dtype(self.encoder.patch_embed.proj.weight)
        causal, memory = additive_mask(masks.causal, dtype), additive_mask(masks.memory, dtype)
        if self.decoder_kind == 'two_stream':
            content = content_stream_inputs(self.encoder, images, causal)
            return self.decoder(self._queries(grid_size, B, content[0]), content, self.encoder.blocks, memory)
        _, hidden = self.encoder.forward_intermediates(images, output_fmt='NLC', attn_mask=causal)
        return self.decoder(self._queries(grid_size, B, hidden[-1]), hidden, causal, memory)

    def _forward_sorted(self, images: torch.Tensor, grid_size: Tuple[int, int], rank: torch.Tensor) -> torch.Tensor:
        """Tokens sorted by rank, the last segment cut from the encoder input, block-sparse kernels.

        Same math as `_forward_dense` (tested: loss and gradients): every token of every sample keeps the
        same keys; only key blocks that every query of a block may not read are skipped.
        """
        B = images.shape[0]
        two_stream = self.decoder_kind == 'two_stream'
        # once per step, shared by every layer; the two-stream query stream has no self-attention kernel to build
        plan = sorted_plan(rank, self.attn_impl, self.attn_block_size, decoder_self_attention=not two_stream)
        order = plan.order
        x = order.gather(first_block_input(self.encoder, images), order.keep_tokens)
        # the two-stream query stream reads block inputs, so the last block's output is never needed
        blocks = self.encoder.blocks[:-1] if two_stream else self.encoder.blocks
        hidden = [x] if two_stream else []
        for blk in blocks:
            if self.encoder.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block_forward, blk, x, plan.encoder, use_reentrant=False)
            else:
                x = block_forward(blk, x, plan.encoder)
            hidden.append(x)
        queries = order.gather(self._queries(grid_size, B, x))
        if two_stream:
            pred = self.decoder(queries, hidden, self.encoder.blocks, plan.memory)
        else:
            pred = self.decoder(queries, hidden, plan.decoder, plan.memory)
        return order.scatter(pred)


# encoder name -> the paper's decoder and default segments for that setting (DESIGN.md section 6)
PRETRAIN_ARGS: Dict[str, Dict[str, Any]] = {
    'randsac_vit_micro_patch4_32': dict(  # ours, CPU-sized
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

_WRAPPER_KWARGS = (
    'segments', 'decoder_embed_dim', 'decoder_depth', 'decoder_num_heads', 'decoder_mlp_ratio',
    'skip_connections', 'norm_pix', 'loss_first_segment', 'decoder_drop_path_rate', 'decoder', 'attn_impl',
    'attn_block_size', 'skip_memory',
)


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
        # the registered entrypoints load full pretrained models themselves (encoder_loading.create_pretrained_wrapper)
        raise ValueError(
            f'this factory builds a random-init {what} of {encoder_name}; load a full pretrained one by its tag, '
            f'timm.create_model("<wrapper>.<tag>", pretrained=True) (tags: timm.list_pretrained("*_pretrain_*")), or '
            f'published encoder weights with timm.create_model("{encoder_name}.<tag>", pretrained=True).')
    own = {k: kwargs.pop(k) for k in wrapper_keys if k in kwargs}
    kwargs.setdefault('num_classes', 0)
    # the paper's pretraining init (xavier), the same for every objective; timm's default stays for fine-tuning
    return init_pretraining_encoder(timm.create_model(encoder_name, **kwargs)), own


def create_randsac_pretrain(encoder_name: str, pretrained: bool = False, **kwargs: Any) -> RandSACPretrain:
    """Build the pretraining wrapper for a registered encoder.

    Wrapper kwargs (`segments`, `decoder`, `skip_connections`, `skip_memory`, `norm_pix`, `loss_first_segment`,
    `decoder_*`, `attn_impl`, `attn_block_size`) configure
    the objective; every other kwarg goes to the encoder (`img_size`, `in_chans`, `drop_path_rate`, ...), so
    an unknown one raises `TypeError` there.
    """
    encoder, own = build_wrapper_encoder(encoder_name, pretrained, kwargs, _WRAPPER_KWARGS, 'pretraining wrapper')
    wrapper_args = dict(PRETRAIN_ARGS[encoder_name], **own)
    return RandSACPretrain(encoder, **wrapper_args)


# Full pretraining models shipped in randsac_timm/hub/weights/ (`hub package --full`), declared before their file exists
# so that `pretrained=True` says how to make it: {wrapper: (tag, ...)}
PACKAGED_PRETRAIN_TAGS: Dict[str, Tuple[str, ...]] = {'randsac_pretrain_vit_micro_patch4_32': ('fmnist',)}
default_cfgs = pretrain_default_cfgs(
    {f'randsac_pretrain_{name[len("randsac_"):]}': name for name in PRETRAIN_ARGS}, PACKAGED_PRETRAIN_TAGS)


def _entry(name: str, pretrained: bool, kwargs: Dict[str, Any]) -> RandSACPretrain:
    encoder_name = name.replace('randsac_pretrain_', 'randsac_', 1)
    return create_pretrained_wrapper(
        name, lambda **kw: create_randsac_pretrain(encoder_name, **kw), pretrained, kwargs)


@register_model
def randsac_pretrain_vit_micro_patch4_32(pretrained: bool = False, **kwargs: Any) -> RandSACPretrain:
    return _entry('randsac_pretrain_vit_micro_patch4_32', pretrained, kwargs)


@register_model
def randsac_pretrain_vit_tiny_patch4_32(pretrained: bool = False, **kwargs: Any) -> RandSACPretrain:
    return _entry('randsac_pretrain_vit_tiny_patch4_32', pretrained, kwargs)


@register_model
def randsac_pretrain_vit_small_patch4_32(pretrained: bool = False, **kwargs: Any) -> RandSACPretrain:
    return _entry('randsac_pretrain_vit_small_patch4_32', pretrained, kwargs)


@register_model
def randsac_pretrain_vit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> RandSACPretrain:
    return _entry('randsac_pretrain_vit_small_patch16_224', pretrained, kwargs)


@register_model
def randsac_pretrain_vit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> RandSACPretrain:
    return _entry('randsac_pretrain_vit_base_patch16_224', pretrained, kwargs)


@register_model
def randsac_pretrain_vit_large_patch16_224(pretrained: bool = False, **kwargs: Any) -> RandSACPretrain:
    return _entry('randsac_pretrain_vit_large_patch16_224', pretrained, kwargs)


@register_model
def randsac_pretrain_vit_base(pretrained: bool = False, **kwargs: Any) -> RandSACPretrain:
    return _entry('randsac_pretrain_vit_base', pretrained, kwargs)
