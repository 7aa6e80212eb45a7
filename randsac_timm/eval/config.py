"""Run configurations of the evaluation scripts (`eval_linear.py`, `eval_finetune.py`).

Same machinery as pretraining (`randsac_timm.train.config`): each field `foo_bar` is the flag `--foo-bar`, a YAML file
(`--config`) may set any field, and flags override it. Defaults are the paper's protocols (DESIGN.md section 5).
"""
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from ..train.config import build_parser, config_from_args

__all__ = ['LinearProbeConfig', 'FinetuneConfig', 'parse_linear_args', 'parse_finetune_args']


@dataclass
class _EncoderSource:
    checkpoint: Optional[str] = None  # pretraining .pth, encoder.safetensors, hf-hub:ID or local-dir:PATH
    model: Optional[str] = None  # registered name or hub id; alone (without --pretrained) = random-init baseline
    pretrained: bool = False


@dataclass
class LinearProbeConfig(_EncoderSource):
    """Linear probe (MoCo v3 / MAE protocol) plus kNN and raw-pixel baselines on the same split."""

    # data
    dataset: str = 'fashion_mnist'
    data_dir: Optional[str] = None
    img_size: Optional[int] = None  # None = the encoder's input size
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    download: bool = False
    workers: int = 2
    # protocol
    fast: bool = False  # cache un-augmented features once and train the head on them (CPU); default: paper crops
    epochs: int = 90
    warmup_epochs: float = 10.0
    batch_size: int = 4096  # the paper's; lr follows it
    blr: float = 0.1  # lr = blr * batch_size / 256
    lr: Optional[float] = None  # absolute lr; overrides blr
    min_lr: float = 0.0
    momentum: float = 0.9
    trust_coeff: float = 0.001
    weight_decay: float = 0.0
    feature_batch_size: int = 256  # images per encoder forward when extracting features
    knn: bool = True
    knn_k: int = 20
    knn_t: float = 0.07
    pixel_baselines: bool = True  # the same head and kNN on flattened normalised pixels
    lbfgs: bool = True  # converged L-BFGS logistic readouts (encoder, each block, pixels, PCA pixels), un-augmented
    # runtime
    seed: int = 0
    device: str = 'auto'
    amp: bool = False  # bf16 autocast of the encoder (CUDA)
    output_dir: str = 'output/linear'
    progress: bool = True

    def to_dict(self) -> Dict[str, Any]:
        return _to_dict(self)


@dataclass
class FinetuneConfig(_EncoderSource):
    """End-to-end fine-tuning (MAE / BEiT recipe, the paper's Table 16)."""

    # data
    dataset: str = 'fashion_mnist'
    data_dir: Optional[str] = None
    img_size: Optional[int] = None
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    download: bool = False
    workers: int = 2
    # optimisation
    epochs: int = 100
    warmup_epochs: float = 5.0
    max_steps: Optional[int] = None  # stop after this many optimizer steps (smoke runs); the schedule is unchanged
    batch_size: int = 1024  # per process; lr follows the effective batch (the paper's 1024 in total)
    blr: float = 5e-4
    lr: Optional[float] = None
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.65
    clip_grad: Optional[float] = None
    drop_path: float = 0.1
    # augmentation and regularisation
    auto_augment: Optional[str] = 'rand-m9-mstd0.5-inc1'  # RandAugment (9, 0.5); 'none' disables
    reprob: float = 0.25  # random erasing (MAE's released fine-tuning recipe)
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1
    model_ema: bool = False
    model_ema_decay: float = 0.9999
    eval_every: int = 10  # epochs between evaluations (and always at the end); 0 = end only
    # runtime
    seed: int = 0
    device: str = 'auto'
    amp: bool = False  # bf16 autocast on CUDA
    output_dir: str = 'output/finetune'
    progress: bool = True

    def to_dict(self) -> Dict[str, Any]:
        return _to_dict(self)


def _to_dict(cfg: Any) -> Dict[str, Any]:
    return {f.name: list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v for f in dataclasses.fields(cfg)}


def parse_linear_args(argv: Optional[Sequence[str]] = None) -> LinearProbeConfig:
    parser = build_parser(LinearProbeConfig, 'RandSAC linear probe, kNN and raw-pixel baselines (frozen encoder).')
    return config_from_args(LinearProbeConfig, parser.parse_args(argv))


def parse_finetune_args(argv: Optional[Sequence[str]] = None) -> FinetuneConfig:
    parser = build_parser(FinetuneConfig, 'RandSAC end-to-end fine-tuning with timm (layer decay, RandAugment, '
                                          'mixup/cutmix, EMA).')
    return config_from_args(FinetuneConfig, parser.parse_args(argv))
