"""Run configuration: one dataclass per script, filled from defaults < a YAML preset < the command line.

The command line is generated from the dataclass fields, so a field and its flag cannot drift apart:
each field `foo_bar` is `--foo-bar` (timm style) and also `--foo_bar` (MAE style); MAE's own names for a
few options (`--data_path`, `--input_size`, `--num_workers`) are accepted as aliases. Configs are stored
in checkpoints as plain dicts, so `torch.load(weights_only=True)` can read them.
"""
import argparse
import dataclasses
import math
import os
import sys
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, TypeVar

import yaml

__all__ = ['PretrainConfig', 'PRESET_DIR', 'list_presets', 'resolve_preset', 'load_yaml_config', 'build_parser',
           'config_from_args', 'make_config', 'parse_pretrain_args', 'check_pretrain_config', 'run_cli']

PRESET_DIR = os.path.join(os.path.dirname(__file__), 'configs')
DEFAULT_PRETRAIN_PRESET = 'fmnist_micro_cpu'

C = TypeVar('C')


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs. Values are per process unless stated."""

    # model
    model: str = 'randsac_pretrain_vit_micro_patch4_32'
    segments: Optional[str] = None  # paper notation, e.g. 'blob:11-5'; None = the model's default
    norm_pix_loss: bool = False  # per-patch normalised target (on in the paper's final recipes)
    skip_connections: bool = True
    # RandSAC skip decoder: 'level_norm', 'paper' or 'paper_last' (models/decoder.py); None = the model's default
    skip_memory: Optional[str] = None
    loss_first_segment: bool = False  # the first segment reads its own encoding, so it is not scored by default
    decoder: str = 'skip'  # RandSAC models: 'skip', 'plain' or 'two_stream' (paper Table 8)
    # RandSAC models: 'dense' (raster order, full masks), 'sparse' (rank-sorted, last segment dropped, block-sparse
    # SDPA) or 'flex' (same layout, FlexAttention; CUDA); same loss and gradients (randsac_timm/models/attention.py)
    attn_impl: str = 'dense'
    attn_block_size: Optional[int] = None  # query block of 'sparse' / 'flex' (default 32 / 128)
    mask_ratio: float = 0.75  # MAE models (mae_pretrain_*) only; they ignore segments / decoder / skip options
    drop_path: float = 0.0
    # decoder size, for RandSAC and MAE alike; None = the wrapper's (models/pretrain_wrapper.py PRETRAIN_ARGS, which
    # gives both objectives the same decoder)
    decoder_embed_dim: Optional[int] = None
    decoder_depth: Optional[int] = None
    decoder_num_heads: Optional[int] = None
    # data
    dataset: str = 'fashion_mnist'
    data_dir: Optional[str] = None
    # None = the model's own input size (32 for *_patch4_32, 28 for *_patch4_28, 224 for *_patch16_224); Fashion-MNIST
    # at 32 is padded 28 -> 32 (8x8 grid, the paper's), at 28 it is native (7x7 grid, no padding)
    img_size: Optional[int] = None
    crop_scale: Tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop area range (the paper's); 0 < lo <= hi <= 1
    max_train_samples: Optional[int] = None  # a seeded subset of the training split, for short runs
    download: bool = False  # torchvision download when online (CIFAR, Fashion-MNIST)
    workers: int = 2
    # optimisation (MAE conventions: lr = blr * effective batch / 256, schedule per step)
    batch_size: int = 256  # per process
    accum_iter: int = 1
    epochs: float = 800  # fractions allowed: a run sized to a CPU budget ends mid-epoch, its cosine schedule whole
    max_steps: Optional[int] = None  # stop after this many optimizer steps (smoke runs); the schedule is unchanged
    blr: float = 1.5e-4
    lr: Optional[float] = None  # absolute lr; overrides blr
    min_lr: float = 0.0
    warmup_epochs: float = 40.0
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.95)
    clip_grad: Optional[float] = None  # max grad norm; None = no clipping (the paper clips nothing)
    # runtime
    seed: int = 0
    device: str = 'auto'  # 'auto' = cuda when available (one GPU per torchrun process), else cpu
    amp: bool = False  # bf16 autocast (meant for CUDA; slow on CPU)
    compile: bool = False  # torch.compile the pretraining model
    # allow PyTorch's cuDNN attention on CUDA; off because its masked backward can return NaN gradients at 64-token
    # grids on H100/H200 (pytorch/pytorch#196678; randsac_timm.train.distributed.select_attention_backends)
    cudnn_attention: bool = False
    grad_checkpointing: bool = False
    output_dir: str = 'output/pretrain'
    resume: Optional[str] = None  # a checkpoint path; by default the output folder's checkpoint-last.pth resumes
    # start a NEW run from a full pretraining model's weights (encoder + decoder, strict): a '<wrapper>.<tag>',
    # hf-hub:ID, local-dir:PATH, full-model .safetensors or a checkpoint .pth; fresh optimizer and schedule from
    # step 0 (not --resume)
    init: Optional[str] = None
    auto_resume: bool = True
    save_every: int = 500  # optimizer steps between checkpoints (besides each epoch's end); 0 = epochs only
    keep_checkpoints: int = 2  # numbered checkpoints kept besides checkpoint-last.pth
    log_every: int = 20  # optimizer steps per log.jsonl record
    vis_every: int = 500  # optimizer steps between reconstruction PNGs (and one at the end); 0 = end only
    max_nonfinite: int = 5  # stop after this many non-finite losses in a row
    progress: bool = True  # tqdm progress bar on the primary process
    # online evaluation (train/online_eval.py, docs/training.md): kNN top-1 of the encoder on fixed subsets, as
    # 'eval' records in log.jsonl, at step 0, on this schedule and at the last step, and training-curves.png at the end
    eval_every: float = 0.0  # epochs between evaluations (fractions allowed); 0 = not by epochs
    eval_every_minutes: float = 0.0  # minutes of wall-clock between evaluations; 0 = not by time; both 0 = off
    eval_train_samples: int = 5000  # the kNN bank: a seeded subset of the TRAIN split, eval transform
    eval_test_samples: int = 2000  # the queries: a seeded subset of the TEST split
    eval_lbfgs: bool = False  # also the converged L-BFGS logistic readout, fitted on the bank, scored on the queries
    # seed that draws the bank and the queries; None = --seed. Fix it to score runs of several seeds on the same images
    eval_seed: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# MAE / other spellings accepted on the command line and in YAML files
ALIASES: Dict[str, str] = {
    'data_path': 'data_dir',
    'input_size': 'img_size',
    'num_workers': 'workers',
    'norm_pix': 'norm_pix_loss',
    'drop_path_rate': 'drop_path',
    'base_lr': 'blr',
    'warmup': 'warmup_epochs',
}


def list_presets() -> List[str]:
    return sorted(f[:-5] for f in os.listdir(PRESET_DIR) if f.endswith('.yaml'))


def resolve_preset(name_or_path: str) -> str:
    """A YAML path, or the name of a preset shipped in `randsac_timm/train/configs/`."""
    if os.path.isfile(name_or_path):
        return name_or_path
    candidate = os.path.join(PRESET_DIR, f'{name_or_path}.yaml')
    if os.path.isfile(candidate):
        return candidate
    raise FileNotFoundError(
        f'config {name_or_path!r} is neither a YAML file nor a preset; presets: {", ".join(list_presets())}')


def load_yaml_config(path: str, cls: Type[C]) -> Dict[str, Any]:
    """Read a YAML preset into field values of `cls`, rejecting unknown keys by name."""
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f'{path}: expected a mapping of option: value, got {type(values).__name__}')
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        name = ALIASES.get(key.replace('-', '_'), key.replace('-', '_'))
        if name not in names:
            raise ValueError(f'{path}: unknown option {key!r}; valid options: {", ".join(sorted(names))}')
        out[name] = value
    return out


def _field_types(cls: Type) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> Tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def _none_or(convert):
    def parse(text: str):
        return None if text.lower() in ('none', 'null', '') else convert(text)
    parse.__name__ = getattr(convert, '__name__', 'value')
    return parse


def build_parser(cls: Type, description: str, help_texts: Optional[Dict[str, str]] = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per dataclass field (defaults suppressed, so only given flags override)."""
    parser = argparse.ArgumentParser(description=description, argument_default=argparse.SUPPRESS)
    parser.add_argument('--config', '-c', default=None,
                        help=f'YAML file or preset name (presets: {", ".join(list_presets())})')
    inverse_aliases: Dict[str, List[str]] = {}
    for alias, target in ALIASES.items():
        inverse_aliases.setdefault(target, []).append(alias)
    help_texts = help_texts or {}
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap_optional(_field_types(cls)[f.name])
        names = [f'--{f.name.replace("_", "-")}']
        for spelling in [f.name] + inverse_aliases.get(f.name, []):
            flag = f'--{spelling}'
            if flag not in names:
                names.append(flag)
        kwargs: Dict[str, Any] = dict(dest=f.name, help=help_texts.get(f.name, f'default: {f.default!r}'))
        if tp is bool:
            kwargs['action'] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) in (tuple, Tuple):
            kwargs.update(nargs=len(typing.get_args(tp)), type=float, metavar='X')
        else:
            kwargs['type'] = _none_or(tp) if optional else tp
        parser.add_argument(*names, **kwargs)
    return parser


