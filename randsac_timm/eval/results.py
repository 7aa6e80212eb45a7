"""`results.json` of an evaluation run: written atomically, with the run's hardware and library versions.

The model card reads the top-level keys `top1`, `knn_top1`, `pixel_linear_top1`, `pixel_knn_top1` (percent,
None when not measured); everything else (protocol, hyper-parameters, encoder identity) sits beside them.
"""
import json
import os
import platform
from typing import Any, Dict

import torch

from ..train.checkpoint import atomic_write
from ..train.run_log import machine_record

__all__ = ['RESULT_KEYS', 'hardware_info', 'write_results']

RESULT_KEYS = ('top1', 'knn_top1', 'pixel_linear_top1', 'pixel_knn_top1')


def hardware_info(device: torch.device) -> Dict[str, Any]:
    return dict(machine_record(device), python=platform.python_version())


def write_results(output_dir: str, results: Dict[str, Any]) -> str:
    """Write `output_dir/results.json` atomically; every key of `RESULT_KEYS` must be present."""
    missing = [k for k in RESULT_KEYS if k not in results]
    if missing:
        raise ValueError(f'results lack the top-level keys {missing} the model card reads')
    path = os.path.join(output_dir, 'results.json')

    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(results, f, indent=2, sort_keys=False)
            f.write('\n')

    atomic_write(path, write)
    return path
