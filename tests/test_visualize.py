"""Reconstruction pictures: exact input panel, segment colours from the ranks, norm_pix undone, CLI end to end."""
import io
import os

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import randsac_timm  # noqa: F401  (registers the models)
from randsac_timm import visualize
from randsac_timm.models.losses import pixel_target
from randsac_timm.models.randsac_pretrain import RandSACPretrain
from randsac_timm.models.segments import sample_rank
from randsac_timm.visualize import (
    BOUNDARY_COLOR,
    HEADER_HEIGHT,
    PANEL_GAP,
    load_pretrain_checkpoint_model,
    main,
    order_colors,
    panel_box,
    prediction_to_images,
    render_reconstruction,
)

MEAN, STD = (0.2860,), (0.3530,)
TINY = dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
NAME = 'randsac_pretrain_vit_micro_patch4_32'


def _wrapper(**kwargs) -> RandSACPretrain:
    torch.manual_seed(0)
    return timm.create_model(NAME, **dict(TINY, **kwargs))


@pytest.fixture(scope='module')
def fmnist_images(fashion_mnist_test) -> torch.Tensor:
    """4 real Fashion-MNIST test images, padded 28 -> 32 and normalised: (4, 1, 32, 32)."""
    x = fashion_mnist_test.data[:4].float().div(255).unsqueeze(1)
    x = torch.nn.functional.pad(x, (2, 2, 2, 2))
    return (x - MEAN[0]) / STD[0]


def _panel(picture: Image.Image, row: int, col: int, panel_hw=(96, 96)) -> np.ndarray:
    return np.asarray(picture.crop(panel_box(row, col, panel_hw))).astype(np.int16)


def _png_bytes(picture: Image.Image) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, format='PNG')
    return buf.getvalue()


def test_picture_has_one_row_per_image_and_exact_input_panel(fmnist_images):
    model = _wrapper()
    picture = render_reconstruction(model, fmnist_images, MEAN, STD, generator=torch.Generator().manual_seed(0))
    B = len(fmnist_images)
    assert picture.mode == 'RGB'
    assert picture.size == (3 * 96 + 4 * PANEL_GAP, HEADER_HEIGHT + B * (96 + PANEL_GAP))
    expected = (fmnist_images * STD[0] + MEAN[0]).clamp(0, 1).mul(255)
    expected = expected.repeat_interleave(3, -2).repeat_interleave(3, -1)  # nearest x3: 32 -> 96
    for b in range(B):
        panel = _panel(picture, b, 1)
        assert (panel == panel[..., :1]).all(), 'a grayscale input must be drawn gray'
        assert np.abs(panel[..., 0] - expected[b, 0].numpy()).max() <= 1
    assert model.training, 'rendering must restore the training mode'


def test_segment_panel_colours_follow_the_ranks(fmnist_images):
    model = _wrapper(segments='blob:11-5')
    rank = sample_rank('blob:11-5', len(fmnist_images), (8, 8), generator=torch.Generator().manual_seed(1))
    plain = render_reconstruction(model, fmnist_images, MEAN, STD, rank=rank, show_order=False)
    numbered = render_reconstruction(model, fmnist_images, MEAN, STD, rank=rank, show_order=True)
    for b in range(len(fmnist_images)):
        panel = _panel(plain, b, 0)
        colours = {tuple(c) for c in panel.reshape(-1, 3)} - {BOUNDARY_COLOR}
        assert len(colours) == int(rank[b].max()) + 1 > 1
        # bottom-right pixel of every 12x12 token cell holds that token's order colour
        want = order_colors(rank[b].float() / rank[b].max()).mul(255).round().view(8, 8, 3).numpy()
        assert np.array_equal(panel[11::12, 11::12], want)
        # order numbers add only label pixels (boundary colour or black), and some are written
        changed = (_panel(numbered, b, 0) != panel).any(-1)
        assert changed.any()
        drawn = _panel(numbered, b, 0)[changed]
        assert np.isin(drawn, [0, 255]).all()


def test_picture_is_reproducible_per_seed_and_leaves_global_rng_alone(fmnist_images):
    model = _wrapper()
    state = torch.get_rng_state()
    first, again, other = (
        _png_bytes(render_reconstruction(model, fmnist_images, MEAN, STD, generator=torch.Generator().manual_seed(s)))
        for s in (0, 0, 1))
    assert first == again
    assert first != other
    assert torch.equal(torch.get_rng_state(), state)


def test_tokens_outside_the_loss_are_washed_out(fmnist_images):
    model = _wrapper(segments='raster')  # token 0 is the first segment, every other token is scored
    picture = render_reconstruction(model, fmnist_images[:1], MEAN, STD)
    out = model.eval()(fmnist_images[:1], rank=torch.arange(64).view(1, 64))
    recon = prediction_to_images(out.pred.detach(), fmnist_images[:1], (4, 4), norm_pix=False)
    recon = (recon * STD[0] + MEAN[0]).clamp(0, 1)
    panel = _panel(picture, 0, 2)[..., 0]
    first_token, second_token = panel[:12, :12], panel[:12, 12:24]
    want_first = (recon[0, 0, :4, :4] * 0.5 + 0.25).mul(255).repeat_interleave(3, 0).repeat_interleave(3, 1)
    want_second = recon[0, 0, :4, 4:8].mul(255).repeat_interleave(3, 0).repeat_interleave(3, 1)
    assert np.abs(first_token - want_first.numpy()).max() <= 1
    assert np.abs(second_token - want_second.numpy()).max() <= 1


