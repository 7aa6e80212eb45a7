"""Pretraining checkpoints: atomic writes, `weights_only` loading, RNG capture, encoder export.

A checkpoint is a plain dict (no pickled objects, so `torch.load(path, weights_only=True)` reads it):

    format        'randsac-timm/pretrain/v1'
    model         the pretraining wrapper's state_dict ('encoder.*', 'decoder.*')
    model_name    registered wrapper name, e.g. 'randsac_pretrain_vit_micro_patch4_32'
    model_kwargs  factory kwargs that rebuild it with timm.create_model(model_name, **model_kwargs)
    encoder_name  registered encoder name; the encoder alone is timm.create_model(encoder_name, **encoder_kwargs)
    encoder_kwargs
    optimizer, scheduler, step, epoch, batch_in_epoch, nonfinite_skipped, rng, config, world_size, wall_time_s

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over the target, so a
kill at any moment leaves either the previous file or the new one, never a torn file; the temporary file such a
kill leaves behind is removed by the next write of the same file.
"""
import contextlib
import glob
import json
import os
import random
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import save_file

__all__ = [
    'CHECKPOINT_FORMAT', 'CheckpointError', 'atomic_write', 'atomic_save', 'load_checkpoint', 'load_pretrain_model',
    'latest_checkpoint', 'prune_checkpoints', 'rng_state', 'set_rng_state', 'export_encoder',
]

CHECKPOINT_FORMAT = 'randsac-timm/pretrain/v1'
LAST = 'checkpoint-last.pth'


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def _umask() -> int:
    """The process umask: from /proc on Linux, else by setting and restoring it (racy only across threads)."""
    with contextlib.suppress(OSError, ValueError):
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_stale_temp_files(folder: str, name: str) -> None:
    """Temp files of `name` left by writers killed before their rename (their process is gone)."""
    for tmp in glob.glob(os.path.join(folder, f'.{glob.escape(name)}.tmp-*')):
        pid = tmp.rsplit('-', 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        except PermissionError:  # alive, another user's
            pass


def atomic_write(path: str, write) -> None:
    """Call `write(tmp_path)`, flush it to disk, then rename it over `path` (creating the folder).

    The file gets the usual mode of a new file (0666 minus the umask): some writers (safetensors) create their
    output 0600, which would keep an exported model from other users and from containers running as another uid.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp-{os.getpid()}')
    try:
        write(tmp)
        with open(tmp, 'rb+') as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _remove_stale_temp_files(folder, os.path.basename(path))


def atomic_save(state: Dict[str, Any], path: str) -> None:
    """`torch.save` that never leaves a partially written `path`."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a pretraining checkpoint with `weights_only=True`, or raise `CheckpointError` naming the problem."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, wrong file type, ...
        reason = str(e).split('. ')[0].splitlines()[0] if str(e) else ''  # torch appends a paragraph of advice
        raise CheckpointError(
            f'checkpoint {path} is corrupt or truncated ({type(e).__name__}: {reason}). It was left untouched: '
            f'move it away or use another checkpoint (train_pretrain.py: --resume PATH, or --no-auto-resume with a '
            f'new --output-dir).') from e
    if not isinstance(state, dict) or state.get('format') != CHECKPOINT_FORMAT:
        found = state.get('format') if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f'{path} is not a randsac-timm pretraining checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})')
    return state


def load_pretrain_model(path: str) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Rebuild the pretraining wrapper a checkpoint holds; returns (model in eval mode on the CPU, checkpoint)."""
    import timm  # local: keeps this module importable without building timm's registry

    state = load_checkpoint(path)
    model = timm.create_model(state['model_name'], **state['model_kwargs'])
    try:
        model.load_state_dict(state['model'])
    except RuntimeError as e:
        raise CheckpointError(f'weights in {path} do not fit {state["model_name"]}: {e}') from e
    return model.eval(), state


def latest_checkpoint(output_dir: str) -> Optional[str]:
    path = os.path.join(output_dir, LAST)
    return path if os.path.exists(path) else None


def prune_checkpoints(output_dir: str, keep: int) -> List[str]:
    """Delete all but the `keep` newest numbered checkpoints; returns the removed paths."""
    numbered = []
    for path in glob.glob(os.path.join(output_dir, 'checkpoint-*.pth')):
        match = re.fullmatch(r'checkpoint-(\d+)\.pth', os.path.basename(path))
        if match:
            numbered.append((int(match.group(1)), path))
    removed = [p for _, p in sorted(numbered)[:max(len(numbered) - keep, 0)]]
    for path in removed:
        os.remove(path)
    return removed


def rng_state(generators: Optional[Dict[str, torch.Generator]] = None) -> Dict[str, Any]:
    """Every RNG a step may draw from, as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        'numpy': {'keys': torch.from_numpy(np_state[1].astype(np.int64)), 'pos': int(np_state[2]),
                  'has_gauss': int(np_state[3]), 'gauss': float(np_state[4])},
        'python': _python_state_to_plain(random.getstate()),
        'generators': {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def set_rng_state(state: Dict[str, Any], generators: Optional[Dict[str, torch.Generator]] = None) -> None:
    torch.set_rng_state(state['torch'])
    if state.get('cuda') and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    npst = state['numpy']
    np.random.set_state(('MT19937', npst['keys'].numpy().astype(np.uint32), npst['pos'], npst['has_gauss'],
                         npst['gauss']))
    random.setstate(_python_state_from_plain(state['python']))
    for name, g in (generators or {}).items():
        g.set_state(state['generators'][name])


def _python_state_to_plain(state: tuple) -> Dict[str, Any]:
    version, internal, gauss = state
    return {'version': version, 'internal': list(internal), 'gauss': gauss}


def _python_state_from_plain(plain: Dict[str, Any]) -> tuple:
    return plain['version'], tuple(plain['internal']), plain['gauss']


def export_encoder(encoder: torch.nn.Module, path: str, encoder_name: str, encoder_kwargs: Dict[str, Any],
                   extra_metadata: Optional[Dict[str, str]] = None) -> None:
    """Write the encoder alone as safetensors with plain timm ViT keys (no decoder, no wrapper prefix).

    The metadata names the registered encoder and its kwargs, so
    `timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs)` loads it.
    """
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    metadata = {'format': 'pt', 'encoder_name': encoder_name, 'encoder_kwargs': json.dumps(encoder_kwargs)}
    metadata.update(extra_metadata or {})
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
