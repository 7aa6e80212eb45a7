"""timm's model contract on every registered `randsac_vit_*` encoder (after timm's tests/test_models.py).

Encoders run at a 2x2 token grid, and the 224-size ones at depth 2, to keep the sweep fast; the
architecture code paths are the same as at full size.
"""
import pytest
import timm
import torch
from timm.models import VisionTransformer

import randsac_timm  # noqa: F401  (registers the models)
from randsac_timm.models.randsac_vit import ENCODER_ARGS, RandSACVisionTransformer, sincos_pos_embed

ENCODERS = timm.list_models('randsac_vit*')


def _small_kwargs(name: str, **kwargs):
    patch = ENCODER_ARGS[name]['patch_size']
    small = dict(img_size=2 * patch)
    if ENCODER_ARGS[name]['img_size'] == 224:
        small['depth'] = 2
    return dict(small, **kwargs)


def _create(name: str, **kwargs) -> RandSACVisionTransformer:
    torch.manual_seed(0)
    return timm.create_model(name, **_small_kwargs(name, **kwargs))


def _input(model, batch_size: int = 2) -> torch.Tensor:
    c, (h, w) = model.in_chans, model.patch_embed.img_size
    return torch.randn(batch_size, c, h, w, generator=torch.Generator().manual_seed(1))


def test_registry_lists_every_encoder_and_wrapper():
    expected = {
        'randsac_vit_micro_patch4_32', 'randsac_vit_micro_patch4_28', 'randsac_vit_tiny_patch4_32',
        'randsac_vit_small_patch4_32',
        'randsac_vit_small_patch16_224', 'randsac_vit_base_patch16_224', 'randsac_vit_large_patch16_224',
        'randsac_vit_base',
    }
    assert set(ENCODERS) == expected
    wrappers = {n.replace('randsac_', 'randsac_pretrain_', 1) for n in expected}
    assert set(timm.list_models('randsac_pretrain*')) == wrappers
    assert set(timm.list_models(module='randsac_vit')) == expected


@pytest.mark.parametrize('name', ENCODERS)
def test_forward_backward_every_parameter_gets_gradient(name):
    model = _create(name)
    assert isinstance(model, VisionTransformer) and not model.has_class_token and model.global_pool == 'avg'
    out = model(_input(model))
    assert out.shape == (2, model.num_classes)
    out.pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f'parameters without gradient: {missing}'
    assert 'pos_embed' not in dict(model.named_parameters())


@pytest.mark.parametrize('name', ENCODERS)
def test_pretrained_cfg_is_complete_and_names_real_keys(name):
    model = _create(name)
    cfg = model.pretrained_cfg
    for key in ('input_size', 'mean', 'std', 'license', 'paper_ids', 'first_conv', 'classifier'):
        assert cfg.get(key), f'{name} pretrained_cfg lacks {key}'
    assert 'arXiv:2203.12054' in cfg['paper_ids']
    assert len(cfg['mean']) == len(cfg['std']) == cfg['input_size'][0] == model.in_chans
    state = model.state_dict()
    assert cfg['first_conv'] + '.weight' in state
    assert cfg['classifier'] + '.weight' in state
    assert 'pos_embed' in state  # saved under timm's key so plain timm can load it


@pytest.mark.parametrize('name', ENCODERS)
def test_head_contract(name):
    model = _create(name).eval()
    x = _input(model)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.patch_embed.num_patches, model.num_features)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    headless = _create(name, num_classes=0)
    assert headless(x).shape == (2, headless.num_features)
    assert isinstance(headless.get_classifier(), torch.nn.Identity)


@pytest.mark.parametrize('name', ENCODERS)
def test_forward_intermediates_match_forward_features(name):
    model = _create(name).eval()
    x = _input(model)
    final, inter = model.forward_intermediates(x)
    assert len(inter) == len(model.blocks)
    h, w = model.patch_embed.grid_size
    assert all(t.shape == (2, model.embed_dim, h, w) for t in inter)
    torch.testing.assert_close(final, model.forward_features(x))
    only = model.forward_intermediates(x, indices=[0], intermediates_only=True, output_fmt='NLC')
    assert len(only) == 1 and only[0].shape == (2, h * w, model.embed_dim)


@pytest.mark.parametrize('name', ENCODERS)
def test_features_only(name):
    model = timm.create_model(name, features_only=True, out_indices=(0, 1), **_small_kwargs(name))
    x = _input(model) if hasattr(model, 'patch_embed') else None
    ref = _create(name)
    feats = model(x if x is not None else _input(ref))
    assert len(feats) == 2
    assert model.feature_info.channels() == [ref.embed_dim] * 2
    assert model.feature_info.reduction() == [ref.patch_embed.patch_size[0]] * 2
    assert all(f.shape == (2, ref.embed_dim, *ref.patch_embed.grid_size) for f in feats)


