import json
import os

import pytest
import timm
import torch
from safetensors.torch import save_file

from randsac_timm.hub.loading import load_encoder, sha256_file
from randsac_timm.train.checkpoint import CHECKPOINT_FORMAT, CheckpointError, export_encoder

NAME = 'randsac_vit_micro_patch4_32'
KW = dict(img_size=32, in_chans=1)
STOCK_ARGS = dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4, in_chans=1, class_token=False,
                  global_pool='avg')


@pytest.fixture(scope='module')
def reference():
    torch.manual_seed(123)
    return timm.create_model(NAME, num_classes=0, **KW).eval()


@pytest.fixture(scope='module')
def files(reference, tmp_path_factory):
    root = tmp_path_factory.mktemp('enc')
    enc = str(root / 'encoder.safetensors')
    export_encoder(reference, enc, NAME, KW)
    # the train_pretrain.py format (checkpoint.py docstring): wrapper state with 'encoder.' prefix
    wrapper = timm.create_model('randsac_pretrain_vit_micro_patch4_32', **KW)
    state = wrapper.state_dict()
    state.update({f'encoder.{k}': v for k, v in reference.state_dict().items()})
    ckpt = str(root / 'checkpoint-last.pth')
    torch.save(dict(format=CHECKPOINT_FORMAT, model=state, model_name='randsac_pretrain_vit_micro_patch4_32',
                    model_kwargs=KW, encoder_name=NAME, encoder_kwargs=KW), ckpt)
    weights = {k: v.contiguous() for k, v in reference.state_dict().items()}
    ours = root / 'hub_ours'
    ours.mkdir()
    (ours / 'config.json').write_text(json.dumps(dict(architecture=NAME, num_classes=0, model_args=KW)))
    save_file(weights, str(ours / 'model.safetensors'))
    stock = root / 'hub_stock'
    stock.mkdir()
    (stock / 'config.json').write_text(json.dumps(dict(architecture='vit_small_patch16_224', num_classes=0,
                                                       model_args=STOCK_ARGS)))
    save_file(weights, str(stock / 'model.safetensors'))
    return dict(enc=enc, ckpt=ckpt, ours=str(ours), stock=str(stock))


def _same_output(model, reference):
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), reference.forward_features(x))


@pytest.mark.parametrize('route', ['ckpt', 'enc', 'local-dir-checkpoint', 'local-dir-model', 'stock-vit',
                                   'registered'])
def test_every_route_loads_the_same_weights(route, files, reference):
    args = dict(
        ckpt=dict(checkpoint=files['ckpt']),
        enc=dict(checkpoint=files['enc']),
        **{'local-dir-checkpoint': dict(checkpoint=f'local-dir:{files["ours"]}'),
           'local-dir-model': dict(model=f'local-dir:{files["ours"]}', pretrained=True),
           'stock-vit': dict(checkpoint=f'local-dir:{files["stock"]}'),
           'registered': dict(model=NAME, pretrained=True, pretrained_cfg_overlay=dict(file=files['enc']))},
    )[route]
    model, info = load_encoder(num_classes=10, in_chans=1, **args)
    _same_output(model, reference)
    assert model.get_classifier().out_features == 10  # the new head, the only key allowed to be missing
    assert info['sha256'] == sha256_file(info['path']) and len(info['sha256']) == 64
    assert info['kind'] in ('pretrain_checkpoint', 'encoder_safetensors', 'local-dir', 'registered')


def test_random_init_is_reported_as_such():
    model, info = load_encoder(model=NAME, in_chans=1)
    assert info['kind'] == 'random_init' and info['sha256'] is None and model.num_classes == 0


def test_wrong_architecture_fails_loudly(files, tmp_path):
    folder = tmp_path / 'wrong'
    folder.mkdir()
    (folder / 'config.json').write_text(json.dumps(dict(architecture='randsac_vit_tiny_patch4_32', num_classes=0,
                                                        model_args=KW)))
    os.link(os.path.join(files['ours'], 'model.safetensors'), folder / 'model.safetensors')
    with pytest.raises(CheckpointError, match=r'do not fit randsac_vit_tiny_patch4_32.*missing.*blocks\.6'):
        load_encoder(checkpoint=f'local-dir:{folder}')


def test_model_name_must_match_the_checkpoint(files):
    with pytest.raises(CheckpointError, match='does not match the architecture'):
        load_encoder(checkpoint=files['enc'], model='randsac_vit_tiny_patch4_32')


def test_wrong_channel_count_fails_loudly(files):
    with pytest.raises(CheckpointError, match=r'1-channel encoder but 3 channel'):
        load_encoder(checkpoint=files['enc'], in_chans=3)


def test_channel_mismatch_without_recorded_in_chans_fails_loudly(files, tmp_path):
    folder = tmp_path / 'rgb'
    folder.mkdir()
    (folder / 'config.json').write_text(json.dumps(dict(architecture=NAME, num_classes=0,
                                                        model_args=dict(img_size=32, in_chans=3))))
    os.link(os.path.join(files['ours'], 'model.safetensors'), folder / 'model.safetensors')
    with pytest.raises(CheckpointError, match=r'trained on 1-channel images .* 3 channel'):
        load_encoder(checkpoint=f'local-dir:{folder}')


def test_class_token_layout_mismatch_fails_loudly(files, tmp_path):
    folder = tmp_path / 'cls'
    folder.mkdir()
    args = dict(STOCK_ARGS, class_token=True, global_pool='token')
    (folder / 'config.json').write_text(json.dumps(dict(architecture='vit_small_patch16_224', num_classes=0,
                                                        model_args=args)))
    os.link(os.path.join(files['ours'], 'model.safetensors'), folder / 'model.safetensors')
    with pytest.raises(CheckpointError, match='class/register-token layout differs'):
        load_encoder(checkpoint=f'local-dir:{folder}')


def test_registered_name_without_weights_says_what_to_do():
    with pytest.raises(CheckpointError, match='has no pretrained weights.*--checkpoint'):
        load_encoder(model=NAME, pretrained=True)


def test_missing_source_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ValueError, match='no encoder given'):
        load_encoder()
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_encoder(checkpoint=str(tmp_path / 'nope.pth'))
