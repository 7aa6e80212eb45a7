"""RandSAC decoder: masked self-attention, masked cross-attention to encoder memory, trainable skips.

The decoder's queries carry no content: each is the fixed sin-cos position embedding of a target token.
Query i may read (a) other queries of its own and earlier segments (`causal` mask) and (b) encoder
outputs of strictly earlier segments (`memory` mask), so a segment is predicted from what came before.

Trainable skip connections (paper section 4): decoder layer l reads a memory mixed from all encoder block
outputs `H_k` with a trainable `W: (L_dec, L_enc)`. Three forms (`skip_memory=`), all with one shared Linear
from encoder to decoder width:
- `'level_norm'`: `Z_l = proj(sum_k W[l, k] * LN_k(H_k))`, each level normalised on its own before mixing,
  `W` uniform `1 / L_enc`. Our first design; it gives every level the same share whatever its scale, so
  shallow blocks, whose outputs are smaller than the last block's in a trained encoder, count for more than
  in the paper's sum.
- `'paper'`: the paper's `Z_l = sum_k W[l, k] * H_k`, then one LayerNorm and the projection
  (`proj(LN(sum_k W[l, k] H_k))`), `W` uniform `1 / L_enc`.
- `'paper_last'`: the paper's form with `W` starting on the last block (`W[l, L_enc] = 1`, else 0), so training
  starts from the plain masked transformer and moves memory to earlier blocks only where that helps.
In all three every entry of `W` gets a gradient from step 0 (`dL/dW[l, k]` is a product with `H_k`). With skips off
every layer reads `proj(LN(H_last))` (the plain masked transformer).
Default: `'level_norm'`, kept because the measurement does not yet separate them. On the Fashion-MNIST grid
(`benchmarks/ablation_grid.py`, 312 steps, `benchmarks/results/ablation_fair/`), the converged readout of the last
block at seeds 0 / 1 is 78.62 / 77.89 (`level_norm`), 78.59 / 77.98 (`paper`) and 78.82 / 78.05 (`paper_last`):
within 0.2 points at each seed, less than the 0.7-point spread between seeds, and the plain decoder (78.79 / 78.06)
is as close, because at this budget the encoder barely leaves its initialisation. At a real budget (the recipe grid,
`ablation_grid.py --recipes`: 4.55 epochs of 60k, `paper_last`, 2 seeds) skips and plain still read out the same
(converged +0.0: -0.1 and +0.1), and `W` stays near its start: the last block keeps 66-71 % of the first decoder
layer's weight and 87-95 % of the second's (`benchmarks/skip_weights.py`, `results/skip_weights_recipe.json`).
So no form has been shown to beat the plain decoder here, and the default stays the form every earlier result used.
"""
from typing import List, Union

import torch
import torch.nn as nn
from timm.layers import Attention, DropPath, LayerNorm, Mlp
from torch.utils.checkpoint import checkpoint

from .attention import AttendFn, DenseAttention, attention_forward
from .initialization import init_linear_and_norm

__all__ = ['CrossAttention', 'DecoderBlock', 'SKIP_MEMORIES', 'SkipMemory', 'RandSACDecoder']


class CrossAttention(nn.Module):
    """Multi-head attention from queries `x: (B, N, D)` to `memory: (B, M, D)` with a boolean mask."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'decoder width {dim} is not divisible by its {num_heads} heads')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, attn_mask: Union[AttendFn, torch.Tensor, None] = None,
                ) -> torch.Tensor:
        """`attn_mask`: (B, 1, N, M) bool (True = may attend), None, or a rank-sorted kernel (`attention.py`)."""
        B, N, D = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, N, hd)
        k, v = self.kv(memory).reshape(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, h, M, hd)
        attend = attn_mask if callable(attn_mask) else DenseAttention(attn_mask)
        x = attend(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class DecoderBlock(nn.Module):
    """Pre-norm block: masked self-attention -> masked cross-attention -> MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm3 = LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
            self,
            x: torch.Tensor,
            memory: torch.Tensor,
            self_mask: Union[AttendFn, torch.Tensor, None],
            memory_mask: Union[AttendFn, torch.Tensor, None],
    ) -> torch.Tensor:
        x = x + self.drop_path(attention_forward(self.self_attn, self.norm1(x), self_mask))
        x = x + self.drop_path(self.cross_attn(self.norm2(x), memory, attn_mask=memory_mask))
        return x + self.drop_path(self.mlp(self.norm3(x)))


SKIP_MEMORIES = ('level_norm', 'paper', 'paper_last')


