"""Publishing encoders: export a pretraining checkpoint to a Hugging Face Hub folder, push it, or package it.

    python -m randsac_timm.hub export CHECKPOINT OUT_DIR [--tag TAG] [--results results.json ...]
    python -m randsac_timm.hub push CHECKPOINT_OR_EXPORT_DIR [--tag TAG] [--results ...] [--dry-run --out-dir DIR]
    python -m randsac_timm.hub package CHECKPOINT [--tag TAG] [--results ...] [--out-dir randsac_timm/hub/weights]
    python -m randsac_timm.hub card PACKAGED_JSON OUT_MD      (re)write the card of packaged weights

Each takes `--notes FILE.md`: the publisher's own text for the card ("Limitations and notes").

An export folder holds exactly `config.json`, `model.safetensors` (plain timm ViT keys, encoder only) and a
`README.md` model card built from the run's records (`model_card.py`). With `--full`, export / push / package
write the full pretraining model instead (`<wrapper>.<tag>`: encoder, decoder and skip weights, for continued
pretraining with `train_pretrain.py --init`); its config.json names the registered wrapper with the `model_args`
that rebuild it, so it loads with the plugin: `create_model('hf-hub:<repo>', pretrained=True)`.
An encoder's `config.json` names a stock timm `vit_*`
architecture with `model_args`, so plain timm loads it with `create_model('hf-hub:<repo>', pretrained=True)`; with
randsac-timm imported, `create_model('<encoder>.<tag>', pretrained=True)` loads the same tensors. Repos are named
`HUB_ORG/<encoder>.<tag>` (`hub/names.py`). docs/model_zoo.md describes the whole workflow.
"""
import argparse
import json
import os
import re
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from timm.models import get_arch_name, resolve_pretrained_cfg
from timm.models._hub import save_config_for_hf  # no public alias in 1.0.x; timm's own config.json writer

from ..eval.results import RESULT_KEYS
from ..train.checkpoint import CheckpointError, atomic_write, export_encoder, load_pretrain_model
from ..train.run_log import read_log
from .loading import FULL_MODEL_FORMAT, load_encoder, load_pretrain_state, sha256_file
from .model_card import RunRecord, render_card, run_from_packaged
from .names import HUB_ORG, PACKAGED_WEIGHTS_DIR, hub_repo_id

__all__ = [
    'HUB_FILES', 'STOCK_ARCHITECTURES', 'PACKAGED_FORMAT', 'default_tag', 'stock_model_args', 'read_run', 'export',
    'push', 'package', 'check_hub_folder', 'load_pretrained_encoder', 'full_model_kwargs', 'main',
]

HUB_FILES = ('config.json', 'model.safetensors', 'README.md')
PICKLE_SUFFIXES = ('.bin', '.pth', '.pt', '.pkl', '.ckpt', '.pth.tar')
PACKAGED_FORMAT = 'randsac-timm/packaged-weights/v1'
PACKAGED_FULL_FORMAT = 'randsac-timm/packaged-pretrain/v1'
# wrapper kwargs that choose how attention runs, not what the weights are: never published
RUNTIME_KWARGS = ('attn_impl', 'attn_block_size')
# The stock timm name config.json gives each encoder: the closest width; `model_args` fix every size that differs.
STOCK_ARCHITECTURES = {
    'randsac_vit_micro_patch4_32': 'vit_tiny_patch16_224',
    'randsac_vit_micro_patch4_28': 'vit_tiny_patch16_224',
    'randsac_vit_tiny_patch4_32': 'vit_tiny_patch16_224',
    'randsac_vit_small_patch4_32': 'vit_small_patch16_224',
    'randsac_vit_small_patch16_224': 'vit_small_patch16_224',
    'randsac_vit_base_patch16_224': 'vit_base_patch16_224',
    'randsac_vit_base': 'vit_base_patch16_224',
    'randsac_vit_large_patch16_224': 'vit_large_patch16_224',
}
_TAG_ALIASES = {'fashion_mnist': 'fmnist'}


