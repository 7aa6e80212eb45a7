"""The project's own weights shipped inside the package: `randsac_vit_micro_patch4_32.fmnist`."""
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

NAME = 'randsac_vit_micro_patch4_32.fmnist'
WEIGHTS = os.path.join(PACKAGED_WEIGHTS_DIR, f'{NAME}.safetensors')
META = os.path.join(PACKAGED_WEIGHTS_DIR, f'{NAME}.json')


def test_packaged_fmnist_weights_load_offline_and_match_their_record(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with open(META) as f:
        meta = json.load(f)
    with open(WEIGHTS, 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest() == meta['sha256']
    assert os.path.getsize(WEIGHTS) < 8 * 2**20  # small enough to ship
    model = timm.create_model(NAME, pretrained=True)
    assert model.num_classes == 0 and model.in_chans == 1
    weights = load_file(WEIGHTS)
    state = model.state_dict()
    assert set(state) == set(weights)
    assert all(torch.equal(state[k], v) for k, v in weights.items())


@pytest.mark.slow
def test_packaged_fmnist_weights_reproduce_the_recorded_linear_probe(tmp_path):
    """The fast probe on full Fashion-MNIST (about 3 minutes on 2 cores) lands within 0.5 points of the record."""
    with open(META) as f:
        recorded = json.load(f)['evaluations'][0]
    results = run_linear_probe(parse_linear_args([
        '--model', NAME, '--pretrained', '--fast', '--no-progress', '--output-dir', str(tmp_path)]))
    assert abs(results['top1'] - recorded['top1']) <= 0.5
    assert abs(results['knn_top1'] - recorded['knn_top1']) <= 0.5