@pytest.mark.parametrize('norm_pix', [False, True])
@pytest.mark.parametrize('channels', [1, 3])
def test_prediction_equal_to_target_reconstructs_the_input(norm_pix, channels, fmnist_images):
    images = fmnist_images.expand(-1, channels, -1, -1) * torch.linspace(0.5, 1.5, channels).view(1, -1, 1, 1)
    target = pixel_target(images, (4, 4), norm_pix=norm_pix)
    recon = prediction_to_images(target, images, (4, 4), norm_pix=norm_pix)
    assert recon.shape == images.shape
    assert torch.allclose(recon, images, atol=1e-4)
    if norm_pix:  # not vacuous: without undoing norm_pix the picture would be wrong
        assert not torch.allclose(prediction_to_images(target, images, (4, 4), norm_pix=False), images, atol=1e-2)


def test_rgb_model_renders(fmnist_images):
    model = _wrapper(in_chans=3, norm_pix=True)
    images = fmnist_images[:2].expand(-1, 3, -1, -1).clone()
    images[:, 0] = images[:, 0].flip(-1)  # channels differ
    picture = render_reconstruction(model, images, MEAN * 3, STD * 3, generator=torch.Generator().manual_seed(0))
    assert picture.size == (3 * 96 + 4 * PANEL_GAP, HEADER_HEIGHT + 2 * (96 + PANEL_GAP))
    panel = _panel(picture, 1, 1)
    assert (panel[..., 0] != panel[..., 1]).any()


def _save_checkpoint(path, model: RandSACPretrain, **config) -> None:
    torch.save({
        'format': 'randsac-timm/pretrain/v1',
        'model': model.state_dict(),
        'model_name': NAME,
        'model_kwargs': dict(TINY, segments='blob:11-5', norm_pix=False, in_chans=1, img_size=32),
        'config': dict(dict(dataset='fashion_mnist', img_size=32, data_dir=None), **config),
        'epoch': 3,
    }, path)


def test_checkpoint_round_trip_restores_the_weights(tmp_path):
    model = _wrapper(segments='blob:11-5')
    with torch.no_grad():
        model.decoder.memory.skip_weights.add_(1.0)  # differs from a fresh init
    path = str(tmp_path / 'checkpoint-0003.pth')
    _save_checkpoint(path, model)
    loaded, config = load_pretrain_checkpoint_model(path)
    assert config['dataset'] == 'fashion_mnist'
    assert not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_cli_draws_folder_images_and_dataset_split(tmp_path, fashion_mnist_test, capsys):
    ckpt = str(tmp_path / 'checkpoint-0003.pth')
    _save_checkpoint(ckpt, _wrapper(segments='blob:11-5'))
    folder = tmp_path / 'pngs'
    folder.mkdir()
    for i in range(3):
        Image.fromarray(fashion_mnist_test.data[i].numpy()).save(folder / f'{i}.png')

    out = str(tmp_path / 'pics' / 'folder.png')
    assert main([ckpt, '--images', str(folder), '--out', out, '--seed', '1']) == out
    assert capsys.readouterr().out.strip() == out
    with Image.open(out) as picture:
        assert picture.size == (3 * 96 + 4 * PANEL_GAP, HEADER_HEIGHT + 3 * (96 + PANEL_GAP))
        # folder PNGs are zero-padded 28 -> 32 like the training data, so the input panel is exact
        panel = _panel(picture.convert('RGB'), 2, 1)[..., 0]
        want = np.pad(fashion_mnist_test.data[2].numpy(), 2).repeat(3, 0).repeat(3, 1)
        assert np.abs(panel - want).max() <= 1

    default = main([ckpt, '--num-images', '5'])
    assert default == str(tmp_path / 'checkpoint-0003-reconstruction.png')
    with Image.open(default) as picture:
        assert picture.size == (3 * 96 + 4 * PANEL_GAP, HEADER_HEIGHT + 5 * (96 + PANEL_GAP))
    assert not [f for f in os.listdir(tmp_path) if f.startswith('.tmp')], 'temp file left behind'


def test_unreadable_checkpoint_errors_name_the_path(tmp_path):
    missing = str(tmp_path / 'nope.pth')
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_pretrain_checkpoint_model(missing)
    good = tmp_path / 'good.pth'
    _save_checkpoint(str(good), _wrapper())
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match='truncated.pth'):
        main([str(truncated), '--out', str(tmp_path / 'x.png')])
    assert not (tmp_path / 'x.png').exists()


def test_too_many_images_is_refused(fmnist_images):
    images = fmnist_images[:1].expand(visualize.MAX_IMAGES + 1, -1, -1, -1)
    with pytest.raises(ValueError, match='B <= 16'):
        render_reconstruction(_wrapper(), images, MEAN, STD)