def config_from_args(cls: Type[C], args: argparse.Namespace, default_preset: Optional[str] = None) -> C:
    """Dataclass defaults, then the YAML preset (`--config`, else `default_preset`), then explicit flags."""
    values: Dict[str, Any] = {}
    preset = getattr(args, 'config', None) or default_preset
    if preset:
        values.update(load_yaml_config(resolve_preset(preset), cls))
    values.update({k: v for k, v in vars(args).items() if k != 'config'})
    return make_config(cls, values)


def make_config(cls: Type[C], values: Dict[str, Any]) -> C:
    """Build `cls` from plain values (YAML / checkpoint dicts): lists become tuples where the field is a tuple."""
    types = _field_types(cls)
    kwargs = {}
    for name, value in values.items():
        tp, _ = _unwrap_optional(types[name])
        if typing.get_origin(tp) in (tuple, Tuple) and isinstance(value, (list, tuple)):
            value = tuple(float(v) for v in value)
        kwargs[name] = value
    return cls(**kwargs)


def parse_pretrain_args(argv: Optional[Sequence[str]] = None) -> PretrainConfig:
    parser = build_parser(PretrainConfig, 'RandSAC pretraining (timm plugin). Without --config it runs the '
                                          f'default CPU preset {DEFAULT_PRETRAIN_PRESET!r} on Fashion-MNIST.',
                          {'img_size': "default: the model's own input size (32 for *_patch4_32, 28 for *_patch4_28)"})
    args = parser.parse_args(argv)
    return config_from_args(PretrainConfig, args, default_preset=DEFAULT_PRETRAIN_PRESET)


