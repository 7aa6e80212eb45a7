"""RandSAC (Random Segments with Autoregressive Coding) for timm.

Importing the package registers the `randsac_vit_*` encoders, the `randsac_pretrain_*` wrappers and the
`mae_pretrain_*` baselines with timm, so `timm.create_model('randsac_vit_base')` works like any native timm model.
"""
from . import mae_pretrain, randsac_pretrain, randsac_vit  # noqa: F401  (registers the models with timm)
from .mae_pretrain import MAEPretrain, create_mae_pretrain
from .masks import SegmentMasks, build_masks
from .randsac_pretrain import RandSACOutput, RandSACPretrain, create_randsac_pretrain
from .randsac_vit import RandSACVisionTransformer
from .segments import SegmentSpec, parse_segments, sample_rank, sample_segments

__version__ = '0.1.0'

__all__ = [
    'MAEPretrain', 'RandSACOutput', 'RandSACPretrain', 'RandSACVisionTransformer', 'SegmentMasks', 'SegmentSpec',
    'build_masks', 'create_mae_pretrain', 'create_randsac_pretrain', 'parse_segments', 'sample_rank', 'sample_segments',
]
