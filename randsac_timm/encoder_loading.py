"""One way to get an encoder for evaluation, whatever form its weights come in, with a strict, loud load.

Accepted sources (`load_encoder`):

    checkpoint='out/checkpoint-last.pth'      a `train_pretrain.py` checkpoint ('encoder.' keys under 'model')
    checkpoint='out/encoder.safetensors'      an exported encoder (plain timm keys, metadata names the model)
    checkpoint='hf-hub:org/name' | 'local-dir:/path'   a timm hub folder (config.json + weights)
    model='randsac_vit_base', pretrained=True   a registered name whose pretrained cfg has weights
    model='hf-hub:org/name' | 'local-dir:/path', pretrained=True
    model='randsac_vit_micro_patch4_32'        random init (a baseline; reported as kind 'random_init')

timm's own `create_model(pretrained=True)` turns non-strict whenever the classifier size differs and then only
logs what it skipped; here every missing or unexpected key other than the new head raises `CheckpointError`,
as does a channel-count or class-token mismatch, with the file and the fix in the message.
"""
import hashlib
import json
import os
import sys
from typing import Any, Dict, Optional, Tuple

import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .checkpoint import CheckpointError, load_checkpoint

__all__ = ['load_encoder', 'sha256_file']

HUB_PREFIXES = ('hf-hub:', 'local-dir:')
HUB_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


def _unwrap(state: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    for key in ('model', 'state_dict', 'model_ema'):
        if key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def _from_pretrain_checkpoint(path: str) -> Tuple[str, Dict[str, Any], Dict[str, torch.Tensor]]:
    state = load_checkpoint(path)
    name, kwargs = state.get('encoder_name'), state.get('encoder_kwargs')
    if not name:
        raise CheckpointError(f'{path} has no encoder_name; it was written by an older train_pretrain.py. Export the '
                              f'encoder with randsac_timm.checkpoint.export_encoder and pass that file instead.')
    prefix = 'encoder.'
    weights = {k[len(prefix):]: v for k, v in state['model'].items() if k.startswith(prefix)}
    if not weights:
        raise CheckpointError(f'{path} holds no {prefix!r} keys under "model"; is it a RandSAC pretraining checkpoint?')
    return name, dict(kwargs or {}), weights


def _from_safetensors(path: str) -> Tuple[str, Dict[str, Any], Dict[str, torch.Tensor]]:
    with safe_open(path, framework='pt') as f:
        metadata = f.metadata() or {}
    name = metadata.get('encoder_name')
    if not name:
        raise CheckpointError(f'{path} has no "encoder_name" metadata, so the architecture is unknown; pass '
                              f'--model NAME with a local-dir: folder (config.json + weights) or re-export it with '
                              f'randsac_timm.checkpoint.export_encoder.')
    try:
        kwargs = json.loads(metadata.get('encoder_kwargs') or '{}')
    except json.JSONDecodeError as e:
        raise CheckpointError(f'{path}: metadata encoder_kwargs is not valid JSON ({e})') from e
    return name, kwargs, load_file(path)


def _from_hub(source: str) -> Tuple[str, Dict[str, Any], Dict[str, torch.Tensor], str]:
    """`hf-hub:org/name[@rev]` or `local-dir:/path` -> (architecture, model_args, weights, weights path)."""
    from timm.models._hub import load_model_config_from_hf, load_model_config_from_path  # no public alias in 1.0.x

    kind, ident = source.split(':', 1)
    if kind == 'local-dir':
        if not os.path.isdir(ident):
            raise FileNotFoundError(f'{source}: folder {ident} does not exist')
        _, arch, model_args = load_model_config_from_path(ident)
        with open(os.path.join(ident, 'config.json')) as f:
            raw = json.load(f)
        # timm drops a top-level model_args from a config without a 'pretrained_cfg' section (legacy layout)
        model_args = model_args or raw.get('model_args')
        files = [os.path.join(ident, f) for f in HUB_WEIGHT_FILES if os.path.isfile(os.path.join(ident, f))]
        if not files:
            raise FileNotFoundError(f'{source}: no {" or ".join(HUB_WEIGHT_FILES)} in {ident}')
        path = files[0]
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError

        _, arch, model_args = load_model_config_from_hf(ident)
        repo, _, revision = ident.partition('@')
        path = None
        for fname in HUB_WEIGHT_FILES:
            try:
                path = hf_hub_download(repo, fname, revision=revision or None)
                break
            except EntryNotFoundError:
                continue
        if path is None:
            raise FileNotFoundError(f'{source}: the repo has none of {", ".join(HUB_WEIGHT_FILES)}')
    weights = load_file(path) if path.endswith('.safetensors') else torch.load(path, map_location='cpu',
                                                                                  weights_only=True)
    return arch, dict(model_args or {}), _unwrap(weights), path


def _from_registered(name: str, overlay: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, torch.Tensor], str]:
    """Weights a registered name's pretrained cfg points at, in timm's order: state_dict > file > hf_hub_id > url."""
    cfg = timm.models.get_pretrained_cfg(name)
    cfg = dict(cfg.to_dict() if cfg is not None else {}, **(overlay or {}))
    if cfg.get('state_dict') is not None:
        return _unwrap(cfg['state_dict']), f'{name} (pretrained_cfg state_dict)'
    if cfg.get('file'):
        path = cfg['file']
        if path.endswith('.safetensors'):
            return load_file(path), path
        return _unwrap(torch.load(path, map_location='cpu', weights_only=True)), path
    if cfg.get('hf_hub_id'):
        _, _, weights, path = _from_hub(f'hf-hub:{cfg["hf_hub_id"]}')
        return weights, path
    if cfg.get('url'):
        weights = torch.hub.load_state_dict_from_url(cfg['url'], map_location='cpu', weights_only=True)
        return _unwrap(weights), cfg['url']
    raise CheckpointError(f'{name!r} has no pretrained weights (its pretrained cfg names no file, hub id or url); '
                          f'pass --checkpoint PATH (a train_pretrain.py checkpoint or encoder.safetensors) instead, '
                          f'or drop --pretrained for a random-init baseline.')


