"""The one naming scheme of published weights: Hub repo `randsac-timm/<model>.<tag>`, registered with timm as
`<model>.<tag>`, and the folder of the weights shipped inside the package."""
import os
from typing import Dict, Tuple

__all__ = ['HUB_ORG', 'PACKAGED_WEIGHTS_DIR', 'PUBLISHED_TAGS', 'hub_repo_id']

HUB_ORG = 'randsac-timm'
# Weights shipped inside the package: `<model>.<tag>.safetensors` + `<model>.<tag>.json` (`hub package`).
PACKAGED_WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights')
# Tags published on the Hub but not packaged, registered with `hf_hub_id` only: {encoder: (tag, ...)}. None yet.
PUBLISHED_TAGS: Dict[str, Tuple[str, ...]] = {}


def hub_repo_id(model_name: str, tag: str) -> str:
    """The Hub repo of `<model_name>.<tag>`, e.g. 'randsac-timm/randsac_vit_micro_patch4_32.fmnist'."""
    return f'{HUB_ORG}/{model_name}.{tag}'
