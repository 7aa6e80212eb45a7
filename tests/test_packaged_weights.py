"""The project's own encoder weights shipped inside the package (`randsac_timm/hub/weights/<encoder>.<tag>.json`
beside its `.safetensors`): `randsac_vit_micro_patch4_32.fmnist`, `randsac_vit_micro_patch4_28.fmnist`, ...
Every packaged encoder is checked, so new weights are tested the day they land."""
import hashlib
import json
import os

import pytest
import timm
import torch
from safetensors.torch import load_file

import randsac_timm  # noqa: F401
from randsac_timm.eval.config import parse_linear_args
from randsac_timm.eval.linear_probe import run_linear_probe
from randsac_timm.hub.names import PACKAGED_WEIGHTS_DIR

# encoders only: the full pretraining models (`randsac_pretrain_*`, `--full`) are tested in test_pretrain_zoo.py
NAMES = sorted(f[:-len('.json')] for f in os.listdir(PACKAGED_WEIGHTS_DIR)
               if f.endswith('.json') and not f.startswith(('randsac_pretrain_', 'mae_pretrain_')))


def _meta(name):
    with open(os.path.join(PACKAGED_WEIGHTS_DIR, f'{name}.json')) as f:
        return json.load(f)


def test_the_fmnist_weights_of_record_are_packaged():
    assert 'randsac_vit_micro_patch4_32.fmnist' in NAMES  # the older tag keeps loading beside newer weights


@pytest.mark.parametrize('name', NAMES)
def test_packaged_weights_load_offline_and_match_their_record(monkeypatch, name):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    meta, weights_file = _meta(name), os.path.join(PACKAGED_WEIGHTS_DIR, f'{name}.safetensors')
    assert meta['name'] == name
    with open(weights_file, 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest() == meta['sha256']
    assert os.path.getsize(weights_file) < 8 * 2**20  # small enough to ship
    model = timm.create_model(name, pretrained=True)
    assert model.num_classes == 0 and model.in_chans == 1
    weights = load_file(weights_file)
    state = model.state_dict()
    assert set(state) == set(weights)
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    # a tag builds at the input size its weights were trained at (28x28 weights at 28x28, not the variant's 32x32)
    assert tuple(model.patch_embed.img_size) == tuple(meta['config']['model_args']['img_size'])
    with torch.no_grad():
        assert model(torch.randn(1, 1, *model.patch_embed.img_size)).shape == (1, model.num_features)


@pytest.mark.slow
@pytest.mark.parametrize('name', NAMES)
def test_packaged_weights_reproduce_the_recorded_linear_probe(tmp_path, name):
    """The fast probe on full Fashion-MNIST (about 3 minutes on 2 cores) lands within 0.5 points of the record."""
    recorded = _meta(name)['evaluations'][0]
    results = run_linear_probe(parse_linear_args([
        '--model', name, '--pretrained', '--fast', '--no-progress', '--output-dir', str(tmp_path)]))
    assert abs(results['top1'] - recorded['top1']) <= 0.5
    assert abs(results['knn_top1'] - recorded['knn_top1']) <= 0.5
