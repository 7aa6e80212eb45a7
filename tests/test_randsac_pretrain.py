"""The RandSAC objective: causality of the serialized prediction, shapes, masks under checkpointing, overfitting."""
import pytest
import timm
import torch

import randsac_timm  # noqa: F401  (registers the models)
from randsac_timm.models.losses import patchify, unpatchify
from randsac_timm.models.randsac_pretrain import RandSACPretrain
from randsac_timm.models.segments import sample_rank

STRATEGIES = ['raster', 'random', 'square:16', 'square:4', 'square:16-4', 'blob:7', 'blob:11-5', 'blob:11-7-3',
              'shuffle:7']
TINY = dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2)


def _wrapper(segments: str = 'blob:11-5', **kwargs) -> RandSACPretrain:
    torch.manual_seed(0)
    return timm.create_model('randsac_pretrain_vit_micro_patch4_32', segments=segments, **dict(TINY, **kwargs))


def _token_grad(pred_part: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """|d pred_part / d images| summed per token: (B, N)."""
    (grad,) = torch.autograd.grad(pred_part.sum(), images, retain_graph=True)
    return patchify(grad, (4, 4)).abs().sum(-1)


def _check_segment_causality(model: RandSACPretrain, images: torch.Tensor, rank: torch.Tensor) -> int:
    images = images.clone().requires_grad_(True)
    pred = model(images, rank=rank).pred
    b = 0
    num_segments = int(rank[b].max()) + 1
    for s in sorted({0, 1, num_segments // 2, num_segments - 1}):
        grad = _token_grad(pred[b][rank[b] == s], images)
        forbidden = rank[b] > s if s == 0 else rank[b] >= s  # the first segment may read its own encoding
        assert torch.all(grad[b][forbidden] == 0), f'segment {s} sees its own or a later segment'
        assert torch.all(grad[1:] == 0), 'prediction leaks across samples'
        if s > 0:  # not vacuous: it does depend on earlier segments
            assert grad[b][rank[b] < s].sum() > 0
    return len({0, 1, num_segments // 2, num_segments - 1})


@pytest.mark.parametrize('spec', STRATEGIES)
def test_prediction_has_zero_gradient_wrt_own_and_later_segments(spec, fmnist_batch):
    model = _wrapper(spec).eval()
    rank = sample_rank(spec, 2, (8, 8), generator=torch.Generator().manual_seed(3))
    assert _check_segment_causality(model, fmnist_batch[:2], rank) >= 3


def test_causality_on_non_square_grid(fmnist_batch):
    model = _wrapper('blob:11-5', img_size=(24, 40)).eval()
    images = torch.nn.functional.interpolate(fmnist_batch[:2], size=(24, 40))
    rank = sample_rank('blob:11-5', 2, (6, 10), generator=torch.Generator().manual_seed(0))
    assert _check_segment_causality(model, images, rank) >= 3


@pytest.mark.parametrize('spec', STRATEGIES)
def test_perturbing_later_segments_leaves_earlier_predictions_bit_identical(spec, fmnist_batch):
    model = _wrapper(spec).eval()
    images = fmnist_batch[:4]
    rank = sample_rank(spec, 4, (8, 8), generator=torch.Generator().manual_seed(5))
    cut = (rank.max(dim=1, keepdim=True).values + 1) // 2  # (B, 1) the middle segment of each sample
    later = rank >= cut  # (B, N)
    noise = torch.randn(patchify(images, (4, 4)).shape, generator=torch.Generator().manual_seed(7))
    perturbed = images + unpatchify(noise * later[..., None], (4, 4), (8, 8), 1)
    with torch.no_grad():
        before, after = model(images, rank=rank).pred, model(perturbed, rank=rank).pred
    assert torch.equal(before[~later], after[~later])
    assert not torch.equal(before[later], after[later])  # not vacuous: the perturbation does reach later ones


def _assert_checkpointing_changes_nothing(model, images: torch.Tensor, rank: torch.Tensor) -> None:
    """Every trainable parameter gets a gradient, and grad checkpointing leaves outputs and gradients unchanged."""
    ref = model(images, rank=rank)
    ref.loss.backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    out = model(images, rank=rank)
    assert torch.equal(out.pred, ref.pred)
    out.loss.backward()
    for name, grad in ref_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, msg=name)


def test_masks_still_applied_with_gradient_checkpointing(fmnist_batch):
    model = _wrapper('blob:11-5').train()
    images = fmnist_batch[:2]
    rank = sample_rank('blob:11-5', 2, (8, 8), generator=torch.Generator().manual_seed(0))
    _assert_checkpointing_changes_nothing(model, images, rank)
    assert model.encoder.grad_checkpointing and model.decoder.grad_checkpointing
    assert _check_segment_causality(model, images, rank) > 0


def test_output_contract(fmnist_batch):
    model = _wrapper('blob:7')
    out = model(fmnist_batch[:3])
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.pred.shape == out.target.shape == (3, 64, 16)
    assert out.rank.shape == (3, 64) and out.rank.dtype == torch.int64
    assert out.loss_mask.shape == (3, 64) and out.loss_mask.dtype == torch.bool
    assert torch.equal(out.loss_mask, out.rank > 0)
    expected = ((out.pred - out.target).pow(2).mean(-1) * out.loss_mask).sum() / out.loss_mask.sum()
    torch.testing.assert_close(out.loss, expected)


def test_every_trainable_parameter_gets_gradient(fmnist_batch):
    model = _wrapper('blob:11-5')
    model(fmnist_batch[:4]).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert model.decoder.memory.skip_weights.grad.abs().sum() > 0


def test_factory_kwargs_select_the_variant(fmnist_batch):
    plain = _wrapper('random', skip_connections=False, norm_pix=True, loss_first_segment=True)
    assert plain.decoder.memory.skip_weights is None and len(plain.decoder.memory.norms) == 1
    out = plain(fmnist_batch[:2])
    assert out.loss_mask.all()
    torch.testing.assert_close(out.target.mean(-1), torch.zeros(2, 64), atol=1e-5, rtol=0)
    assert str(plain.segments) == 'random'
    skips = _wrapper()
    assert skips.decoder.memory.skip_weights.shape == (2, 2)  # (L_dec, L_enc)


def test_default_decoders_follow_the_paper():
    tiny = timm.create_model('randsac_pretrain_vit_tiny_patch4_32')
    assert (tiny.decoder.embed_dim, len(tiny.decoder.blocks), str(tiny.segments)) == (192, 3, 'blob:11-5')
    assert tiny.decoder.memory.skip_weights.shape == (3, 12)
    small = timm.create_model('randsac_pretrain_vit_small_patch4_32')
    assert (small.decoder.embed_dim, len(small.decoder.blocks)) == (384, 6)


def test_wrapper_reaches_encoder_only_through_forward_intermediates(fmnist_batch):
    """A stock timm ViT works as the encoder, and the wrapper passes it the segment mask."""
    encoder = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=4, in_chans=1, embed_dim=32, depth=2,
                                num_heads=2, class_token=False, global_pool='avg', num_classes=0)
    model = RandSACPretrain(encoder, segments='blob:7', decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    seen = []
    original = encoder.forward_intermediates

    def spy(*args, **kwargs):
        seen.append(kwargs.get('attn_mask'))
        return original(*args, **kwargs)

    encoder.forward_intermediates = spy
    out = model(fmnist_batch[:2])
    # the causal mask as SDPA's additive bias (0 = may attend, -inf = may not), in the encoder's dtype
    assert len(seen) == 1 and seen[0].shape == (2, 1, 64, 64) and seen[0].dtype == torch.float32
    assert torch.equal(seen[0][:, 0] == 0, out.rank[:, None, :] <= out.rank[:, :, None])
    assert torch.isneginf(seen[0][seen[0] != 0]).all()


def test_wrapper_overfits_one_real_batch(fmnist_batch):
    torch.manual_seed(0)
    model = timm.create_model('randsac_pretrain_vit_micro_patch4_32', segments='blob:11-5', depth=2)
    images = fmnist_batch[:32]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    rank = sample_rank('blob:11-5', 32, (8, 8), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(60):
        loss = model(images, rank=rank).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.4 * losses[0], losses[::10]


@pytest.mark.parametrize('kwargs, images_shape, match', [
    (dict(dynamic_img_size=True), (2, 1, 30, 30), 'not divisible by the patch size'),
    (dict(), (2, 1, 28, 28), 'does not match the model img_size'),
    (dict(), (2, 3, 32, 32), 'channels'),
])
def test_bad_images_raise_clear_error(kwargs, images_shape, match):
    model = _wrapper(**kwargs)
    with pytest.raises(ValueError, match=match):
        model(torch.randn(images_shape))


@pytest.mark.parametrize('kwargs, match', [
    (dict(img_size=30), 'not divisible by patch_size'),
    (dict(img_size=28, segments='square:25'), 'square'),  # 7x7 takes 49, 16, 9, 4 or 1
    (dict(segments='blob:5-7'), 'coarser'),
    (dict(segments='blob:100'), 'tokens'),
    (dict(segments='spiral:3'), 'raster'),
])
def test_bad_config_raises_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _wrapper(**kwargs)


def test_pretrained_wrapper_weights_do_not_exist():
    with pytest.raises(ValueError, match='no pretrained weights'):
        timm.create_model('randsac_pretrain_vit_micro_patch4_32', pretrained=True)


def test_unknown_wrapper_kwarg_raises_type_error():
    with pytest.raises(TypeError):
        timm.create_model('randsac_pretrain_vit_micro_patch4_32', not_an_argument=1)
