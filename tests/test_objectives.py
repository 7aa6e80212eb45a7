"""The other pretraining objectives: the MAE baseline and RandSAC's two-stream variant (paper Table 8)."""
import pytest
import timm
import torch
from safetensors.torch import load_file
from test_randsac_pretrain import (
    _assert_checkpointing_changes_nothing,
    _check_segment_causality,
    _token_grad,
    _wrapper,
)
from test_train_pretrain import SHORT

import randsac_timm  # noqa: F401  (registers the models)
from randsac_timm.models.losses import masked_mse, patchify, unpatchify
from randsac_timm.models.mae_pretrain import MAEPretrain
from randsac_timm.models.segments import sample_rank
from randsac_timm.train.checkpoint import load_pretrain_model
from randsac_timm.train.config import parse_pretrain_args
from randsac_timm.train.engine import train
from randsac_timm.visualize import render_reconstruction

TWO_STREAM_STRATEGIES = ['blob:11-5', 'random', 'square:16-4']
MAE_TINY = dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
# big enough to memorise 16 images in a few dozen steps, small enough for seconds on 2 shared CPU cores
OVERFIT = dict(embed_dim=64, depth=2, num_heads=2, decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2)


def _mae(**kwargs) -> MAEPretrain:
    torch.manual_seed(0)
    return timm.create_model('mae_pretrain_vit_micro_patch4_32', **dict(MAE_TINY, **kwargs))


def _overfit(model: torch.nn.Module, images: torch.Tensor, rank: torch.Tensor, steps: int = 40) -> list:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = model(images, rank=rank).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------------------------------------- MAE


def test_mae_masks_exactly_round_ratio_per_sample_from_the_generator(fmnist_batch):
    model = _mae(mask_ratio=0.75)
    out = model(fmnist_batch[:8], generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.loss_mask.sum(1), torch.full((8,), 48))  # round(0.75 * 64)
    assert torch.equal(out.rank, out.loss_mask.long())  # two segments: 0 visible, 1 masked
    assert len({tuple(m.tolist()) for m in out.loss_mask}) == 8  # per-sample masks
    again = model(fmnist_batch[:8], generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.loss_mask, out.loss_mask)
    assert timm.create_model('mae_pretrain_vit_micro_patch4_32', mask_ratio=0.6, **MAE_TINY)(
        fmnist_batch[:2]).loss_mask.sum(1).tolist() == [38, 38]  # round(0.6 * 64)
    assert str(model.segments) == 'mae:0.75'


def test_mae_encoder_sees_only_visible_tokens(fmnist_batch):
    model = _mae()
    lengths = []
    hooks = [blk.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
             for blk in model.encoder.blocks]
    model(fmnist_batch[:4])
    for hook in hooks:
        hook.remove()
    assert lengths == [64 - 48] * len(model.encoder.blocks)


def test_mae_loss_is_mse_on_masked_tokens_only(fmnist_batch):
    model = _mae()
    assert model.norm_pix  # MAE's default
    out = model(fmnist_batch[:4])
    torch.testing.assert_close(out.target.mean(-1), torch.zeros(4, 64), atol=1e-5, rtol=0)
    mask = out.loss_mask
    expected = (out.pred - out.target).pow(2).mean(-1)[mask].mean()
    torch.testing.assert_close(out.loss, expected)
    visible_changed = torch.where(mask[..., None], out.pred, out.pred + 5.0)
    assert not torch.allclose(out.pred, visible_changed)
    torch.testing.assert_close(masked_mse(visible_changed, out.target, mask), out.loss)


def test_mae_predictions_have_zero_gradient_wrt_masked_pixels(fmnist_batch):
    model = _mae().eval()
    images = fmnist_batch[:2].clone().requires_grad_(True)
    rank = (torch.rand(2, 64, generator=torch.Generator().manual_seed(1)).argsort(1) >= 16).long()
    out = model(images, rank=rank)
    masked = out.loss_mask[0]
    grad = _token_grad(out.pred[0][masked], images)  # (B, N)
    assert torch.all(grad[0][masked] == 0), 'a masked token prediction sees masked pixels'
    assert torch.all(grad[1] == 0), 'prediction leaks across samples'
    assert torch.all(grad[0][~masked] > 0)  # not vacuous: every visible token is read


def test_mae_every_trainable_parameter_gets_gradient_and_checkpointing_changes_nothing(fmnist_batch):
    model = _mae()
    rank = (torch.rand(4, 64, generator=torch.Generator().manual_seed(2)).argsort(1) >= 16).long()
    _assert_checkpointing_changes_nothing(model, fmnist_batch[:4], rank)
    assert model.no_weight_decay() <= {n for n, _ in model.named_parameters()}


def test_mae_overfits_one_real_batch(fmnist_batch):
    model = _mae(**OVERFIT)
    rank = (torch.rand(16, 64, generator=torch.Generator().manual_seed(0)).argsort(1) >= 16).long()
    losses = _overfit(model, fmnist_batch[:16], rank)
    assert losses[-1] < 0.4 * losses[0], losses[::10]


def test_mae_encoder_loads_strictly_into_the_plain_encoder():
    model = timm.create_model('mae_pretrain_vit_micro_patch4_32')
    encoder = timm.create_model('randsac_vit_micro_patch4_32', num_classes=0)
    encoder.load_state_dict(model.encoder.state_dict(), strict=True)
    assert not any(k.startswith('encoder.') for k in model.state_dict() if 'mask_token' in k)


