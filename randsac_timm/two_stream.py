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
by `first_block_input`, which repeats the four steps timm's `forward_features` runs before its first block
(`patch_embed -> _pos_embed -> patch_drop -> norm_pre`). That costs one extra patch embedding (a single conv)
and keeps the encoder forward itself on the public API; the last block's content output is never read, so
the content stream stops one block early.

Because timm's `Block` only attends a sequence to itself, `two_stream_block` reaches into its parts
(`norm1`, `attn.qkv`, `attn.proj`, `ls1`, `drop_path1`, `norm2`, `mlp`, `ls2`, `drop_path2`). It is the only
place in the package that does, and it checks the block type so a timm change fails loudly, not silently.
"""
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention, LayerNorm, trunc_normal_
from timm.models import VisionTransformer
from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint

__all__ = ['first_block_input', 'content_stream_inputs', 'two_stream_block', 'check_two_stream_encoder',
           'TwoStreamHead']


def first_block_input(encoder: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """The token sequence a timm ViT feeds its first block, as its `forward_features` builds it.

    Args:
        encoder: a timm `VisionTransformer` without prefix tokens.
        images: (B, C, H, W).

    Returns:
        (B, N, D) raster-ordered patch embeddings plus position embedding (`_pos_embed` recomputes the
        sin-cos table for a new grid with `dynamic_img_size`).
    """
    x = encoder._pos_embed(encoder.patch_embed(images))
    return encoder.norm_pre(encoder.patch_drop(x))


def content_stream_inputs(
        encoder: VisionTransformer,
        images: torch.Tensor,
        attn_mask: torch.Tensor,
) -> List[torch.Tensor]:
    """Input of every encoder block in the causally masked content stream.

    Args:
        encoder: a timm `VisionTransformer` without prefix tokens.
        images: (B, C, H, W).
        attn_mask: (B, 1, N, N) bool source mask, True = may attend.

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
    for i, blk in enumerate(encoder.blocks):
        if type(blk) is not Block or type(blk.attn) is not Attention:
            raise ValueError(
                f'the two-stream decoder runs timm Block/Attention internals; encoder block {i} is '
                f'{type(blk).__name__}/{type(getattr(blk, "attn", None)).__name__}. Use decoder="skip".')
    if not isinstance(encoder.patch_drop, nn.Identity):
        raise ValueError('the two-stream decoder needs every token in the content stream: set patch_drop_rate=0.')


def two_stream_block(blk: Block, query: torch.Tensor, content: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One query-stream step through a timm `Block`: queries from `query`, keys/values from `content`.

    Exactly `Block.forward` (pre-norm attention and MLP, layer scale, drop path) except that attention reads
    another sequence; the query stream never attends to itself (it carries no content, as in XLNet).

    Args:
        blk: the encoder block (weights shared with the content stream).
        query: (B, N, D) query stream entering the block.
        content: (B, M, D) content stream entering the same block.
        mask: (B, 1, N, M) bool memory mask, True = may attend.

    Returns:
        (B, N, D) query stream leaving the block.
    """
    attn = blk.attn
    B, N, _ = query.shape
    M = content.shape[1]
    hd, nh = attn.head_dim, attn.num_heads
    q_in, kv_in = blk.norm1(query), blk.norm1(content)
    # one fused qkv weight: slice rows for q (first third) and k, v (the rest), as Attention reshapes them
    w_q, w_kv = attn.qkv.weight.split([attn.attn_dim, 2 * attn.attn_dim])
    b_q, b_kv = attn.qkv.bias.split([attn.attn_dim, 2 * attn.attn_dim]) if attn.qkv.bias is not None else (None, None)
    q = F.linear(q_in, w_q, b_q).reshape(B, N, nh, hd).transpose(1, 2)  # (B, h, N, hd)
    k, v = F.linear(kv_in, w_kv, b_kv).reshape(B, M, 2, nh, hd).permute(2, 0, 3, 1, 4)  # (B, h, M, hd) each
    q, k = attn.q_norm(q), attn.k_norm(k)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=attn.attn_drop.p if attn.training else 0.)
    x = attn.norm(x.transpose(1, 2).reshape(B, N, attn.attn_dim))
    if attn.gate is not None:
        x = x * attn.gate(q_in).sigmoid()
    x = attn.proj_drop(attn.proj(x))
    query = query + blk.drop_path1(blk.ls1(x))
    return query + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(query))))


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
            memory_mask: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            queries: (B, N, D) fixed sin-cos position embeddings of every token.
            content: L_enc x (B, N, D) content-stream input of each block (`content_stream_inputs`).
            blocks: the encoder's blocks (not registered here, so the state dict holds them once).
            memory_mask: (B, 1, N, N) bool, True = may attend (`rank[j] < rank[i]`, first segment reads itself).

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