def _write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write(text)

    atomic_write(path, write)


def default_tag(dataset: str) -> str:
    """The tag for weights pretrained on `dataset` when none is given: 'fashion_mnist' -> 'fmnist'."""
    key = re.sub(r'[^a-z0-9_]+', '_', dataset.lower()).strip('_')
    return _TAG_ALIASES.get(key, key)


def _check_tag(tag: str) -> str:
    if not re.fullmatch(r'[A-Za-z0-9_-]+', tag or ''):
        raise ValueError(f'tag {tag!r} must be letters, digits, "_" or "-" (it becomes <encoder>.<tag>)')
    return tag


def stock_model_args(encoder_name: str, encoder_kwargs: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """(stock timm architecture, model_args) that rebuild `encoder_name(**encoder_kwargs)` as a plain timm ViT."""
    from ..models.randsac_vit import ENCODER_ARGS

    if encoder_name not in ENCODER_ARGS:
        raise ValueError(f'{encoder_name!r} is not a RandSAC encoder; known: {", ".join(ENCODER_ARGS)}')
    args = dict(ENCODER_ARGS[encoder_name], **encoder_kwargs)
    # the RandSAC layout: no class token, mean pooling, no head
    args.update(class_token=False, global_pool='avg', num_classes=0)
    return STOCK_ARCHITECTURES[encoder_name], args


def _read_log(path: Optional[str]) -> List[Dict[str, Any]]:
    if not path or not os.path.isfile(path):
        return []
    return read_log(path)


def _read_results(path: str, known_sha256: Sequence[str]) -> Dict[str, Any]:
    """One `results.json`, refused when it holds no metric or evaluated another encoder than this checkpoint's."""
    with open(path) as f:
        try:
            results = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f'--results {path} is not valid JSON ({e})') from e
    if not isinstance(results, dict) or not any(k in results for k in RESULT_KEYS):
        raise ValueError(f'--results {path} holds none of the top-level keys {", ".join(RESULT_KEYS)}; pass the '
                         f'results.json written by eval_linear.py / eval_finetune.py')
    encoder = results.get('encoder') if isinstance(results.get('encoder'), dict) else {}
    if encoder.get('kind') == 'random_init':
        raise ValueError(f'--results {path} evaluated a random-init baseline, not this checkpoint\'s encoder')
    sha = encoder.get('sha256')
    if sha and sha not in known_sha256:
        raise ValueError(
            f'--results {path} evaluated {encoder.get("path") or "another file"} (sha256 {sha}), which is neither this '
            f'checkpoint, its encoder.safetensors nor the exported model.safetensors; a card must only carry results '
            f'of the weights it publishes.')
    argv = results.get('argv')
    if not results.get('command') and isinstance(argv, list):
        results = dict(results, command=' '.join(str(a) for a in argv))
    return results


def full_model_kwargs(state: Dict[str, Any]) -> Dict[str, Any]:
    """Factory kwargs that rebuild a checkpoint's wrapper anywhere: the recorded ones with the decoder sizes made
    explicit (a later change of the defaults cannot change what they build) and the attention runtime dropped."""
    from ..models.randsac_pretrain import PRETRAIN_ARGS

    sizes = {k: v for k, v in PRETRAIN_ARGS.get(state['encoder_name'], {}).items() if k.startswith('decoder_')}
    kwargs = dict(sizes, **(state.get('model_kwargs') or {}))
    return {k: v for k, v in kwargs.items() if k not in RUNTIME_KWARGS}