def test_mae_registered_once_per_encoder_with_the_randsac_decoder_sizes():
    encoders = timm.list_models('randsac_vit*')
    assert sorted(timm.list_models('mae_pretrain*')) == sorted('mae_pretrain_' + n[len('randsac_'):] for n in encoders)
    tiny = timm.create_model('mae_pretrain_vit_tiny_patch4_32')
    assert (tiny.decoder.embed_dim, len(tiny.decoder.blocks), tiny.decoder.blocks[0].attn.num_heads) == (192, 3, 3)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(pretrained=True), ValueError, 'no pretrained weights'),
    (dict(segments='blob:7'), TypeError, 'segments'),
    (dict(not_an_argument=1), TypeError, 'not_an_argument'),
    (dict(mask_ratio=1.0), ValueError, 'mask_ratio'),
])
def test_mae_bad_factory_kwargs_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        timm.create_model('mae_pretrain_vit_micro_patch4_32', **kwargs)


def test_mae_reconstruction_picture(fmnist_batch):
    picture = render_reconstruction(_mae(), fmnist_batch[:2], (0.2860,), (0.3530,),
                                    generator=torch.Generator().manual_seed(0))
    assert picture.size[0] > 3 * 32 and len(picture.getcolors(1 << 16)) > 2


# ---------------------------------------------------------------------------------------------------- two-stream


@pytest.mark.parametrize('spec', TWO_STREAM_STRATEGIES)
def test_two_stream_prediction_has_zero_gradient_wrt_own_and_later_segments(spec, fmnist_batch):
    model = _wrapper(spec, decoder='two_stream').eval()
    rank = sample_rank(spec, 2, (8, 8), generator=torch.Generator().manual_seed(3))
    assert _check_segment_causality(model, fmnist_batch[:2], rank) >= 3


@pytest.mark.parametrize('spec', TWO_STREAM_STRATEGIES)
def test_two_stream_perturbing_later_segments_leaves_earlier_predictions_bit_identical(spec, fmnist_batch):
    model = _wrapper(spec, decoder='two_stream').eval()
    images = fmnist_batch[:4]
    rank = sample_rank(spec, 4, (8, 8), generator=torch.Generator().manual_seed(5))
    later = rank >= (rank.max(dim=1, keepdim=True).values + 1) // 2  # (B, N) from each sample's middle segment on
    noise = torch.randn(patchify(images, (4, 4)).shape, generator=torch.Generator().manual_seed(7))
    perturbed = images + unpatchify(noise * later[..., None], (4, 4), (8, 8), 1)
    with torch.no_grad():
        before, after = model(images, rank=rank).pred, model(perturbed, rank=rank).pred
    assert torch.equal(before[~later], after[~later])
    assert not torch.equal(before[later], after[later])


def test_two_stream_every_trainable_parameter_gets_gradient_and_checkpointing_changes_nothing(fmnist_batch):
    model = _wrapper('blob:11-5', decoder='two_stream')
    rank = sample_rank('blob:11-5', 4, (8, 8), generator=torch.Generator().manual_seed(0))
    _assert_checkpointing_changes_nothing(model, fmnist_batch[:4], rank)
    assert model.decoder.query_bias.grad.abs().sum() > 0
    assert _check_segment_causality(model, fmnist_batch[:2], rank[:2]) >= 3


def test_two_stream_shares_the_encoder_and_selects_by_kwarg():
    two = _wrapper(decoder='two_stream')
    assert not [k for k in two.state_dict() if k.startswith('decoder.') and 'blocks' in k]  # weights shared
    assert two.no_weight_decay() == {'decoder.query_bias'}
    plain, legacy = _wrapper(decoder='plain'), _wrapper(skip_connections=False)
    assert plain.decoder.memory.skip_weights is None and legacy.decoder_kind == plain.decoder_kind == 'plain'
    assert _wrapper().decoder_kind == 'skip'
    with pytest.raises(ValueError, match='two_stream'):
        _wrapper(decoder='xlnet')


def test_two_stream_overfits_one_real_batch(fmnist_batch):
    model = _wrapper('blob:11-5', decoder='two_stream', **OVERFIT)
    rank = sample_rank('blob:11-5', 16, (8, 8), generator=torch.Generator().manual_seed(0))
    losses = _overfit(model, fmnist_batch[:16], rank)
    assert losses[-1] < 0.4 * losses[0], losses[::10]


# ---------------------------------------------------------------------------------------------------- training script


@pytest.mark.parametrize('flags, steps', [
    (['--model', 'mae_pretrain_vit_micro_patch4_32'], 3),
    (['--decoder', 'two_stream'], 2),
])
def test_train_pretrain_runs_both_objectives_and_exports_a_strict_encoder(flags, steps, tmp_path):
    out = str(tmp_path / 'run')
    cfg = parse_pretrain_args(SHORT + ['--vis-every', '0'] + flags + ['--max-steps', str(steps), '--output-dir', out])
    result = train(cfg)
    assert result.step == steps and result.pictures
    encoder = timm.create_model('randsac_vit_micro_patch4_32', num_classes=0)
    encoder.load_state_dict(load_file(result.encoder), strict=True)
    model, state = load_pretrain_model(result.checkpoint)  # the saved kwargs rebuild the same wrapper
    assert type(model).__name__ == ('MAEPretrain' if 'mae' in cfg.model else 'RandSACPretrain')
    if 'mae' in cfg.model:
        assert state['model_kwargs']['mask_ratio'] == 0.75 and 'segments' not in state['model_kwargs']
    else:
        assert model.decoder_kind == state['model_kwargs']['decoder'] == 'two_stream'
