"""How RandSAC attends: dense masks in raster order, or rank-sorted block-sparse kernels.

Every RandSAC attention has the same shape of mask: query i may read key j when key j's segment comes
before query i's (strictly, for the decoder memory) or is the same (for the causal masks). In raster order
that mask is scattered over the whole `N x M` matrix. Sort the tokens by rank and it becomes block
lower-triangular: the keys a query may read are a *prefix* of the key sequence. Two things follow:

- the last segment can leave the encoder input: nothing but the last segment itself attends to it, and the
  decoder memory never reads it (strictly earlier segments only), so in sorted order it is a tail that is
  cut off (`keep_tokens`: as many tokens as the shortest last segment of the batch allows);
- a block of queries only needs the key prefix its last (latest) query may read: `BlockSparseAttention`
  runs SDPA per query block on that prefix and skips the fully masked key blocks after it, and
  `FlexBlockAttention` hands the same structure to FlexAttention as a `BlockMask` (CUDA; compiled there).

An attention "kernel" here is any callable `attend(q, k, v, dropout_p) -> out` on `(B, heads, N, head_dim)`
tensors; `DenseAttention(mask)` is the reference. Every kernel gets its masks built once per step and
shares them across heads and layers.

timm's `Block` only takes a mask tensor, so `block_forward` / `attention_forward` run a timm `Block` /
`Attention` with another kernel (and, for the two-stream variant, with keys from another sequence). They are
the only code in the package that reaches into timm's block internals; `check_block_encoder` makes a timm
change fail loudly instead of silently.
"""
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block

from .masks import additive_mask, causal_rule, causal_segment_mask, memory_mask, memory_rule

__all__ = [
    'ATTN_IMPLS', 'AttendFn', 'DenseAttention', 'BlockSparseAttention', 'FlexBlockAttention', 'SortedSegments',
    'SortedPlan', 'sorted_plan', 'segment_kernel', 'attention_forward', 'block_forward', 'check_block_encoder',
]

# 'dense': raster order, (B, 1, N, N) masks through timm's own forward_intermediates (the reference);
# 'sparse': rank-sorted, last segment dropped, block-sparse SDPA (any device);
# 'flex': rank-sorted, last segment dropped, FlexAttention with a BlockMask (compiled on CUDA)
ATTN_IMPLS = ('dense', 'sparse', 'flex')

AttendFn = Callable[..., torch.Tensor]


class _SharedBiases:
    """A kernel's bool masks as SDPA's additive biases, converted on first use per dtype, then reused.

    A kernel object lives for one step and serves every layer; given a bool mask, SDPA would instead convert it
    and save its own copy for backward in each call.
    """

    def __init__(self):
        self._cache: Dict[Tuple[int, torch.dtype], torch.Tensor] = {}

    def get(self, key: int, mask: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
        if mask is None or mask.dtype != torch.bool:  # no mask, or already a bias
            return mask
        if (key, dtype) not in self._cache:
            self._cache[key, dtype] = additive_mask(mask, dtype)
        return self._cache[key, dtype]


class DenseAttention:
    """The reference kernel: SDPA with a full mask `(B, 1, N, M)`: bool (True = may attend) or an additive bias."""

    def __init__(self, mask: Optional[torch.Tensor]):
        self.mask = mask
        self._biases = _SharedBiases()

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self._biases.get(0, self.mask, q.dtype),
                                              dropout_p=dropout_p)


