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

Full pretraining models (encoder + decoder + skip weights, for continued pretraining) load the same strict way
(`read_pretrain_source`, `load_pretrain_state`): a registered `<wrapper>.<tag>`, `hf-hub:` / `local-dir:` (a
`python -m randsac_timm.hub export --full` folder), a full-model `.safetensors` or a `train_pretrain.py` checkpoint.
`create_pretrained_wrapper` is what the `randsac_pretrain_*` / `mae_pretrain_*` entrypoints run for
`pretrained=True`, and `pretrain_default_cfgs` declares their tags.
"""
import hashlib
import json
import os
import sys
import warnings
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..train.checkpoint import CheckpointError, load_checkpoint
from .names import PACKAGED_WEIGHTS_DIR, hub_repo_id

__all__ = [
    'load_encoder', 'sha256_file', 'FULL_MODEL_FORMAT', 'read_pretrain_source', 'load_pretrain_state',
    'init_pretrain_model', 'create_pretrained_wrapper', 'pretrain_default_cfgs', 'register_packaged_pretrain_weights',
]

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
                              f'encoder with randsac_timm.train.checkpoint.export_encoder and pass that file instead.')
    prefix = 'encoder.'
    weights = {k[len(prefix):]: v for k, v in state['model'].items() if k.startswith(prefix)}
    if not weights:
        raise CheckpointError(f'{path} holds no {prefix!r} keys under "model"; is it a RandSAC pretraining checkpoint?')
    return name, dict(kwargs or {}), weights


def _json_metadata(path: str, metadata: Dict[str, str], key: str) -> Dict[str, Any]:
    """A JSON-encoded kwargs entry of a safetensors file's metadata ({} when absent)."""
    try:
        return json.loads(metadata.get(key) or '{}')
    except json.JSONDecodeError as e:
        raise CheckpointError(f'{path}: metadata {key} is not valid JSON ({e})') from e


def _from_safetensors(path: str) -> Tuple[str, Dict[str, Any], Dict[str, torch.Tensor]]:
    from safetensors import SafetensorError

    try:
        with safe_open(path, framework='pt') as f:
            metadata = f.metadata() or {}
    except SafetensorError as e:  # a truncated or foreign file: name it rather than show the parser's error alone
        raise CheckpointError(f'{path} is not a readable safetensors file ({e}): it is corrupt or truncated; '
                              f'export or download it again') from e
    name = metadata.get('encoder_name')
    if not name:
        raise CheckpointError(f'{path} has no "encoder_name" metadata, so the architecture is unknown; pass '
                              f'--model NAME with a local-dir: folder (config.json + weights) or re-export it with '
                              f'randsac_timm.train.checkpoint.export_encoder.')
    return name, _json_metadata(path, metadata, 'encoder_kwargs'), load_file(path)


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



# ----------------------------------------------------------------------------------------------------
# Full pretraining models: the wrapper's whole state dict (encoder.*, decoder.*, ...) as safetensors whose metadata
# holds what rebuilds it: `randsac_format`, `model_name` (registered wrapper), `model_kwargs` (JSON), `encoder_name`.

FULL_MODEL_FORMAT = 'randsac-timm/full-pretrain/v1'


def _objective(model_name: str) -> str:
    return 'MAE' if str(model_name).startswith('mae_') else 'RandSAC'


def _full_safetensors(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    from safetensors import SafetensorError

    try:
        with safe_open(path, framework='pt') as f:
            metadata = f.metadata() or {}
        weights = load_file(path)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f'{path} is not a readable safetensors file ({e}): it is corrupt or truncated; '
                              f'download or export it again') from e
    if not metadata.get('model_name'):
        what = 'an encoder alone (no decoder)' if metadata.get('encoder_name') else 'no "model_name" metadata'
        raise CheckpointError(
            f'{path} holds {what}; a full pretraining model is needed: export one with `python -m randsac_timm.hub '
            f'export CHECKPOINT DIR --full`, or pass a train_pretrain.py checkpoint (.pth).')
    kwargs = _json_metadata(path, metadata, 'model_kwargs')
    return weights, dict(model_name=metadata['model_name'], model_kwargs=kwargs, hf_hub_id=metadata.get('hub_repo_id'))