def read_run(
        checkpoint: str,
        tag: Optional[str] = None,
        log: Optional[str] = None,
        full: bool = False,
) -> Tuple[RunRecord, torch.nn.Module]:
    """Load a pretraining checkpoint's encoder and gather the records its card may state.

    Args:
        checkpoint: a `train_pretrain.py` checkpoint (`checkpoint-last.pth`, ...), or the run's exported
            `encoder.safetensors` (then its `log.jsonl` supplies the configuration and progress).
        tag: weight tag; default `default_tag(dataset)`.
        log: the run's `log.jsonl`; default the one beside the checkpoint.
        full: describe the full pretraining model (`<wrapper>.<tag>`) instead of the encoder; needs a checkpoint.

    Returns:
        (run record without results, the encoder or with `full` the rebuilt wrapper, in eval mode); `export` adds
        the results once it knows the exported file's hash.
    """
    log_path = log or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), 'log.jsonl')
    if full and checkpoint.endswith('.safetensors'):
        raise CheckpointError(f'{checkpoint} holds the encoder alone; --full exports the decoder too, so pass the '
                              f'run\'s train_pretrain.py checkpoint (checkpoint-last.pth)')
    if checkpoint.endswith('.safetensors'):
        # a run's exported encoder.safetensors: the weights; its log.jsonl holds the rest of the record
        encoder, state = _encoder_run_state(checkpoint, log_path)
        encoder_name, encoder_kwargs = state['encoder_name'], state['encoder_kwargs']
    else:
        wrapper, state = load_pretrain_model(checkpoint)
        encoder_name, encoder_kwargs = state.get('encoder_name'), dict(state.get('encoder_kwargs') or {})
        if not encoder_name:
            raise CheckpointError(f'{checkpoint} records no encoder_name; it was written by an older train_pretrain.py')
        encoder = wrapper.encoder.eval()
    cfg = state.get('config') or {}
    tag = _check_tag(tag or default_tag(str(cfg.get('dataset', 'custom'))))
    architecture, model_args = stock_model_args(encoder_name, encoder_kwargs)
    data_cfg = {k: v for k, v in encoder.pretrained_cfg.items() if k not in ('url', 'file', 'hf_hub_id', 'tag')}
    run = RunRecord(
        name=f'{encoder_name}.{tag}', repo_id=hub_repo_id(encoder_name, tag), encoder_name=encoder_name,
        encoder_kwargs=encoder_kwargs, architecture=architecture, model_args=model_args,
        pretrained_cfg=dict(data_cfg, num_classes=0), num_params=sum(p.numel() for p in encoder.state_dict().values()),
        checkpoint=os.path.basename(checkpoint), checkpoint_sha256=sha256_file(checkpoint),
        state={k: v for k, v in state.items() if k in ('config', 'step', 'epoch', 'wall_time_s', 'world_size',
                                                      'model_name', 'nonfinite_skipped')},
        log=_read_log(log_path),
    )
    if not full:
        return run, encoder
    # the wrapper rebuilt from the published kwargs alone must hold the checkpoint's weights exactly
    model_name, kwargs = state['model_name'], full_model_kwargs(state)
    wrapper = timm.create_model(model_name, **kwargs)
    load_pretrain_state(wrapper, state['model'], checkpoint, model_name, f'{model_name} rebuilt from {kwargs}')
    run.name, run.repo_id = f'{model_name}.{tag}', hub_repo_id(model_name, tag)
    run.architecture, run.model_args, run.kind = model_name, kwargs, 'pretrain'
    run.num_params = sum(v.numel() for v in wrapper.state_dict().values())
    run.pretrained_cfg.pop('architecture', None)
    return run, wrapper.eval()


def _encoder_run_state(path: str, log_path: str) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """An exported `encoder.safetensors` and the checkpoint-like fields its run's `log.jsonl` records."""
    records = _read_log(log_path)
    starts = [r for r in records if r.get('event') == 'start']
    ends = [r for r in records if r.get('event') == 'end']
    if not starts or not ends:
        raise CheckpointError(
            f'{path}: exporting an encoder file needs its finished run\'s log.jsonl ({log_path}) for the card; '
            f'pass --log or export the checkpoint-last.pth instead.')
    encoder, info = load_encoder(checkpoint=path)
    with safe_open(path, framework='pt') as f:
        metadata = f.metadata() or {}
    state = dict(
        config=starts[-1].get('config', {}), step=ends[-1].get('step'), epoch=ends[-1].get('epoch'),
        wall_time_s=ends[-1].get('wall_time_s'), world_size=starts[-1].get('world_size'),
        model_name=starts[-1].get('model'), nonfinite_skipped=ends[-1].get('nonfinite_skipped'),
        encoder_name=metadata['encoder_name'], encoder_kwargs=json.loads(metadata.get('encoder_kwargs') or '{}'))
    return encoder.eval(), state