class BlockSparseAttention:
    """SDPA over rank-sorted tokens that skips the fully masked key blocks.

    Queries are cut into blocks of `block_size`; block c reads only the key prefix that its last query may
    read (the largest over the batch), with the dense mask restricted to that rectangle. A block whose
    rectangle is fully visible runs without a mask (the faster SDPA path). The plan (prefix lengths, mask
    slices) is built once per step and reused by every head and layer.

    Args:
        mask: (B, 1, Nq, Nk) bool mask in sorted order, True = may attend.
        query_rank: (B, Nq) rank of each query, ascending along the sequence.
        key_rank: (B, Nk) rank of each key, ascending along the sequence.
        block_size: queries per block.
    """

    def __init__(self, mask: torch.Tensor, query_rank: torch.Tensor, key_rank: torch.Tensor, block_size: int = 32):
        if block_size < 1:
            raise ValueError(f'attention block_size must be >= 1, got {block_size}')
        Nq, Nk = mask.shape[-2:]
        starts = list(range(0, Nq, block_size))
        last_query = torch.tensor([min(s + block_size, Nq) - 1 for s in starts], device=query_rank.device)
        # keys with rank <= the block's latest query rank form a prefix; the memory mask reads a subset of it.
        # >= 1 so that a first-segment row always keeps its own key.
        bound = torch.searchsorted(key_rank.contiguous(), query_rank[:, last_query].contiguous(), right=True)
        bounds = bound.amax(0).clamp(min=1).tolist()  # host syncs: two per kernel per step
        rects = [mask[:, :, s:s + block_size, :b] for s, b in zip(starts, bounds)]
        full = torch.stack([r.all() for r in rects]).tolist()
        # a fully visible rectangle runs without a mask (SDPA's faster unmasked path)
        self.blocks: List[Tuple[int, int, int, Optional[torch.Tensor]]] = [
            (s, min(s + block_size, Nq), b, None if f else r) for s, b, r, f in zip(starts, bounds, rects, full)]
        self.key_tokens = Nk
        self._biases = _SharedBiases()  # each rectangle's bias, shared by every layer

    def visited_fraction(self) -> float:
        """Share of the dense `Nq x Nk` score matrix this plan computes (1.0 = dense)."""
        Nq = self.blocks[-1][1]
        return sum((e - s) * b for s, e, b, _ in self.blocks) / (Nq * self.key_tokens)

    # the plan changes every step (data-dependent prefix lengths): under torch.compile the kernel runs eagerly
    # between compiled graphs instead of recompiling for each new set of slice sizes
    @torch.compiler.disable
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
        if len(self.blocks) == 1 and self.blocks[0][2] == k.shape[-2]:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self._biases.get(0, self.blocks[0][3], q.dtype),
                                                  dropout_p=dropout_p)
        out = [F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, :b], v[:, :, :b],
                                              attn_mask=self._biases.get(i, m, q.dtype), dropout_p=dropout_p)
               for i, (s, e, b, m) in enumerate(self.blocks)]
        return torch.cat(out, dim=2)


_COMPILED_FLEX: Optional[Callable] = None


def _flex_attention() -> Callable:
    # FlexAttention is only fused (block-sparse) when compiled; eager runs a reference that materialises the
    # scores. Compile once per process, lazily, so importing the package never touches the compiler.
    global _COMPILED_FLEX
    from torch.nn.attention.flex_attention import flex_attention
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX


class FlexBlockAttention:
    """FlexAttention with a `BlockMask` over rank-sorted tokens: fully masked blocks are never visited.

    Compiled on CUDA (the fused kernel), eager elsewhere (PyTorch's unfused reference, used by the CPU tests to
    check the mask and the sorting against the dense path; forward only, PyTorch has no CPU backward for it).
    No attention dropout: FlexAttention has none.

    Args:
        query_rank: (B, Nq) rank of each query, ascending.
        key_rank: (B, Nk) rank of each key, ascending.
        strict: memory rule (`key < query`, the first segment reads itself) instead of causal (`key <= query`).
        block_size: FlexAttention's block size (128 is its default and what its CUDA kernels are tuned for).
        compiled: compile `flex_attention`; default: on CUDA only.
    """

    def __init__(self, query_rank: torch.Tensor, key_rank: torch.Tensor, strict: bool, block_size: int = 128,
                 compiled: Optional[bool] = None):
        from torch.nn.attention.flex_attention import create_block_mask

        rule = memory_rule if strict else causal_rule  # the same rules as the dense masks (masks.py)

        def mask_mod(b, h, q_idx, kv_idx):
            return rule(query_rank[b, q_idx], key_rank[b, kv_idx])

        B, Nq = query_rank.shape
        self.block_mask = create_block_mask(mask_mod, B, None, Nq, key_rank.shape[1],
                                            device=query_rank.device, BLOCK_SIZE=block_size)
        self.compiled = query_rank.is_cuda if compiled is None else compiled

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
        if dropout_p:
            raise ValueError('attn_impl="flex" has no attention dropout; use attn_impl="sparse" or "dense" '
                             f'with attn_drop_rate={dropout_p}')
        if not q.is_cuda and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            raise ValueError('attn_impl="flex" trains on CUDA only: PyTorch has no FlexAttention backward on '
                             f'{q.device.type}. Use attn_impl="sparse" (the same block-sparse layout with SDPA) there.')
        if self.compiled:
            return _flex_attention()(q, k, v, block_mask=self.block_mask)
        from torch.nn.attention.flex_attention import flex_attention
        return flex_attention(q, k, v, block_mask=self.block_mask)