def _hub_full_file(repo: str, cache_dir: Optional[str] = None) -> str:
    """`model.safetensors` of `org/name[@revision]` through the Hub cache (offline once cached)."""
    from huggingface_hub import hf_hub_download

    repo_id, _, revision = repo.partition('@')
    return hf_hub_download(repo_id, 'model.safetensors', revision=revision or None, cache_dir=cache_dir)


def read_pretrain_source(
        source: str, cache_dir: Optional[str] = None) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Weights and record of a full pretraining model.

    Args:
        source: a registered '<wrapper>.<tag>' with weights, 'hf-hub:org/name[@rev]', 'local-dir:/path' (an
            `export --full` folder), a full-model `.safetensors` file, or a `train_pretrain.py` checkpoint (`.pth`).
        cache_dir: Hugging Face cache override for `hf-hub:`.

    Returns:
        (state dict, info) with info = {source, path, sha256, model_name, model_kwargs, hf_hub_id}.
    """
    hf_hub_id = None
    if source.startswith('hf-hub:'):
        hf_hub_id = source.split(':', 1)[1]
        path = _hub_full_file(hf_hub_id, cache_dir)
    elif source.startswith('local-dir:'):
        path = os.path.join(source.split(':', 1)[1], 'model.safetensors')
    elif os.path.exists(source) or source.endswith(('.safetensors', '.pth', '.pt')):
        path = source
    else:
        arch, _, tag = source.partition('.')
        if not tag or not timm.is_model(arch):
            raise ValueError(f'{source!r} is neither a file nor a registered <wrapper>.<tag> (e.g. '
                             f'randsac_pretrain_vit_micro_patch4_32.fmnist), hf-hub:ORG/NAME or local-dir:PATH')
        cfg = _wrapper_cfg(arch, tag, None)
        path, hf_hub_id = _cfg_weights(cfg, source, cache_dir)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{source}: {path} does not exist')
    if path.endswith('.safetensors'):
        weights, info = _full_safetensors(path)
    else:
        state = load_checkpoint(path)
        weights, info = state['model'], dict(model_name=state['model_name'], model_kwargs=state['model_kwargs'])
    info = dict(info, source=source, path=path, sha256=sha256_file(path))
    info['hf_hub_id'] = hf_hub_id or info.get('hf_hub_id')
    return weights, info


def load_pretrain_state(model: torch.nn.Module, weights: Dict[str, torch.Tensor], where: str, source_model: str,
                        target_model: str) -> None:
    """Load a full wrapper state strictly; a missing, unexpected or misshapen key raises naming both models."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    shapes = sorted(f'{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}'
                    for k, v in weights.items() if k in own and own[k].shape != v.shape)
    if missing or unexpected or shapes:
        def few(keys):
            return f'{keys[:4]}{f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""}' if keys else 'none'
        raise CheckpointError(
            f'{where} holds {source_model} weights that do not fit {target_model}: missing {few(missing)}, '
            f'unexpected {few(unexpected)}, shape mismatches {few(shapes)}. Build the model with the same '
            f'architecture, decoder kind and sizes, img_size and in_chans as the weights.')
    model.load_state_dict(weights, strict=True)


def _describe(model_name: str, kwargs: Dict[str, Any], model: Optional[torch.nn.Module] = None) -> str:
    kind = getattr(model, 'decoder_kind', None) if model is not None else kwargs.get('decoder')
    if _objective(model_name) == 'RandSAC':
        kind = kind or ('skip' if kwargs.get('skip_connections', True) else 'plain')
        if kind == 'skip' and kwargs.get('skip_connections') is False:
            kind = 'plain'
        return f'{model_name} (decoder {kind!r})'
    return model_name