def _plain_vit(run: RunRecord) -> torch.nn.Module:
    """The stock timm ViT that config.json describes, with the run's data config as its pretrained cfg."""
    cfg = dict(run.pretrained_cfg, architecture=run.architecture)
    return timm.create_model(run.architecture, pretrained_cfg=cfg, **run.model_args)


def export(
        checkpoint: str,
        out_dir: str,
        tag: Optional[str] = None,
        results: Sequence[str] = (),
        log: Optional[str] = None,
        full: bool = False,
        notes: Optional[str] = None,
) -> RunRecord:
    """Write the encoder of `checkpoint` as a Hub folder: `model.safetensors`, `config.json`, `README.md`.

    The folder is checked after writing: plain timm loads it through `local-dir:` and its features equal the
    checkpoint encoder's bit for bit. With `full`, the folder holds the whole pretraining wrapper instead, checked
    by loading it back through `local-dir:` (with the plugin) and comparing every tensor.

    Args:
        checkpoint: a `train_pretrain.py` checkpoint.
        out_dir: the folder to write (created; it may hold nothing but these three files).
        tag: weight tag, default from the data set ('fmnist' for Fashion-MNIST); the repo is HUB_ORG/<encoder>.<tag>.
        results: `results.json` files of `eval_linear.py` / `eval_finetune.py` runs on this checkpoint.
        log: the run's `log.jsonl` (default: beside the checkpoint).
        full: export the full pretraining model `<wrapper>.<tag>` (encoder, decoder, skip weights).
        notes: a Markdown file of the publisher's own notes (limitations, what is left) for the card.

    Returns:
        the run record the card was written from.
    """
    notes_text = read_notes(notes)  # before anything is written: a missing file loses nothing
    run, encoder = read_run(checkpoint, tag, log=log, full=full)
    run.notes = notes_text
    os.makedirs(out_dir, exist_ok=True)
    stray = sorted(set(os.listdir(out_dir)) - set(HUB_FILES))
    if stray:
        raise FileExistsError(f'{out_dir} holds {stray}; export into an empty folder (it is uploaded as it is)')
    if full:
        return _export_full(checkpoint, out_dir, run, encoder, results)

    plain = _plain_vit(run)
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    try:
        plain.load_state_dict(state, strict=True)  # proves the keys are plain timm ViT keys, nothing else
    except RuntimeError as e:
        raise CheckpointError(f'the encoder of {checkpoint} does not fit a plain timm {run.architecture}: {e}') from e
    weights = os.path.join(out_dir, 'model.safetensors')
    export_encoder(encoder, weights, run.encoder_name, run.encoder_kwargs, extra_metadata={
        'hub_repo_id': run.repo_id, 'tag': run.name.split('.', 1)[1], 'checkpoint_sha256': run.checkpoint_sha256})
    atomic_write(os.path.join(out_dir, 'config.json'),
                 lambda tmp: save_config_for_hf(plain, tmp, model_args=run.model_args))

    run.results = [(os.path.basename(p), _read_results(p, _known_hashes(checkpoint, weights, run))) for p in results]
    card = render_card(run)
    _write_text(os.path.join(out_dir, 'README.md'), card)

    _check_export_matches(out_dir, encoder)
    return run


def read_notes(path: Optional[str]) -> str:
    """The text of a `--notes` Markdown file ('' for None), checked to hold something."""
    if path is None:
        return ''
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f'--notes {path}: cannot read it ({e}); give a Markdown file of notes for the card') from e
    if not text.strip():
        raise ValueError(f'--notes {path} is empty; give a Markdown file of notes for the card, or leave --notes out')
    return text


