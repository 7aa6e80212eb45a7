import pytest
import timm
import torch
import torch.nn.functional as F

from randsac_timm.models.masks import additive_mask, build_masks, causal_segment_mask, loss_mask, memory_mask
from randsac_timm.models.segments import sample_rank

STRATEGIES = ['raster', 'random', 'square:16', 'square:16-4', 'blob:7', 'blob:11-5', 'blob:11-7-3', 'shuffle:7']


def _ranks(spec: str, batch_size: int = 16, grid=(8, 8)) -> torch.Tensor:
    return sample_rank(spec, batch_size, grid, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize('spec', STRATEGIES)
def test_no_attention_row_is_fully_masked(spec):
    masks = build_masks(_ranks(spec))
    assert masks.causal.shape == (16, 1, 64, 64) and masks.causal.dtype == torch.bool
    assert masks.causal.any(dim=-1).all()
    assert masks.memory.any(dim=-1).all()


@pytest.mark.parametrize('spec', STRATEGIES)
def test_causal_mask_allows_exactly_own_and_earlier_segments(spec):
    rank = _ranks(spec)
    mask = causal_segment_mask(rank)[:, 0]
    for b in range(rank.shape[0]):
        expected = rank[b][None, :] <= rank[b][:, None]
        assert torch.equal(mask[b], expected)
        assert mask[b].diagonal().all()


@pytest.mark.parametrize('spec', STRATEGIES)
def test_memory_mask_never_sees_own_segment(spec):
    rank = _ranks(spec)
    mask = memory_mask(rank)[:, 0]
    same_or_later = rank[:, None, :] >= rank[:, :, None]  # key j not strictly earlier than query i
    first_to_first = (rank[:, :, None] == 0) & (rank[:, None, :] == 0)
    assert not (mask & same_or_later & ~first_to_first).any()
    # and it sees every strictly earlier token
    assert (mask | ~(rank[:, None, :] < rank[:, :, None])).all()
    # the first segment reads exactly its own encoding
    assert torch.equal(mask & (rank[:, :, None] == 0), first_to_first)


def test_loss_mask_skips_first_segment_unless_asked():
    rank = _ranks('blob:11-5')
    assert torch.equal(loss_mask(rank), rank > 0)
    assert loss_mask(rank, include_first_segment=True).all()
    assert not build_masks(rank).loss[rank == 0].any()


def test_masks_reject_wrong_rank_shape():
    with pytest.raises(ValueError, match='rank must be'):
        build_masks(torch.zeros(64, dtype=torch.long))


def test_additive_mask_is_what_sdpa_makes_of_the_bool_mask():
    rank = sample_rank('blob:11-5', 4, (8, 8), generator=torch.Generator().manual_seed(0))
    masks = build_masks(rank)
    q, k, v = torch.randn(3, 4, 2, 64, 16, generator=torch.Generator().manual_seed(1)).unbind(0)
    for mask in (masks.causal, masks.memory):
        bias = additive_mask(mask, torch.float32)
        assert torch.equal(bias == 0, mask) and torch.isinf(bias[~mask]).all()
        assert torch.equal(F.scaled_dot_product_attention(q, k, v, attn_mask=bias),
                           F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    with pytest.raises(TypeError, match='bool'):
        additive_mask(additive_mask(masks.causal, torch.float32), torch.float32)


def _saved_square_masks(model, images, rank, square=True):
    """Distinct (B, 1, N, N) tensors (any (B, 1, *, *) with `square=False`) one forward keeps for backward."""
    n = rank.shape[1]
    seen = set()

    def pack(t):
        if t.dim() == 4 and t.shape[1] == 1 and (t.shape[-2:] == (n, n) or not square):
            seen.add(t.untyped_storage().data_ptr())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(images, rank=rank)
    return len(seen)


@pytest.mark.parametrize('decoder', ['skip', 'plain', 'two_stream'])
def test_dense_step_keeps_one_copy_of_each_mask_whatever_the_depth(decoder):
    # SDPA given a bool mask converts it in every call and saves each copy for backward (one per layer);
    # the model converts once per step, so the causal and the memory mask are kept once each
    for depth in (2, 4):
        model = timm.create_model('randsac_pretrain_vit_micro_patch4_32', depth=depth, decoder=decoder)
        rank = sample_rank(model.segments, 2, model.grid_size, generator=torch.Generator().manual_seed(0))
        assert _saved_square_masks(model, torch.randn(2, 1, 32, 32), rank) == 2


def test_dense_step_under_cpu_autocast_runs_in_bf16():
    model = timm.create_model('randsac_pretrain_vit_micro_patch4_32', depth=2)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(torch.randn(2, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    assert out.pred.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    out.loss.backward()


def test_sparse_step_keeps_its_mask_slices_once_whatever_the_depth():
    counts = []
    for depth in (2, 4):
        model = timm.create_model('randsac_pretrain_vit_micro_patch4_32', depth=depth, attn_impl='sparse',
                                  attn_block_size=16)
        rank = sample_rank(model.segments, 2, model.grid_size, generator=torch.Generator().manual_seed(0))
        counts.append(_saved_square_masks(model, torch.randn(2, 1, 32, 32), rank, square=False))
    assert counts[0] == counts[1] > 0