def _filter(weights: Dict[str, torch.Tensor], model: torch.nn.Module, where: str, arch: str) -> Dict[str, torch.Tensor]:
    """Run the model file's own `checkpoint_filter_fn` (pos-embed resampling, key renames; ours recomputes
    sin-cos) after checking the prefix-token layout, which those filters would otherwise mis-resample."""
    own = {k for k, _ in model.named_parameters()}
    for token in ('cls_token', 'reg_token'):
        if (token in own) != (token in weights):
            raise CheckpointError(
                f'weights in {where} do not fit {arch}: the class/register-token layout differs ({token} is '
                f'{"only in the model" if token in own else "only in the weights"}; RandSAC encoders have none). '
                f'Build the model with class_token=False, reg_tokens=0 (model_args) or use the matching name.')
    filter_fn = getattr(sys.modules[type(model).__module__], 'checkpoint_filter_fn', None)
    if filter_fn is None:
        return weights
    try:
        return filter_fn(weights, model)
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f'weights in {where} do not fit {arch}: the checkpoint filter failed ({e}); check that '
                              f'the architecture and its model_args match the weights.') from e


def _check_in_chans(weights: Dict[str, torch.Tensor], model: torch.nn.Module, where: str) -> None:
    w = weights.get('patch_embed.proj.weight')
    own = getattr(getattr(getattr(model, 'patch_embed', None), 'proj', None), 'weight', None)
    if w is not None and own is not None and w.shape[1] != own.shape[1]:
        raise CheckpointError(
            f'{where} was trained on {w.shape[1]}-channel images but the encoder is built for {own.shape[1]} '
            f'channel(s) (in_chans). Evaluate on a dataset with {w.shape[1]} channel(s) or use a matching encoder; '
            f'weights are never silently adapted.')


