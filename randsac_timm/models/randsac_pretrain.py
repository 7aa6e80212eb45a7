"""RandSAC pretraining wrappers: a timm encoder, random hierarchical segments, a masked decoder.

Paper: `Self-supervision through Random Segments with Autoregressive Coding (RandSAC)`
    - https://arxiv.org/abs/2203.12054

`forward(images)` = sample a serialization `rank` -> one forward path (below): build the masks or kernels once,
run the encoder, decode position queries against the memory of earlier segments -> masked MSE on the pixels
of the scored tokens. What every pretraining wrapper shares (the encoder's set-up, its first block's input,
the input checks, the output type, `PRETRAIN_ARGS`) lives in `pretrain_wrapper.py`.

`attn_impl=` picks the path (kernels in `attention.py`), all giving the same loss and gradients:
`_forward_dense` for `'dense'` (the default: raster order, full masks, the encoder through timm's public
`forward_intermediates`), `_forward_sorted` for `'sparse'` (tokens sorted by rank, the last segment dropped
from the encoder, block-sparse SDPA that skips fully masked key blocks) and `'flex'` (the same layout with
FlexAttention, compiled on CUDA). The sorted path runs the encoder's blocks itself, from
`first_block_input`, because it feeds them a permuted, shortened token sequence.

`decoder=` picks the network (paper Table 8): `'skip'` (default, trainable skips), `'plain'` (every decoder
layer reads the last block, same as `skip_connections=False`), or `'two_stream'` (XLNet-style query stream
through the shared encoder blocks, see `two_stream.py`).

Registered as `randsac_pretrain_<encoder>` (e.g. `randsac_pretrain_vit_tiny_patch4_32`), each with the
paper's decoder for that setting (DESIGN.md section 6).
"""
from typing import Any, Dict, List, Optional, Set, Tuple, Union

import torch
from timm.models import VisionTransformer, register_model

from ..hub.loading import create_pretrained_wrapper, pretrain_default_cfgs
from .attention import ATTN_IMPLS, AttendFn, check_block_encoder, sorted_plan
from .decoder import RandSACDecoder
from .losses import masked_mse, pixel_target
from .masks import additive_mask, attention_dtype, causal_segment_mask, memory_mask
from .masks import loss_mask as loss_mask_of
from .pretrain_wrapper import (
    PRETRAIN_ARGS,
    PretrainWrapper,
    RandSACOutput,
    build_wrapper_encoder,
    first_block_input,
    run_block,
)
from .segments import SegmentSpec, parse_segments, sample_rank
from .two_stream import TwoStreamHead, check_two_stream_encoder, content_stream_inputs

# RandSACOutput and PRETRAIN_ARGS live in pretrain_wrapper.py (every wrapper shares them) and are re-exported here,
# where the package's top level and the hub import them
__all__ = ['RandSACOutput', 'RandSACPretrain', 'create_randsac_pretrain', 'PRETRAIN_ARGS', 'DECODERS']

DECODERS = ('skip', 'plain', 'two_stream')


