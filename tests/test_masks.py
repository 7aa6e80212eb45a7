import pytest
import torch

from randsac_timm.masks import build_masks, causal_segment_mask, loss_mask, memory_mask
from randsac_timm.segments import sample_rank

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
