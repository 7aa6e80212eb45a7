"""Files written before the package moved into subpackages still load.

`tests/fixtures/legacy/` holds a pretraining checkpoint, its exported encoder and the full pretraining model
(`hub export --full`), written by the flat layout (commit 7e951f9) with `tests/fixtures/make_legacy_files.py`.
Checkpoints are plain dicts and safetensors carry names, not module paths, so a move of modules must not break
them; these tests fail if it does (or if a rename of a registered model or of a state-dict key does).
"""
import json
import os
import shutil

import timm
import torch

import randsac_timm  # noqa: F401  registers the models
from randsac_timm import RandSACPretrain
from randsac_timm.hub.loading import init_pretrain_model, load_encoder
from randsac_timm.train.checkpoint import load_checkpoint, load_pretrain_model

LEGACY = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'legacy')
CHECKPOINT = os.path.join(LEGACY, 'checkpoint-last.pth')


def test_legacy_checkpoint_rebuilds_its_wrapper_and_trains(fmnist_batch):
    model, state = load_pretrain_model(CHECKPOINT)
    assert isinstance(model, RandSACPretrain) and state['step'] == 2
    assert model.encoder.embed_dim == 32 and len(model.encoder.blocks) == 2
    model.train()
    out = model(fmnist_batch[:8], generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()  # still a trainable model, not only a readable file
    assert all(p.grad is not None for p in model.decoder.parameters() if p.requires_grad)


def test_legacy_checkpoint_keeps_optimizer_and_rng_state():
    state = load_checkpoint(CHECKPOINT)
    assert state['format'] == 'randsac-timm/pretrain/v1'
    assert state['optimizer']['state'], 'the AdamW moments of the two steps'
    assert 'segments' in state['rng']['generators']


def test_legacy_encoder_safetensors_loads_strictly_and_matches_the_checkpoint():
    encoder, info = load_encoder(os.path.join(LEGACY, 'encoder.safetensors'))
    assert info['architecture'] == 'randsac_vit_micro_patch4_32'
    wrapper_encoder = {k[len('encoder.'):]: v for k, v in load_checkpoint(CHECKPOINT)['model'].items()
                       if k.startswith('encoder.')}
    for name, value in encoder.state_dict().items():
        torch.testing.assert_close(value, wrapper_encoder[name], rtol=0, atol=0, msg=name)


def test_legacy_full_model_loads_through_timm_and_init(tmp_path, fmnist_batch):
    folder = tmp_path / 'full'
    folder.mkdir()
    shutil.copy(os.path.join(LEGACY, 'full_model.safetensors'), folder / 'model.safetensors')
    shutil.copy(os.path.join(LEGACY, 'full_config.json'), folder / 'config.json')
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    reference, _ = load_pretrain_model(CHECKPOINT)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    # --init: a new run starting from the legacy full model
    with open(os.path.join(LEGACY, 'full_config.json')) as f:
        fresh = timm.create_model('randsac_pretrain_vit_micro_patch4_32', **json.load(f)['model_args'])
    init_pretrain_model(fresh, str(folder / 'model.safetensors'), 'randsac_pretrain_vit_micro_patch4_32')
    fresh.eval()
    g = torch.Generator().manual_seed(0)
    expected = reference(fmnist_batch[:4], generator=g).loss
    got = fresh(fmnist_batch[:4], generator=torch.Generator().manual_seed(0)).loss
    torch.testing.assert_close(got, expected)