# Numbers a run cannot use outside these ranges: (lowest accepted, whether the lowest itself is accepted). Checked
# before any work, so a bad value fails in a second (not after the data set loads, or silently as a 0-step run).
_PRETRAIN_RANGES: Dict[str, Tuple[float, bool]] = {
    'batch_size': (1, True), 'accum_iter': (1, True), 'epochs': (0, False), 'max_steps': (1, True),
    'max_train_samples': (1, True), 'img_size': (1, True), 'log_every': (1, True), 'max_nonfinite': (1, True),
    'workers': (0, True), 'save_every': (0, True), 'vis_every': (0, True), 'keep_checkpoints': (0, True),
    'blr': (0, False), 'lr': (0, False), 'clip_grad': (0, False), 'min_lr': (0, True), 'warmup_epochs': (0, True),
    'weight_decay': (0, True), 'drop_path': (0, True), 'eval_every': (0, True), 'eval_every_minutes': (0, True),
    'eval_train_samples': (1, True), 'eval_test_samples': (1, True),
    'decoder_embed_dim': (1, True), 'decoder_depth': (1, True), 'decoder_num_heads': (1, True),
}


def check_pretrain_config(cfg: PretrainConfig) -> None:
    """Raise ValueError naming the option, its value and what is accepted, for values no run can use."""
    import timm  # local: building timm's registry is not needed to parse flags

    for name, (low, inclusive) in _PRETRAIN_RANGES.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        # a YAML preset can give a string ('1e-4' is one in YAML 1.1: write 1.0e-4) or a bool
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value < low or (value == low and not inclusive):
            kind = 'an integer' if _unwrap_optional(_field_types(type(cfg))[name])[0] is int else 'a number'
            raise ValueError(f'--{name.replace("_", "-")} {value!r} is not accepted: expected {kind} '
                             f'{">=" if inclusive else ">"} {low:g}')
    if cfg.eval_lbfgs and not (cfg.eval_every or cfg.eval_every_minutes):
        raise ValueError('--eval-lbfgs is part of the online evaluation, which is off: set --eval-every N (epochs) '
                         'or --eval-every-minutes M')
    if not timm.is_model(cfg.model) or not cfg.model.startswith(('randsac_pretrain', 'mae_pretrain')):
        names = timm.list_models('randsac_pretrain*') + timm.list_models('mae_pretrain*')
        raise ValueError(f'--model {cfg.model!r} is not a registered pretraining model; accepted: {", ".join(names)}')
    if cfg.decoder_embed_dim is not None or cfg.decoder_num_heads is not None:
        from randsac_timm.models.pretrain_wrapper import PRETRAIN_ARGS

        default = PRETRAIN_ARGS.get('randsac_' + cfg.model.split('_pretrain_', 1)[1], {})
        dim = cfg.decoder_embed_dim or default.get('decoder_embed_dim')
        heads = cfg.decoder_num_heads or default.get('decoder_num_heads')
        if dim and heads and dim % heads:
            raise ValueError(f'--decoder-embed-dim {dim} is not divisible by --decoder-num-heads {heads}: give a width '
                             f'that is a multiple of the head count (or set --decoder-num-heads)')


