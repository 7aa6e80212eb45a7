"""A run's `log.jsonl`: one JSON record per line, appended by the primary process, read back by every tool.

A run killed mid-write leaves a half-written last line. The writer starts a new line before its first record
(so the fragment never swallows the next record) and every reader skips lines that do not parse, so one torn line
costs one record, never the run's table, curve or model card.
"""
import json
import os
import platform
from typing import Any, Dict, List, Optional

import timm
import torch


def read_log(path: str) -> List[Dict[str, Any]]:
    """Every whole record of the log at `path`, in order (torn or blank lines skipped)."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the half-written last line of a killed run
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def _cpu_model() -> Optional[str]:
    """The CPU's marketing name from /proc/cpuinfo (Linux), None elsewhere."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return None


def machine_record(device: torch.device) -> Dict[str, Any]:
    """What a run or an evaluation ran on, for its start record or results.json.

    Beside the host and library versions it keeps what decides the float results of a CPU run: the torch thread
    count and the CPU kernels torch dispatches to (`cpu_capability`: AVX2, AVX512, ...). Two runs of one config on
    machines that differ there agree only up to rounding (`benchmarks/rerun_rounding.py`).
    """
    return dict(device=str(device), host=platform.node(), cpu=platform.processor() or platform.machine(),
                cpu_model=_cpu_model(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
                cpu_threads=torch.get_num_threads(), os_cpu_count=os.cpu_count(),
                gpu=torch.cuda.get_device_name(device) if device.type == 'cuda' else None,
                torch=torch.__version__, timm=timm.__version__)


class JsonlLog:
    """Appends one JSON object per line to `log.jsonl` (primary process only), flushed at each record."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self._checked_end = False

    def write(self, **record: Any) -> None:
        if self.path is None:
            return
        with open(self.path, 'a') as f:
            if not self._checked_end:  # a killed run's torn last line: close it, so this record stands alone
                self._checked_end = True
                if f.tell() and not _ends_with_newline(self.path):
                    f.write('\n')
            f.write(json.dumps(record) + '\n')

    def last(self, event: str, key: str) -> Optional[Any]:
        """`key` of the last `event` record written so far (a resumed run's earlier records included), or None."""
        if self.path is None or not os.path.exists(self.path):
            return None
        found = None
        for record in read_log(self.path):
            if record.get('event') == event and key in record:
                found = record[key]
        return found


def _ends_with_newline(path: str) -> bool:
    with open(path, 'rb') as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b'\n'