class RandSACPretrain(PretrainWrapper):
    """RandSAC objective around any timm `VisionTransformer` without prefix tokens.

    Args:
        encoder: the encoder; the dense path reaches it only through `forward_intermediates(..., attn_mask=...)`.
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
        if decoder not in DECODERS:
            raise ValueError(f'decoder={decoder!r} is not one of {", ".join(map(repr, DECODERS))}')
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f'attn_impl={attn_impl!r} is not one of {", ".join(map(repr, ATTN_IMPLS))}')
        if attn_impl != 'dense':
            check_block_encoder(encoder, f'attn_impl={attn_impl!r} (use attn_impl="dense" otherwise)')
        if attn_block_size is not None and attn_block_size < 1:
            raise ValueError(f'attn_block_size must be >= 1 (or None for the default), got {attn_block_size}')
        super().__init__(encoder, 'RandSAC')
        self.attn_impl = attn_impl
        self.attn_block_size = attn_block_size
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
        # queries are position-only: fixed sin-cos at decoder (two-stream: encoder) width
        self.register_decoder_positions()

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        # skip weights are mixing coefficients, not a projection: decaying them would pull every skip to 0;
        # the two-stream query bias is an embedding, like timm's pos_embed
        names = {'decoder.query_bias'} if self.decoder_kind == 'two_stream' else {'decoder.memory.skip_weights'}
        params = dict(self.named_parameters())
        return {name for name in names if name in params}  # the plain decoder has no skip weights

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
        rank = self._serialization(images.shape[0], grid_size, rank, generator, images.device)
        forward_path = self._forward_dense if self.attn_impl == 'dense' else self._forward_sorted
        pred = forward_path(images, grid_size, rank)
        loss_mask = loss_mask_of(rank, self.loss_first_segment)
        target = pixel_target(images, self.patch_size, norm_pix=self.norm_pix)
        loss = masked_mse(pred, target, loss_mask)
        return RandSACOutput(loss=loss, pred=pred, target=target, rank=rank, loss_mask=loss_mask)

    def _serialization(
            self,
            batch_size: int,
            grid_size: Tuple[int, int],
            rank: Optional[torch.Tensor],
            generator: Optional[torch.Generator],
            device: torch.device,
    ) -> torch.Tensor:
        """The step's `rank: (B, N)`: sampled from `self.segments`, or the given one checked."""
        if rank is None:
            if grid_size != self.grid_size:
                self.segments.validate(grid_size)
            return sample_rank(self.segments, batch_size, grid_size, generator=generator, device=device)
        if rank.shape != (batch_size, grid_size[0] * grid_size[1]):
            raise ValueError(
                f'rank must have shape {(batch_size, grid_size[0] * grid_size[1])}, got {tuple(rank.shape)}')
        return rank

    def _forward_dense(self, images: torch.Tensor, grid_size: Tuple[int, int], rank: torch.Tensor) -> torch.Tensor:
        """Raster order, (B, 1, N, N) masks; the encoder through timm's `forward_intermediates`."""
        # the boolean masks as additive biases, once per step: every layer then shares one tensor instead of SDPA
        # converting (and saving for backward) its own copy in each call
        dtype = attention_dtype(self.encoder.patch_embed.proj.weight)
        causal = additive_mask(causal_segment_mask(rank), dtype)
        memory = additive_mask(memory_mask(rank), dtype)
        if self.decoder_kind == 'two_stream':
            hidden = content_stream_inputs(self.encoder, images, causal)  # each block's input
        else:
            _, hidden = self.encoder.forward_intermediates(images, output_fmt='NLC', attn_mask=causal)
        queries = self._queries(grid_size, images.shape[0], hidden[-1])
        return self._decode(queries, hidden, causal, memory)

    def _forward_sorted(self, images: torch.Tensor, grid_size: Tuple[int, int], rank: torch.Tensor) -> torch.Tensor:
        """Tokens sorted by rank, the last segment cut from the encoder input, block-sparse kernels.

        Same math as `_forward_dense` (tested: loss and gradients): every token of every sample keeps the
        same keys; only key blocks that every query of a block may not read are skipped.
        """
        # once per step, shared by every layer; the two-stream query stream has no self-attention kernel to build
        plan = sorted_plan(rank, self.attn_impl, self.attn_block_size,
                           decoder_self_attention=self.decoder_kind != 'two_stream')
        x = plan.order.gather(first_block_input(self.encoder, images), plan.order.keep_tokens)
        hidden = self._encode_sorted(x, plan.encoder)
        queries = plan.order.gather(self._queries(grid_size, images.shape[0], hidden[-1]))
        return plan.order.scatter(self._decode(queries, hidden, plan.decoder, plan.memory))

    def _encode_sorted(self, x: torch.Tensor, attend: AttendFn) -> List[torch.Tensor]:
        """The encoder blocks on rank-sorted tokens `x: (B, M, D)`: each block's output, or for the two-stream
        query stream, which reads block inputs, each block's input (so the last block never runs)."""
        two_stream = self.decoder_kind == 'two_stream'
        hidden = [x] if two_stream else []
        for blk in self.encoder.blocks[:-1] if two_stream else self.encoder.blocks:
            x = run_block(blk, x, self.encoder.grad_checkpointing, attend)
            hidden.append(x)
        return hidden

    def _queries(self, grid_size: Tuple[int, int], batch_size: int, like: torch.Tensor) -> torch.Tensor:
        """(B, N, D_dec) position-only decoder queries in raster order, in `like`'s dtype."""
        return self.decoder_positions(grid_size, like.device).to(like.dtype).expand(batch_size, -1, -1)

    def _decode(
            self,
            queries: torch.Tensor,
            hidden: List[torch.Tensor],
            self_attend: Union[AttendFn, torch.Tensor, None],
            memory: Union[AttendFn, torch.Tensor],
    ) -> torch.Tensor:
        """Predicted pixels `(B, N, P*P*C)` of `queries`, reading `hidden` through `memory`.

        The two-stream query stream has no self-attention: it runs through the encoder's own blocks instead.
        """
        if self.decoder_kind == 'two_stream':
            return self.decoder(queries, hidden, self.encoder.blocks, memory)
        return self.decoder(queries, hidden, self_attend, memory)


_WRAPPER_KWARGS = (
    'segments', 'decoder_embed_dim', 'decoder_depth', 'decoder_num_heads', 'decoder_mlp_ratio',
    'skip_connections', 'norm_pix', 'loss_first_segment', 'decoder_drop_path_rate', 'decoder', 'attn_impl',
    'attn_block_size', 'skip_memory',
)


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
PACKAGED_PRETRAIN_TAGS: Dict[str, Tuple[str, ...]] = {'randsac_pretrain_vit_micro_patch4_32': ('fmnist',),
                                                      'randsac_pretrain_vit_micro_patch4_28': ('fmnist', 'fmnist_x2')}
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
def randsac_pretrain_vit_micro_patch4_28(pretrained: bool = False, **kwargs: Any) -> RandSACPretrain:
    return _entry('randsac_pretrain_vit_micro_patch4_28', pretrained, kwargs)


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