def resolve_pretrain_config(cfg: PretrainConfig) -> PretrainConfig:
    """`cfg` with its defaults that depend on the model filled in: `img_size` None becomes the encoder's own input
    size, so a run (its data, checkpoint and log) always records the size it trained at."""
    if cfg.img_size is not None:
        return cfg
    from randsac_timm.models.randsac_vit import ENCODER_ARGS

    encoder = 'randsac_' + cfg.model.split('_pretrain_', 1)[1]
    return dataclasses.replace(cfg, img_size=int(ENCODER_ARGS[encoder]['img_size']))


def run_cli(prog: str, main: Callable[[], Any], user_errors: Tuple[Type[BaseException], ...] = ()) -> int:
    """Run a script's `main`; a user's mistake (a bad value, a missing file or data set, an unusable checkpoint)
    ends with one line `prog: error: ...` on stderr and exit status 2, like argparse's own errors, not a traceback.

    ValueError and OSError (FileNotFoundError, ...) are what this package raises for those, each with a message
    naming the value and the fix. `RANDSAC_TRACEBACK=1` shows the full traceback instead.
    """
    try:
        main()
    except (ValueError, OSError, *user_errors) as e:
        if os.environ.get('RANDSAC_TRACEBACK', '') not in ('', '0'):
            raise
        message = ' '.join(str(e).split()) or type(e).__name__
        print(f'{prog}: error: {message}', file=sys.stderr)
        return 2
    return 0