def init_pretrain_model(model: torch.nn.Module, source: str, model_name: str) -> Dict[str, Any]:
    """Load every wrapper weight of `source` (see `read_pretrain_source`) into `model` strictly: `--init`.

    Returns:
        the record a run keeps (source, path, sha256, model_name, model_kwargs, hf_hub_id).
    """
    weights, info = read_pretrain_source(source)
    source_desc = _describe(info['model_name'], info['model_kwargs'])
    target_desc = _describe(model_name, {}, model)
    if _objective(info['model_name']) != _objective(model_name):
        raise CheckpointError(f'--init {source} is a {_objective(info["model_name"])} model ({source_desc}) but this '
                              f'run trains {target_desc}; pass --model {info["model_name"]} or another --init.')
    load_pretrain_state(model, weights, f'--init {source}', source_desc, f'this run\'s {target_desc}')
    return info


class MissingPretrainedWeights(RuntimeError, ValueError):
    """`pretrained=True` on a wrapper or tag without weights: a RuntimeError as timm raises for an unknown tag, and a
    ValueError (a user's input), which the scripts report in one line."""


def _wrapper_cfg(arch: str, tag: Optional[str], overlay: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    try:
        cfg = timm.models.resolve_pretrained_cfg(arch, tag, overlay)
    except RuntimeError as e:  # a tag that is not registered
        raise MissingPretrainedWeights(_missing_pretrain_message(arch, tag, declared=False)) from e
    return cfg.to_dict(remove_source=False)


def _cfg_weights(cfg: Dict[str, Any], name: str, cache_dir: Optional[str]) -> Tuple[str, Optional[str]]:
    """(weights path, hub id) of a wrapper's pretrained cfg, in timm's order: file > hf_hub_id."""
    if cfg.get('file'):
        path = cfg['file']
        # local-dir: timm puts the folder in `file`
        return (os.path.join(path, 'model.safetensors') if os.path.isdir(path) else path), cfg.get('hf_hub_id')
    if cfg.get('hf_hub_id'):
        return _hub_full_file(cfg['hf_hub_id'], cache_dir), cfg['hf_hub_id']
    arch, tag = cfg.get('architecture') or name.partition('.')[0], cfg.get('tag')
    raise MissingPretrainedWeights(_missing_pretrain_message(arch, tag, declared=bool(tag)))


def _missing_pretrain_message(arch: str, tag: Optional[str], declared: bool) -> str:

    name, new_tag = (f'{arch}.{tag}' if tag else arch), tag or '<tag>'
    how = (f'produce them from a pretraining checkpoint with `python -m randsac_timm.hub package '
           f'OUT/checkpoint-last.pth --full --tag {new_tag}` (or publish with `hub push ... --full`, then load '
           f'timm.create_model("hf-hub:{hub_repo_id(arch, new_tag)}", pretrained=True)); see docs/model_zoo.md.')
    if declared:
        return (f'the weights of {name} are not packaged yet (expected '
                f'{os.path.join(PACKAGED_WEIGHTS_DIR, name + ".safetensors")}): {how}')
    available = [n for n in timm.list_pretrained(f'{arch}*') if '.' in n]
    return (f'no pretrained weights exist for {name!r}; full pretraining models in this install: '
            f'{", ".join(available) or "none"}. To make {arch}.{new_tag}: {how} Use pretrained=False for random init.')


def create_pretrained_wrapper(arch: str, build: Callable[..., torch.nn.Module], pretrained: bool,
                              kwargs: Dict[str, Any]) -> torch.nn.Module:
    """Entrypoint body of a registered pretraining wrapper: `build(**kwargs)`, or with `pretrained=True` the full
    model of its tag (packaged file, or the Hub), rebuilt from the kwargs recorded with the weights (the caller's
    kwargs override them) and loaded strictly."""
    asked = kwargs.pop('pretrained_cfg', None)
    overlay = kwargs.pop('pretrained_cfg_overlay', None)
    kwargs.pop('pretrained_model_args', None)  # timm's copy of config.json model_args, also given as kwargs
    cache_dir = kwargs.pop('cache_dir', None)
    if not pretrained:
        return build(**kwargs)
    if isinstance(asked, dict) or hasattr(asked, 'to_dict'):  # hf-hub: / local-dir: (config.json) or a given cfg
        cfg = dict(asked.to_dict(remove_source=False) if hasattr(asked, 'to_dict') else asked, **(overlay or {}))
    else:
        cfg = _wrapper_cfg(arch, asked, overlay)
    cfg.setdefault('architecture', arch)
    name = f'{arch}.{cfg["tag"]}' if cfg.get('tag') else arch
    path, hf_hub_id = _cfg_weights(cfg, name, cache_dir)
    if path.endswith('.safetensors'):
        weights, info = _full_safetensors(path)
    else:
        state = load_checkpoint(path)
        weights, info = state['model'], dict(model_name=state['model_name'], model_kwargs=state['model_kwargs'])
    if info['model_name'] != arch:
        raise CheckpointError(f'{path} holds {info["model_name"]}, not {arch}; load it by its own name')
    model = build(**dict(info['model_kwargs'], **kwargs))
    load_pretrain_state(model, weights, path, _describe(arch, info['model_kwargs']), _describe(arch, kwargs, model))
    model.pretrained_cfg = dict(getattr(model, 'pretrained_cfg', None) or {}, **cfg)
    return model


def pretrain_default_cfgs(wrappers: Dict[str, str], declared: Dict[str, Iterable[str]],
                          folder: Optional[str] = None) -> Dict[str, Any]:
    """`default_cfgs` of pretraining wrappers: `{wrapper: encoder}` keep their encoder's data config (input size,
    mean, std), one tag per `<wrapper>.<tag>.safetensors` in `folder` (default: the package's weights/) with
    `file=` and the repo `hf_hub_id`, and one weight-less tag per `declared` `{wrapper: (tag, ...)}` whose file is
    not there yet (so `pretrained=True` says how to make it). The untagged name stays the weight-less default."""
    from timm.models import generate_default_cfgs, get_pretrained_cfg


    folder = PACKAGED_WEIGHTS_DIR if folder is None else folder
    base = {}
    for wrapper, encoder in wrappers.items():
        cfg = get_pretrained_cfg(encoder).to_dict()
        base[wrapper] = dict(cfg, num_classes=0, architecture=wrapper, tag=None)
    tagged: Dict[str, Dict[str, Any]] = {}
    for fname in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        name_tag, ext = os.path.splitext(fname)
        wrapper, _, tag = name_tag.partition('.')
        if ext == '.safetensors' and tag and wrapper in base:
            tagged[name_tag] = dict(base[wrapper], file=os.path.join(os.path.abspath(folder), fname),
                                    hf_hub_id=hub_repo_id(wrapper, tag))
    for wrapper, tags in declared.items():
        for tag in tags:
            tagged.setdefault(f'{wrapper}.{tag}', dict(base[wrapper]))
    # '.*' keeps the weight-less untagged cfg the default (see randsac_vit._generate_cfgs)
    has_tags = {name.partition('.')[0] for name in tagged}
    return generate_default_cfgs({**tagged, **{(f'{w}.*' if w in has_tags else w): c for w, c in base.items()}})


def register_packaged_pretrain_weights(folder: str) -> Tuple[str, ...]:
    """Register the `<wrapper>.<tag>.safetensors` full models in `folder` as tags after import (tests, a local zoo),
    by re-running timm's `register_model` on their entrypoints. Returns the registered names."""
    from timm.models import generate_default_cfgs, get_arch_pretrained_cfgs, model_entrypoint, register_model


    names = []
    for fname in sorted(os.listdir(folder)):
        name_tag, ext = os.path.splitext(fname)
        wrapper, _, tag = name_tag.partition('.')
        if ext != '.safetensors' or not tag or not timm.is_model(wrapper):
            continue
        fn = model_entrypoint(wrapper)
        cfgs = get_arch_pretrained_cfgs(wrapper)
        untagged = cfgs[wrapper].to_dict()
        tagged = {n: c.to_dict(remove_source=False) for n, c in cfgs.items() if '.' in n}
        tagged[name_tag] = dict(untagged, file=os.path.join(os.path.abspath(folder), fname),
                                hf_hub_id=hub_repo_id(wrapper, tag))
        sys.modules[fn.__module__].default_cfgs[wrapper] = generate_default_cfgs(
            {**tagged, f'{wrapper}.*': untagged})[wrapper]
        with warnings.catch_warnings():  # re-registering on purpose: timm warns about overwriting
            warnings.simplefilter('ignore')
            register_model(fn)
        names.append(name_tag)
    return tuple(names)