def _known_hashes(checkpoint: str, weights: str, run: RunRecord) -> List[str]:
    known = [run.checkpoint_sha256, sha256_file(weights)]
    sibling = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), 'encoder.safetensors')
    if os.path.isfile(sibling):
        known.append(sha256_file(sibling))
    return known


def _export_full(checkpoint: str, out_dir: str, run: RunRecord, wrapper: torch.nn.Module,
                 results: Sequence[str]) -> RunRecord:
    """`model.safetensors` (every wrapper tensor, metadata that rebuilds it), config.json naming the wrapper, card."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in wrapper.state_dict().items()}
    metadata = {
        'format': 'pt', 'randsac_format': FULL_MODEL_FORMAT, 'model_name': run.architecture,
        'model_kwargs': json.dumps(run.model_args), 'encoder_name': run.encoder_name,
        'hub_repo_id': run.repo_id, 'tag': run.name.split('.', 1)[1], 'checkpoint_sha256': run.checkpoint_sha256,
        'step': str(run.state.get('step'))}
    weights = os.path.join(out_dir, 'model.safetensors')
    atomic_write(weights, lambda tmp: save_file(state, tmp, metadata=metadata))
    config = dict(architecture=run.architecture, num_classes=0, model_args=run.model_args,
                  pretrained_cfg=run.pretrained_cfg)
    _write_text(os.path.join(out_dir, 'config.json'), json.dumps(config, indent=2) + '\n')
    run.results = [(os.path.basename(p), _read_results(p, _known_hashes(checkpoint, weights, run))) for p in results]
    _write_text(os.path.join(out_dir, 'README.md'), render_card(run))

    check_hub_folder(out_dir)
    loaded = timm.create_model(f'local-dir:{os.path.abspath(out_dir)}', pretrained=True).state_dict()
    if set(loaded) != set(state) or not all(torch.equal(loaded[k], v) for k, v in state.items()):
        raise CheckpointError(f'{out_dir}: the reloaded full model differs from the checkpoint\'s; not exported')
    return run


def _check_export_matches(folder: str, encoder: torch.nn.Module) -> None:
    check_hub_folder(folder)
    loaded = timm.create_model(f'local-dir:{os.path.abspath(folder)}', pretrained=True).eval()
    c, h, w = loaded.pretrained_cfg['input_size']
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not torch.equal(loaded(x), encoder(x)):
            raise CheckpointError(f'{folder}: plain timm features differ from the checkpoint encoder\'s; not exported')


def check_hub_folder(folder: str) -> Tuple[str, Dict[str, Any]]:
    """Check a Hub folder before loading or uploading it; raise `CheckpointError` naming the problem and the fix.

    Checks: no pickle weights; `config.json` readable and naming an architecture timm knows; `model.safetensors`
    readable (not corrupt or truncated); its keys and shapes exactly those of the model config.json describes.

    Returns:
        (architecture, model_args) from config.json.
    """
    pickles = sorted(f for f in os.listdir(folder) if f.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise CheckpointError(f'{folder} holds pickle weights {pickles}; only model.safetensors is published')
    cfg_path, weights = os.path.join(folder, 'config.json'), os.path.join(folder, 'model.safetensors')
    for path in (cfg_path, weights):
        if not os.path.isfile(path):
            raise CheckpointError(f'{folder} has no {os.path.basename(path)}; export it with '
                                  f'`python -m randsac_timm.hub export CHECKPOINT {folder}`')
    try:
        with open(cfg_path) as f:
            config = json.load(f)
        arch, model_args = config['architecture'], dict(config.get('model_args') or {})
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f'{cfg_path} is not a timm config ({type(e).__name__}: {e}); re-export the folder') from e
    if not timm.is_model(arch):
        hint = ' (randsac_* names need `import randsac_timm`)' if arch.startswith('randsac_') else ''
        raise CheckpointError(
            f'{cfg_path} names architecture {arch!r}, which timm {timm.__version__} does not know{hint}; exports '
            f'of randsac-timm name a stock vit_* model with model_args. Re-export with '
            f'`python -m randsac_timm.hub export`.')
    try:
        with safe_open(weights, framework='pt') as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        load_file(weights)  # reads every tensor: catches a truncated body the header check misses
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(
            f'{weights} is not a readable safetensors file ({e}): it is corrupt or truncated. Download it again '
            f'(for a Hub cache: `hf cache delete`, then reload) or re-export it from the checkpoint.') from e
    try:
        model = timm.create_model(arch, **model_args)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f'{cfg_path}: timm cannot build {arch!r} with model_args {model_args}: {e}') from e
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(own) - set(shapes)), sorted(set(shapes) - set(own))
    wrong = sorted(f'{k}: file {shapes[k]} vs model {own[k]}' for k in set(own) & set(shapes) if own[k] != shapes[k])
    if missing or unexpected or wrong:
        raise CheckpointError(
            f'{weights} does not fit {arch} with the model_args of config.json: missing {missing or "none"}, '
            f'unexpected {unexpected or "none"}, wrong shapes {wrong or "none"}. The weights and config.json come '
            f'from different exports; re-export the folder.')
    return arch, model_args


def _hub_snapshot(repo: str) -> str:
    """The local folder of `org/name[@revision]` (Hub cache; offline with HF_HUB_OFFLINE=1 once cached)."""
    from huggingface_hub import hf_hub_download

    repo_id, _, revision = repo.partition('@')
    config = hf_hub_download(repo_id, 'config.json', revision=revision or None)
    hf_hub_download(repo_id, 'model.safetensors', revision=revision or None)
    return os.path.dirname(config)


def load_pretrained_encoder(name: str, **kwargs: Any) -> torch.nn.Module:
    """`timm.create_model(name, pretrained=True, **kwargs)` with the weights checked first, for clear errors.

    Args:
        name: 'hf-hub:org/name', 'local-dir:/path', or a registered '<encoder>.<tag>' (file or hub weights).
        **kwargs: passed to `timm.create_model` (e.g. `num_classes`, `pretrained_cfg_overlay`).

    Raises:
        CheckpointError: corrupt weights, an unknown architecture, or weights that do not fit.
    """
    kind, _, ident = name.partition(':') if name.startswith(('hf-hub:', 'local-dir:')) else ('', '', name)
    if kind == 'local-dir':
        check_hub_folder(ident)
    elif kind == 'hf-hub':
        check_hub_folder(_hub_snapshot(ident))
    else:
        cfg = resolve_pretrained_cfg(get_arch_name(name), name.partition('.')[2] or None,
                                     kwargs.get('pretrained_cfg_overlay'))
        if cfg.file and str(cfg.file).endswith('.safetensors'):
            try:
                load_file(cfg.file)
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f'{name}: weights file {cfg.file} is corrupt or truncated ({e}); reinstall '
                                      f'the package or re-package the weights') from e
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except RuntimeError as e:  # state_dict mismatches: add where the weights came from
        raise CheckpointError(f'{name}: the weights do not fit the model ({e})') from e


def _require_token() -> None:
    from huggingface_hub import get_token

    if not get_token():  # never printed or stored: huggingface_hub reads HF_TOKEN or the login cache itself
        raise RuntimeError('no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again '
                           '(or use --dry-run to write the folder without uploading)')


def push(
        source: str,
        tag: Optional[str] = None,
        results: Sequence[str] = (),
        repo_id: Optional[str] = None,
        out_dir: Optional[str] = None,
        dry_run: bool = False,
        private: bool = False,
        commit_message: Optional[str] = None,
        full: bool = False,
        notes: Optional[str] = None,
) -> str:
    """Upload an encoder (or with `full` the full pretraining model) to the Hub: safetensors, config.json and the
    card, nothing else.

    Args:
        source: a pretraining checkpoint (exported first) or an existing export folder.
        tag: weight tag (checkpoint sources only); the repo is `HUB_ORG/<encoder>.<tag>`.
        results: results.json files for the card (checkpoint sources only).
        repo_id: override of the repo id (tests, forks); default from the naming scheme.
        out_dir: where a checkpoint is exported (default: a temporary folder, removed after the upload).
        dry_run: write the folder exactly as it would be uploaded, and stop.
        private: create the repo private.
        commit_message: Hub commit message.
        full: export the full pretraining model `<wrapper>.<tag>` from a checkpoint source.
        notes: a Markdown file of notes for the card (checkpoint sources only).

    Returns:
        the folder that was (or would be) uploaded.
    """
    temp = None
    if os.path.isdir(source):
        if tag or results or full or notes:
            raise ValueError(f'{source} is an export folder: its tag, results, notes and kind were fixed at export')
        folder = source
        check_hub_folder(folder)
        with safe_open(os.path.join(folder, 'model.safetensors'), framework='pt') as f:
            default_repo = (f.metadata() or {}).get('hub_repo_id')
    else:
        if dry_run and out_dir is None:
            raise ValueError('--dry-run of a checkpoint needs --out-dir DIR: the folder it writes for inspection')
        if out_dir is None:
            out_dir = temp = tempfile.mkdtemp(prefix='randsac-hub-')
        run = export(source, out_dir, tag, results, full=full, notes=notes)
        folder, default_repo = out_dir, run.repo_id
    try:
        check_hub_folder(folder)
        files = sorted(os.listdir(folder))
        if files != sorted(HUB_FILES):
            raise CheckpointError(f'{folder} holds {files}; a push uploads exactly {list(HUB_FILES)}')
        repo_id = repo_id or default_repo
        if not repo_id or '/' not in repo_id:
            raise ValueError(f'no full repo id (org/name) for {folder}; pass --repo-id')
        if dry_run:
            print(f'dry run: would upload {", ".join(files)} from {folder} to https://huggingface.co/{repo_id}')
            return folder
        _require_token()
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, repo_type='model', private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type='model', allow_patterns=list(HUB_FILES),
                          commit_message=commit_message or f'Upload {repo_id.split("/", 1)[1]}')
        print(f'uploaded {", ".join(files)} to https://huggingface.co/{repo_id}')
        return folder
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def package(
        checkpoint: str,
        tag: Optional[str] = None,
        results: Sequence[str] = (),
        out_dir: str = PACKAGED_WEIGHTS_DIR,
        log: Optional[str] = None,
        full: bool = False,
        notes: Optional[str] = None,
) -> Tuple[str, str]:
    """Ship an encoder inside randsac-timm: `<encoder>.<tag>.safetensors` + `<encoder>.<tag>.json` in `out_dir`.

    With `full`, the full pretraining model as `<wrapper>.<tag>.safetensors` + `.json` instead: at import the
    wrapper registers the tag (`hub.loading.pretrain_default_cfgs`), so
    `timm.create_model('<wrapper>.<tag>', pretrained=True)` loads encoder, decoder and skip weights offline.

    At import, `randsac_vit.py` registers each such pair as the tag `<encoder>.<tag>` with `file=` pointing at
    it, so `timm.create_model('<encoder>.<tag>', pretrained=True)` works offline. The JSON holds the Hub id, the
    safetensors SHA-256, config.json's content, the pretraining record and every evaluation (`top1`, ...,
    `command` when the results file recorded it) for reproduction tests.

    Returns:
        (weights path, json path).
    """
    with tempfile.TemporaryDirectory(prefix='randsac-package-') as tmp:
        run = export(checkpoint, tmp, tag, results, log, full=full, notes=notes)
        os.makedirs(out_dir, exist_ok=True)
        weights = os.path.join(out_dir, f'{run.name}.safetensors')
        atomic_write(weights, lambda dst: shutil.copyfile(os.path.join(tmp, 'model.safetensors'), dst))
        with open(os.path.join(tmp, 'config.json')) as f:
            config = json.load(f)
    meta = dict(
        format=PACKAGED_FULL_FORMAT if full else PACKAGED_FORMAT, name=run.name, hf_hub_id=run.repo_id,
        sha256=sha256_file(weights), config=config,
        pretraining=dict(checkpoint=run.checkpoint, checkpoint_sha256=run.checkpoint_sha256, **run.state,
                         log=[r for r in run.log if r.get('event') in ('start', 'end', 'resume')]),
        evaluations=[dict(file=name, **r) for name, r in run.results],
        **({'notes': run.notes} if run.notes else {}),
    )
    meta_path = os.path.join(out_dir, f'{run.name}.json')
    _write_text(meta_path, json.dumps(meta, indent=2) + '\n')
    return weights, meta_path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m randsac_timm.hub', description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)

    def notes_option(p: argparse.ArgumentParser) -> None:
        p.add_argument('--notes', default=None, metavar='FILE.md',
                       help='your own notes for the card (limitations, what is left), shown under "Limitations and '
                            'notes" apart from the measured sections')

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument('--tag', default=None, help='weight tag (default from the data set, e.g. fmnist)')
        p.add_argument('--results', action='append', default=[], metavar='PATH',
                       help='results.json of eval_linear.py / eval_finetune.py on this checkpoint (repeatable)')
        p.add_argument('--full', action='store_true',
                       help='the full pretraining model <wrapper>.<tag> (encoder, decoder, skip weights) for continued '
                            'pretraining, instead of the encoder alone; needs the checkpoint (.pth)')
        notes_option(p)

    p = sub.add_parser('export', help='write config.json, model.safetensors and README.md to OUT_DIR')
    p.add_argument('checkpoint')
    p.add_argument('out_dir')
    common(p)
    p.add_argument('--log', default=None, help='the run\'s log.jsonl (default: beside the checkpoint)')

    p = sub.add_parser('push', help=f'upload to the Hub as {HUB_ORG}/<encoder>.<tag>')
    p.add_argument('source', help='a pretraining checkpoint or an export folder')
    common(p)
    p.add_argument('--repo-id', default=None, help=f'override {HUB_ORG}/<encoder>.<tag>')
    p.add_argument('--out-dir', default=None, help='where to export a checkpoint (kept); default a temporary folder')
    p.add_argument('--dry-run', action='store_true', help='write the folder that would be uploaded, upload nothing')
    p.add_argument('--private', action='store_true')
    p.add_argument('--commit-message', default=None)

    p = sub.add_parser('package', help='write <encoder>.<tag>.safetensors + .json for the packaged weights')
    p.add_argument('checkpoint')
    common(p)
    p.add_argument('--out-dir', default=PACKAGED_WEIGHTS_DIR)
    p.add_argument('--log', default=None)

    p = sub.add_parser('card', help='(re)write the model card of packaged weights from their <name>.json')
    p.add_argument('packaged_json')
    p.add_argument('out')
    notes_option(p)  # replaces the notes the packaged JSON holds
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _run_command(args)
    except (CheckpointError, ValueError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(f'error: {e}') from None  # a user's mistake: one line, no traceback
    return 0


def _run_command(args: argparse.Namespace) -> None:
    if args.command == 'export':
        run = export(args.checkpoint, args.out_dir, args.tag, args.results, args.log, full=args.full,
                     notes=args.notes)
        print(f'exported {run.name} to {args.out_dir} (repo {run.repo_id}); load it with '
              f'timm.create_model("local-dir:{os.path.abspath(args.out_dir)}", pretrained=True)')
    elif args.command == 'push':
        push(args.source, args.tag, args.results, args.repo_id, args.out_dir, args.dry_run, args.private,
             args.commit_message, full=args.full, notes=args.notes)
    elif args.command == 'package':
        weights, meta = package(args.checkpoint, args.tag, args.results, args.out_dir, args.log, full=args.full,
                                notes=args.notes)
        print(f'packaged {weights} and {meta}')
    else:
        notes = read_notes(args.notes)
        run = run_from_packaged(args.packaged_json)
        run.notes = notes or run.notes
        _write_text(args.out, render_card(run))
        print(f'wrote the card of {args.packaged_json} to {args.out}')