def _strict_load(model: torch.nn.Module, weights: Dict[str, torch.Tensor], where: str, arch: str) -> Dict[str, Any]:
    """Load `weights`, allowing only the classifier to be missing (new head) or dropped (old head)."""
    classifier = model.pretrained_cfg.get('classifier') or 'head'
    is_head = lambda k: k == classifier or k.startswith(classifier + '.')  # noqa: E731
    own = model.state_dict()
    dropped = sorted(k for k in weights if is_head(k) and (k not in own or own[k].shape != weights[k].shape))
    weights = {k: v for k, v in weights.items() if k not in dropped}
    _check_in_chans(weights, model, where)
    unexpected = sorted(set(weights) - set(own))
    missing = sorted(k for k in set(own) - set(weights) if not is_head(k))
    shapes = sorted(f'{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                    for k, v in weights.items() if k in own and own[k].shape != v.shape)
    if unexpected or missing or shapes:
        hint = ''
        if any('cls_token' in k or 'reg_token' in k for k in unexpected + missing):
            hint = ' The class/register-token layout differs (RandSAC encoders have none).'
        raise CheckpointError(
            f'weights in {where} do not fit {arch}: missing {missing or "none"}, unexpected {unexpected or "none"}, '
            f'shape mismatches {shapes or "none"}.{hint} Check that --model / the checkpoint name the architecture '
            f'the weights were trained with.')
    result = model.load_state_dict(weights, strict=False)
    return dict(missing_keys=list(result.missing_keys), unexpected_keys=[], dropped_head_keys=dropped)


def load_encoder(
        checkpoint: Optional[str] = None,
        model: Optional[str] = None,
        pretrained: bool = False,
        num_classes: int = 0,
        img_size: Optional[int] = None,
        in_chans: Optional[int] = None,
        drop_path_rate: float = 0.0,
        pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Build an encoder and load its weights strictly, from any source listed in the module docstring.

    Args:
        checkpoint: a `.pth` pretraining checkpoint, an exported `.safetensors` encoder, or `hf-hub:` / `local-dir:`.
        model: a registered timm name (or `hf-hub:` / `local-dir:` id); with `checkpoint` it must match the
            checkpoint's architecture.
        pretrained: load the weights `model` names; without it, `model` alone is a random-init baseline.
        num_classes: size of the new head (0 = none: the model returns pooled features).
        img_size: input size; the fixed sin-cos table is recomputed (None = the source's size).
        in_chans: input channels; a mismatch with the weights raises instead of adapting them.
        drop_path_rate: stochastic depth for fine-tuning.
        pretrained_cfg_overlay: overrides of a registered name's pretrained cfg (e.g. `dict(file=path)`).

    Returns:
        (encoder in eval mode, info) with info = {kind, path, sha256, architecture, model_kwargs, dropped_head_keys}.
    """
    if not checkpoint and not model:
        raise ValueError('no encoder given: pass --checkpoint PATH (pretraining checkpoint, encoder.safetensors, '
                         'hf-hub:ID or local-dir:PATH) or --model NAME [--pretrained]')
    path: Optional[str] = None
    weights: Optional[Dict[str, torch.Tensor]] = None
    kwargs: Dict[str, Any] = {}
    if checkpoint and checkpoint.startswith(HUB_PREFIXES):
        kind = checkpoint.split(':', 1)[0]
        arch, kwargs, weights, path = _from_hub(checkpoint)
    elif checkpoint:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f'--checkpoint {checkpoint} does not exist')
        if checkpoint.endswith('.safetensors'):
            kind = 'encoder_safetensors'
            arch, kwargs, weights = _from_safetensors(checkpoint)
        else:
            kind = 'pretrain_checkpoint'
            arch, kwargs, weights = _from_pretrain_checkpoint(checkpoint)
        path = checkpoint
    elif model.startswith(HUB_PREFIXES):
        if not pretrained:
            raise ValueError(f'--model {model} is a hub id: add --pretrained (a hub id only makes sense with weights)')
        kind = model.split(':', 1)[0]
        arch, kwargs, weights, path = _from_hub(model)
    else:
        arch, kind = model, 'registered' if pretrained else 'random_init'
        if not timm.is_model(arch):
            raise ValueError(f'unknown model {arch!r}; `timm.list_models("randsac*")` lists the RandSAC encoders')
        if pretrained:
            weights, path = _from_registered(arch, pretrained_cfg_overlay)
    if checkpoint and model and model != arch:
        raise CheckpointError(f'--model {model} does not match the architecture {arch!r} recorded in {checkpoint}; '
                              f'drop --model or pass the matching name.')
    src_chans = kwargs.get('in_chans')
    if in_chans is not None and src_chans is not None and in_chans != src_chans:
        raise CheckpointError(
            f'{path or arch} holds a {src_chans}-channel encoder but {in_chans} channel(s) were requested (the '
            f'dataset\'s channels); evaluate on a {src_chans}-channel dataset or use a matching encoder.')
    kwargs = dict(kwargs, num_classes=num_classes, drop_path_rate=drop_path_rate)
    if img_size is not None:
        kwargs['img_size'] = img_size
    if in_chans is not None:
        kwargs['in_chans'] = in_chans
    try:
        encoder = timm.create_model(arch, pretrained=False, **kwargs)
    except (TypeError, RuntimeError) as e:
        raise CheckpointError(f'cannot build {arch!r} with {kwargs} (from {path or "the registry"}): {e}') from e
    info: Dict[str, Any] = dict(kind=kind, path=path, sha256=None, architecture=arch,
                                model_kwargs={k: v for k, v in kwargs.items() if k != 'num_classes'},
                                dropped_head_keys=[], source=checkpoint or model)
    if weights is not None:
        where = path or arch
        load = _strict_load(encoder, _filter(weights, encoder, where, arch), where, arch)
        info['dropped_head_keys'] = load['dropped_head_keys']
        if path and os.path.isfile(path):
            info['sha256'] = sha256_file(path)
    return encoder.eval(), info

