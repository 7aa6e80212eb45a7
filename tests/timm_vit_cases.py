"""timm's ViT-only model tests, pointed at the RandSAC encoders.

Not collected here: `tests/test_timm_models.py` copies it next to timm's own `tests/test_models.py` (from the sdist
of the installed timm) as `test_randsac_vit_cases.py` and runs both. timm selects three of its cases by name or
module, and our encoders fall outside those filters although they are ViTs:

- `test_model_default_cfgs_non_std`: timm runs it instead of `test_model_default_cfgs` on every `vit_*` / `deit*`
  (`NON_STD_FILTERS`), because a ViT's features are (B, N, C), not the (B, C, H, W) the standard case assumes;
- `test_model_forward_intermediates` and `test_model_forward_intermediates_features`: timm runs them per module
  (`FEAT_INTER_FILTERS` lists `vision_transformer`); ours register from `randsac_vit`.

Each case calls timm's own test function unchanged, so its checks and tolerances are timm's.
"""
import pytest
from timm import list_models

from . import test_models as timm_tests  # timm's module; importing it by name would re-collect its cases

ENCODERS = list_models('randsac_vit*')
ENCODERS_AND_TAGS = list_models('randsac_vit*', include_tags=True)
cfg_device = timm_tests.cfg_device  # timm's fixture: 'meta' where torch has device contexts


@pytest.mark.cfg
@pytest.mark.parametrize('model_name', ENCODERS_AND_TAGS)
def test_model_default_cfgs_non_std(model_name, cfg_device):
    timm_tests.test_model_default_cfgs_non_std(model_name, 1, cfg_device)


@pytest.mark.features
@pytest.mark.parametrize('model_name', ENCODERS)
def test_model_forward_intermediates(model_name):
    timm_tests.test_model_forward_intermediates(model_name, 1)


@pytest.mark.features
@pytest.mark.parametrize('model_name', ENCODERS)
def test_model_forward_intermediates_features(model_name):
    timm_tests.test_model_forward_intermediates_features(model_name, 1)