@pytest.mark.parametrize('name', ENCODERS)
def test_unknown_kwarg_raises_type_error(name):
    with pytest.raises(TypeError):
        _create(name, not_an_argument=1)


@pytest.mark.parametrize('name', ENCODERS)
def test_grad_checkpointing_leaves_outputs_unchanged(name):
    model = _create(name, drop_path_rate=0.0)
    x = _input(model)
    ref = model(x)
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)


def test_pos_embed_is_fixed_sincos_and_recomputed_for_new_sizes():
    model = _create('randsac_vit_micro_patch4_32')
    assert torch.equal(model.pos_embed, sincos_pos_embed((2, 2), model.embed_dim))
    model.init_weights()
    assert torch.equal(model.pos_embed, sincos_pos_embed((2, 2), model.embed_dim))
    model.set_input_size(img_size=(16, 24))
    assert model.patch_embed.grid_size == (4, 6)
    assert torch.equal(model.pos_embed, sincos_pos_embed((4, 6), model.embed_dim))
    assert model(torch.randn(1, 1, 16, 24)).shape == (1, 10)


def test_dynamic_img_size_recomputes_sincos_like_a_model_built_at_that_size():
    fixed = timm.create_model('randsac_vit_micro_patch4_32', img_size=(16, 24))
    dynamic = timm.create_model('randsac_vit_micro_patch4_32', dynamic_img_size=True)
    state = {k: v for k, v in fixed.state_dict().items() if k != 'pos_embed'}  # the only key that differs
    dynamic.load_state_dict(state, strict=False)
    x = torch.randn(2, 1, 16, 24)
    torch.testing.assert_close(dynamic.eval()(x), fixed.eval()(x))


def test_pretrained_filter_recomputes_pos_embed_for_another_grid():
    src = timm.create_model('randsac_vit_micro_patch4_32')
    dst = timm.create_model('randsac_vit_micro_patch4_32', img_size=48, pretrained=True,
                            pretrained_cfg_overlay=dict(state_dict=src.state_dict()))
    assert torch.equal(dst.pos_embed, sincos_pos_embed((12, 12), dst.embed_dim))
    torch.testing.assert_close(dst.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_state_dict_loads_strictly_into_plain_timm_vit_with_identical_outputs():
    ours = timm.create_model('randsac_vit_micro_patch4_32').eval()
    plain = timm.create_model(
        'vit_tiny_patch16_224', img_size=32, patch_size=4, in_chans=1, embed_dim=128, depth=6, num_heads=4,
        class_token=False, global_pool='avg', num_classes=10).eval()
    plain.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(3, 1, 32, 32)
    assert torch.equal(plain(x), ours(x))


def test_in_chans_is_respected():
    rgb = timm.create_model('randsac_vit_micro_patch4_32', in_chans=3)
    assert rgb.patch_embed.proj.in_channels == 3
    assert rgb(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize('bad', [dict(img_size=30), dict(class_token=True), dict(embed_dim=130, num_heads=2)])
def test_bad_encoder_config_raises_clear_error(bad):
    with pytest.raises(ValueError, match='img_size|class|divisible by 4'):
        timm.create_model('randsac_vit_micro_patch4_32', **bad)


def test_micro_28_is_the_micro_encoder_on_the_native_7x7_grid():
    native, padded = timm.create_model('randsac_vit_micro_patch4_28'), timm.create_model('randsac_vit_micro_patch4_32')
    assert native.patch_embed.grid_size == (7, 7) and native.pretrained_cfg['input_size'] == (1, 28, 28)
    # the same parameters (the sin-cos positions are a fixed buffer), so 32x32 weights load at 28x28 unchanged
    shapes = lambda m: {k: v.shape for k, v in m.named_parameters()}  # noqa: E731
    assert shapes(native) == shapes(padded)
    moved = timm.create_model('randsac_vit_micro_patch4_28', pretrained=True,
                              pretrained_cfg_overlay=dict(state_dict=padded.state_dict()))
    assert torch.equal(moved.pos_embed, sincos_pos_embed((7, 7), moved.embed_dim))
    torch.testing.assert_close(moved.blocks[-1].mlp.fc2.weight, padded.blocks[-1].mlp.fc2.weight)
    wrapper = timm.create_model('randsac_pretrain_vit_micro_patch4_28')
    assert wrapper.grid_size == (7, 7)
    wrapper.segments.validate(wrapper.grid_size)  # the default blob:11-5 fits 49 tokens
    assert timm.create_model('mae_pretrain_vit_micro_patch4_28').encoder.patch_embed.grid_size == (7, 7)
