"""Two-stream RandSAC (paper Table 8, XLNet-style): a query stream that shares the encoder's weights.

Paper: `Self-supervision through Random Segments with Autoregressive Coding (RandSAC)`
    - https://arxiv.org/abs/2203.12054 (Table 8; DESIGN.md section 4)

Two streams run through the SAME encoder blocks:

- content stream `h`: the encoder with the causal source mask (`rank[j] <= rank[i]`), read through timm's public
  `forward_intermediates(x, attn_mask=...)`, exactly as the skip decoder reads it;
- query stream `g`: starts from position-only queries (fixed sin-cos at encoder width plus one learnable
  query bias) and, at layer l, attends with the memory mask (`rank[j] < rank[i]`; the first segment reads
  itself) to the content stream's input of layer l, `h_l`. The prediction head reads the final `g`.

Block l's content input is block l-1's output (from `forward_intermediates`); block 0's input is recomputed
by `first_block_input` (`pretrain_wrapper.py`), which repeats the four steps timm's `forward_features` runs
before its first block (`patch_embed -> _pos_embed -> patch_drop -> norm_pre`). That costs one extra patch
embedding (a single conv) and keeps the encoder forward itself on the public API; the last block's content
output is never read, so the content stream stops one block early.

Because timm's `Block` only attends a sequence to itself, `two_stream_block` runs it through
`attention.block_forward`, the one place in the package that reaches into timm's block internals (and checks
the block type, so a timm change fails loudly, not silently).
"""
from typing import List, Union

import torch
import torch.nn as nn
from timm.layers import LayerNorm, trunc_normal_
from timm.models import VisionTransformer
from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint

from .attention import AttendFn, block_forward, check_block_encoder
from .pretrain_wrapper import first_block_input

__all__ = ['content_stream_inputs', 'two_stream_block', 'check_two_stream_encoder', 'TwoStreamHead']


def content_stream_inputs(
        encoder: VisionTransformer,
        images: torch.Tensor,
        attn_mask: torch.Tensor,
) -> List[torch.Tensor]:
    """Input of every encoder block in the causally masked content stream.

    Args:
        encoder: a timm `VisionTransformer` without prefix tokens.
        images: (B, C, H, W).
        attn_mask: (B, 1, N, N) source mask, bool (True = may attend) or its additive bias.

    Returns:
        L_enc x (B, N, D): `[h_0, ..., h_{L-1}]`, `h_l` the input of block l.
    """
    depth = len(encoder.blocks)
    h0 = first_block_input(encoder, images)
    if depth == 1:
        return [h0]
    # the last block's output is never read by the query stream: stop one block early
    _, hidden = encoder.forward_intermediates(
        images, indices=list(range(depth - 1)), output_fmt='NLC', attn_mask=attn_mask, stop_early=True)
    return [h0] + list(hidden)


def check_two_stream_encoder(encoder: VisionTransformer) -> None:
    """Raise `ValueError` unless every block is a timm `Block` with a plain `Attention` and no token is dropped."""
    check_block_encoder(encoder, 'the two-stream decoder (use decoder="skip" otherwise)')


def two_stream_block(blk: Block, query: torch.Tensor, content: torch.Tensor,
                     attend: Union[AttendFn, torch.Tensor]) -> torch.Tensor:
    """One query-stream step through a timm `Block`: queries from `query`, keys/values from `content`.

    Exactly `Block.forward` (pre-norm attention and MLP, layer scale, drop path) except that attention reads
    another sequence; the query stream never attends to itself (it carries no content, as in XLNet).

    Args:
        blk: the encoder block (weights shared with the content stream).
        query: (B, N, D) query stream entering the block.
        content: (B, M, D) content stream entering the same block.
        attend: (B, 1, N, M) bool memory mask (True = may attend) or a rank-sorted kernel (`attention.py`).

    Returns:
        (B, N, D) query stream leaving the block.
    """
    return block_forward(blk, query, attend, context=content)


class TwoStreamHead(nn.Module):
    """The two-stream variant's only own weights: a learnable query bias, a final norm and the pixel head.

    Args:
        embed_dim: encoder width (the query stream runs through the encoder blocks).
        out_dim: pixels per token, `P * P * C`.
    """

    def __init__(self, embed_dim: int, out_dim: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.query_bias = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.norm = LayerNorm(embed_dim)
        self.pred = nn.Linear(embed_dim, out_dim)
        self.grad_checkpointing = False
        trunc_normal_(self.query_bias, std=0.02)
        nn.init.xavier_uniform_(self.pred.weight)
        nn.init.zeros_(self.pred.bias)

    def forward(
            self,
            queries: torch.Tensor,
            content: List[torch.Tensor],
            blocks: nn.Sequential,
            memory_mask: Union[AttendFn, torch.Tensor],
    ) -> torch.Tensor:
        """
        Args:
            queries: (B, N, D) fixed sin-cos position embeddings of every token.
            content: L_enc x (B, M, D) content-stream input of each block (`content_stream_inputs`).
            blocks: the encoder's blocks (not registered here, so the state dict holds them once).
            memory_mask: (B, 1, N, M) bool, True = may attend (`rank[j] < rank[i]`, first segment reads itself),
                or the same rule as a rank-sorted kernel (`attention.py`).

        Returns:
            (B, N, out_dim) predicted pixels of every token.
        """
        g = queries + self.query_bias.to(queries.dtype)
        for blk, h in zip(blocks, content):
            if self.grad_checkpointing and torch.is_grad_enabled():
                g = checkpoint(two_stream_block, blk, g, h, memory_mask, use_reentrant=False)
            else:
                g = two_stream_block(blk, g, h, memory_mask)
        return self.pred(self.norm(g))