class SkipMemory(nn.Module):
    """Builds the memory each decoder layer reads from the encoder's block outputs (module docstring: the forms).

    Args:
        encoder_dim: encoder width.
        encoder_depth: encoder blocks `L_enc`.
        decoder_dim: decoder width.
        decoder_depth: decoder blocks `L_dec`.
        skip_connections: mix every level with trainable `W` (True) or read the last block only.
        skip_memory: `'level_norm'`, `'paper'` or `'paper_last'` (with `skip_connections=True` only).
    """

    def __init__(self, encoder_dim: int, encoder_depth: int, decoder_dim: int, decoder_depth: int,
                 skip_connections: bool = True, skip_memory: str = 'level_norm'):
        super().__init__()
        if skip_memory not in SKIP_MEMORIES:
            raise ValueError(f'skip_memory={skip_memory!r} is not one of {", ".join(map(repr, SKIP_MEMORIES))}')
        self.skip_connections = skip_connections
        self.skip_memory = skip_memory if skip_connections else None
        self.decoder_depth = decoder_depth
        # one norm per level before mixing ('level_norm'), else one norm (after mixing / on the last block)
        num_norms = encoder_depth if skip_memory == 'level_norm' and skip_connections else 1
        self.norms = nn.ModuleList([LayerNorm(encoder_dim) for _ in range(num_norms)])
        self.skip_weights = None
        if skip_connections:
            if skip_memory == 'paper_last':
                weights = torch.zeros(decoder_depth, encoder_depth)
                weights[:, -1] = 1.0
            else:
                weights = torch.full((decoder_depth, encoder_depth), 1.0 / encoder_depth)
            self.skip_weights = nn.Parameter(weights)
        self.proj = nn.Linear(encoder_dim, decoder_dim)

    def forward(self, hidden: List[torch.Tensor]) -> List[torch.Tensor]:
        """Map encoder block outputs `hidden: L_enc x (B, N, D_enc)` to `L_dec x (B, N, D_dec)` memories."""
        if self.skip_weights is None:
            memory = self.proj(self.norms[0](hidden[-1]))
            return [memory] * self.decoder_depth
        if self.skip_memory == 'level_norm':
            levels = torch.stack([norm(h) for norm, h in zip(self.norms, hidden)])  # (L_enc, B, N, D_enc)
        else:
            levels = torch.stack(hidden)
        mixed = torch.einsum('lk,kbnd->lbnd', self.skip_weights.to(levels.dtype), levels)  # (L_dec, B, N, D_enc)
        if self.skip_memory != 'level_norm':
            mixed = self.norms[0](mixed)
        return list(self.proj(mixed).unbind(0))


class RandSACDecoder(nn.Module):
    """Decoder stack: position queries -> `depth` DecoderBlocks -> norm -> per-token pixel prediction."""

    def __init__(
            self,
            encoder_dim: int,
            encoder_depth: int,
            out_dim: int,
            embed_dim: int = 512,
            depth: int = 4,
            num_heads: int = 16,
            mlp_ratio: float = 4.0,
            skip_connections: bool = True,
            drop_path_rate: float = 0.0,
            skip_memory: str = 'level_norm',
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.memory = SkipMemory(encoder_dim, encoder_depth, embed_dim, depth, skip_connections, skip_memory)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList([DecoderBlock(embed_dim, num_heads, mlp_ratio, dpr[i]) for i in range(depth)])
        self.norm = LayerNorm(embed_dim)
        self.pred = nn.Linear(embed_dim, out_dim)
        self.grad_checkpointing = False
        self.apply(init_linear_and_norm)

    def forward(
            self,
            queries: torch.Tensor,
            hidden: List[torch.Tensor],
            self_mask: Union[AttendFn, torch.Tensor],
            memory_mask: Union[AttendFn, torch.Tensor],
    ) -> torch.Tensor:
        """
        Args:
            queries: (B, N, D_dec) position-only query tokens.
            hidden: encoder block outputs, L_enc x (B, M, D_enc) (M < N when the last segment was dropped).
            self_mask: (B, 1, N, N) bool, True = may attend, or a rank-sorted kernel (`attention.py`).
            memory_mask: (B, 1, N, M) bool, True = may attend, or a rank-sorted kernel.

        Returns:
            (B, N, out_dim) predictions.
        """
        x = queries
        for blk, memory in zip(self.blocks, self.memory(hidden)):
            if self.grad_checkpointing and torch.is_grad_enabled():
                # unlike timm's ViT with a mask, checkpointing stays on here and the masks go with it
                x = checkpoint(blk, x, memory, self_mask, memory_mask, use_reentrant=False)
            else:
                x = blk(x, memory, self_mask, memory_mask)
        return self.pred(self.norm(x))