class SortedSegments:
    """Tokens reordered by rank: the layout of the `sparse` and `flex` paths.

    Attributes:
        order: (B, N) raster index of the t-th token in prediction order (stable within a segment).
        rank: (B, N) ranks in that order (ascending).
        keep_tokens: length of the encoder input: N minus the shortest last segment in the batch (those tail
            tokens are last-segment tokens in every sample, and nothing reads their encoding); N when some
            sample has a single segment (its only segment reads itself).
    """

    def __init__(self, rank: torch.Tensor):
        self.rank, self.order = torch.sort(rank, dim=1, stable=True)
        last = self.rank[:, -1:]
        last_size = (self.rank == last).sum(1)
        drop = torch.where((last > 0).all(), last_size.min(), torch.zeros_like(last_size[0]))
        self.keep_tokens = rank.shape[1] - int(drop)  # one host sync per step

    def gather(self, x: torch.Tensor, tokens: Optional[int] = None) -> torch.Tensor:
        """(B, N, D) raster order -> (B, tokens, D) sorted order (first `tokens`, default all)."""
        order = self.order if tokens is None else self.order[:, :tokens]
        return x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

    def scatter(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) sorted order -> raster order."""
        return x.gather(1, self.order.argsort(1).unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def segment_kernel(impl: str, query_rank: torch.Tensor, key_rank: torch.Tensor, strict: bool,
                   block_size: Optional[int] = None) -> AttendFn:
    """The kernel of one RandSAC attention over rank-sorted tokens (`strict` = decoder memory rule)."""
    if impl == 'flex':
        return FlexBlockAttention(query_rank, key_rank, strict, 128 if block_size is None else block_size)
    mask = (memory_mask if strict else causal_segment_mask)(query_rank, key_rank)
    if impl == 'sparse':
        return BlockSparseAttention(mask, query_rank, key_rank, 32 if block_size is None else block_size)
    if impl == 'dense':
        return DenseAttention(mask)
    raise ValueError(f'attn_impl={impl!r} is not one of {", ".join(map(repr, ATTN_IMPLS))}')


class SortedPlan(NamedTuple):
    """Everything one step of a sorted path needs, built once and shared by every head and layer."""

    order: SortedSegments
    encoder: AttendFn  # causal, over the kept tokens
    memory: AttendFn  # decoder queries (all tokens) -> kept encoder tokens, strictly earlier
    decoder: Optional[AttendFn]  # decoder self-attention, causal, over all tokens (None: no decoder self-attention)


@torch.compiler.disable  # data-dependent (host syncs, shapes): built eagerly, outside any compiled graph
def sorted_plan(rank: torch.Tensor, impl: str, block_size: Optional[int] = None,
                decoder_self_attention: bool = True) -> SortedPlan:
    """Sort the step's tokens by `rank: (B, N)`; build the kernels of a sorted path (`'sparse'`, `'flex'`).

    The two-stream query stream never attends to itself: it passes `decoder_self_attention=False` and skips
    building that kernel.
    """
    order = SortedSegments(rank)
    kept = order.rank[:, :order.keep_tokens]
    return SortedPlan(
        order=order,
        encoder=segment_kernel(impl, kept, kept, strict=False, block_size=block_size),
        memory=segment_kernel(impl, order.rank, kept, strict=True, block_size=block_size),
        decoder=segment_kernel(impl, order.rank, order.rank, strict=False, block_size=block_size)
        if decoder_self_attention else None,
    )


# ------------------------------------------------------------------------------ timm blocks with other kernels


def check_block_encoder(encoder: nn.Module, why: str) -> None:
    """Raise `ValueError` unless `encoder` can run through `block_forward` with every token: each block a timm
    `Block` with a plain `Attention` (what the helpers run), and no patch dropout.

    Args:
        encoder: a timm `VisionTransformer`.
        why: the option that needs it and what to use otherwise, for the message.
    """
    for i, blk in enumerate(encoder.blocks):
        if type(blk) is not Block or type(blk.attn) is not Attention:
            raise ValueError(
                f'{why} runs timm Block/Attention internals; block {i} is '
                f'{type(blk).__name__}/{type(getattr(blk, "attn", None)).__name__}.')
    if not isinstance(encoder.patch_drop, nn.Identity):
        raise ValueError(f'{why} needs every token of the encoder: set patch_drop_rate=0.')


def attention_forward(attn: Attention, x: torch.Tensor, attend: Union[AttendFn, torch.Tensor, None],
                      context: Optional[torch.Tensor] = None) -> torch.Tensor:
    """timm `Attention.forward` with another kernel and, optionally, keys/values from another sequence.

    Args:
        attn: a timm `Attention` (its weights are used as they are).
        x: (B, N, D) queries (and keys/values when `context` is None), already normed.
        attend: a kernel, or a bool mask tensor / None for timm's own forward.
        context: (B, M, D) keys/values sequence, already normed (the two-stream query stream reads the content).

    Returns:
        (B, N, D_out) exactly what `Attention.forward` computes for the same mask.
    """
    if context is None and (attend is None or isinstance(attend, torch.Tensor)):
        return attn(x, attn_mask=attend)
    if isinstance(attend, torch.Tensor):
        attend = DenseAttention(attend)
    B, N, _ = x.shape
    hd, nh = attn.head_dim, attn.num_heads
    if context is None:
        q, k, v = attn.qkv(x).reshape(B, N, 3, nh, hd).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        # one fused qkv weight: rows for q (first third) and for k, v (the rest), as Attention reshapes them
        M = context.shape[1]
        w_q, w_kv = attn.qkv.weight.split([attn.attn_dim, 2 * attn.attn_dim])
        b_q, b_kv = attn.qkv.bias.split([attn.attn_dim, 2 * attn.attn_dim]) if attn.qkv.bias is not None \
            else (None, None)
        q = F.linear(x, w_q, b_q).reshape(B, N, nh, hd).transpose(1, 2)
        k, v = F.linear(context, w_kv, b_kv).reshape(B, M, 2, nh, hd).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = attend(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    out = attn.norm(out.transpose(1, 2).reshape(B, N, attn.attn_dim))
    if attn.gate is not None:
        out = out * attn.gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out))


def block_forward(blk: Block, x: torch.Tensor, attend: Union[AttendFn, torch.Tensor, None],
                  context: Optional[torch.Tensor] = None) -> torch.Tensor:
    """timm `Block.forward` (pre-norm attention and MLP, layer scale, drop path) with `attention_forward`.

    With `context` (B, M, D) the attention reads keys/values from `context` (normed by the same `norm1`).
    """
    if context is None and (attend is None or isinstance(attend, torch.Tensor)):
        return blk(x, attn_mask=attend)
    kv = None if context is None else blk.norm1(context)
    x = x + blk.drop_path1(blk.ls1(attention_forward(blk.attn, blk.norm1(x), attend, context=kv)))
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
