"""Attention and loss masks of RandSAC, built from a serialization `rank`.

Tokens stay in raster order; the prediction order lives in `rank: (B, N) int64` (see `segments.py`).
Every mask here uses the polarity of PyTorch's fused attention: `True = may attend`. Masks are built
once per step as `(B, 1, N, N)` and broadcast over heads and shared by every layer.

Invariants (tested): no attention row is ever fully masked, and no query can read a token of its own
segment or of a later one through the memory, except the first segment, which has nothing before it
and therefore reads its own encoding (and is left out of the loss by default).
"""
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ['SegmentMasks', 'build_masks', 'causal_segment_mask', 'memory_mask', 'loss_mask', 'causal_rule',
           'memory_rule', 'additive_mask', 'attention_dtype']


def causal_rule(query_rank: torch.Tensor, key_rank: torch.Tensor) -> torch.Tensor:
    """Elementwise (broadcasting) causal rule: a key of the query's own or an earlier segment."""
    return key_rank <= query_rank


def memory_rule(query_rank: torch.Tensor, key_rank: torch.Tensor) -> torch.Tensor:
    """Elementwise (broadcasting) memory rule: a strictly earlier key; the first segment reads itself."""
    return (key_rank < query_rank) | ((query_rank == 0) & (key_rank == 0))


def causal_segment_mask(rank: torch.Tensor, key_rank: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Encoder source mask and decoder self-attention mask.

    Args:
        rank: (B, N) int64 segment order of each query token.
        key_rank: (B, M) segment order of each key token; `rank` when None (keys == queries). The rank-sorted
            attention paths pass a truncated key sequence here (see `attention.py`).

    Returns:
        (B, 1, N, M) bool, True where query i may attend key j, i.e. `key_rank[j] <= rank[i]`
        (its own segment and every earlier one). With keys == queries the diagonal is always True.
    """
    key_rank = rank if key_rank is None else key_rank
    return causal_rule(rank.unsqueeze(2), key_rank.unsqueeze(1)).unsqueeze(1)


def memory_mask(rank: torch.Tensor, key_rank: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Decoder cross-attention mask (query i -> encoder output j).

    Args:
        rank: (B, N) int64 segment order of each query token.
        key_rank: (B, M) segment order of each encoder output; `rank` when None.

    Returns:
        (B, 1, N, M) bool, True where `key_rank[j] < rank[i]` (strictly earlier segments only). The first
        segment (`rank == 0`) has nothing before it, so its queries attend to its own encoding; without
        this their rows would be fully masked and fused attention returns NaN rows on some backends.
    """
    key_rank = rank if key_rank is None else key_rank
    return memory_rule(rank.unsqueeze(2), key_rank.unsqueeze(1)).unsqueeze(1)


def loss_mask(rank: torch.Tensor, include_first_segment: bool = False) -> torch.Tensor:
    """Tokens whose prediction enters the loss.

    Args:
        rank: (B, N) int64 segment order of each token.
        include_first_segment: Also score the first segment. Off by default because its queries read
            their own encoding through the memory mask (see `memory_mask`); on reproduces the paper literally.

    Returns:
        (B, N) bool, True = scored.
    """
    if include_first_segment:
        return torch.ones_like(rank, dtype=torch.bool)
    return rank > 0


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The boolean mask as SDPA's additive bias: 0 where True (may attend), -inf where False, in `dtype`.

    Given a boolean mask, PyTorch's SDPA builds exactly this tensor inside every call and keeps it for the
    backward pass: one (B, 1, N, M) float tensor per layer and step. Converted once per step and passed to every
    layer, the layers share one tensor (same kernels, same results; at 16x16 on CPU this saved ~0.2 GB a step).
    `dtype` must be the dtype attention runs in (`attention_dtype`): SDPA takes a float mask only in the query's.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f'additive_mask converts a bool mask, got {mask.dtype}')
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float('-inf'))


def attention_dtype(param: torch.Tensor) -> torch.dtype:
    """The dtype queries have inside attention: autocast's when it is on for `param`'s device, else `param`'s."""
    device_type = param.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return param.dtype


@dataclass
class SegmentMasks:
    """The masks of one step, built once and shared across heads and layers.

    Attributes:
        causal: (B, 1, N, N) bool, encoder source mask == decoder self mask, True = may attend.
        memory: (B, 1, N, N) bool, decoder -> encoder memory mask, True = may attend.
        loss: (B, N) bool, True = token is scored.
    """

    causal: torch.Tensor
    memory: torch.Tensor
    loss: torch.Tensor


def build_masks(rank: torch.Tensor, include_first_segment: bool = False) -> SegmentMasks:
    """Build every mask of a RandSAC step from `rank: (B, N) int64`."""
    if rank.dim() != 2:
        raise ValueError(f'rank must be (B, N), got shape {tuple(rank.shape)}')
    return SegmentMasks(
        causal=causal_segment_mask(rank),
        memory=memory_mask(rank),
        loss=loss_mask(rank, include_first_segment),
    )
