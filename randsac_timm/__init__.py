"""RandSAC (Random Segments with Autoregressive Coding) for timm.

Importing the package registers the `randsac_vit_*` encoders, the `randsac_pretrain_*` wrappers and the
`mae_pretrain_*` baselines with timm, so `timm.create_model('randsac_vit_base')` works like any native timm model.

Layout (one role per subpackage):
    models/   the paper's method as timm models: segments, masks, attention, encoders, decoder, wrappers, loss
    train/    pretraining plumbing: configs and presets, data, the training loop, checkpoints, torchrun
    eval/     linear probe (LARS and converged), fine-tuning, results.json
    hub/      the model zoo: weight loading from every source, export / push / package, model cards, weights
    visualize.py  reconstruction pictures
"""
from .hub.loading import MissingPretrainedWeights, load_encoder
from .hub.publish import load_pretrained_encoder
from .models import mae_pretrain, randsac_pretrain, randsac_vit  # noqa: F401  (registers the models with timm)
from .models.mae_pretrain import MAEPretrain, create_mae_pretrain
from .models.masks import SegmentMasks, build_masks
from .models.randsac_pretrain import RandSACOutput, RandSACPretrain, create_randsac_pretrain
from .models.randsac_vit import RandSACVisionTransformer
from .models.segments import SegmentSpec, parse_segments, sample_rank, sample_segments
from .train.config import PretrainConfig
from .train.engine import TrainResult, train

__version__ = '0.1.0'

__all__ = [
    'MAEPretrain', 'MissingPretrainedWeights', 'PretrainConfig', 'RandSACOutput', 'RandSACPretrain',
    'RandSACVisionTransformer', 'SegmentMasks', 'SegmentSpec', 'TrainResult', 'build_masks', 'create_mae_pretrain',
    'create_randsac_pretrain', 'load_encoder', 'load_pretrained_encoder', 'parse_segments', 'sample_rank',
    'sample_segments', 'train',
]
