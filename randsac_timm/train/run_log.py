"""A run's `log.jsonl`: one JSON record per line, appended by the primary process, read back by every tool.

A run killed mid-write leaves a half-written last line. The writer starts a new line before its first record
(so the fragment never swallows the next record) and every reader skips lines that do not parse, so one torn line
costs one record, never the run's table, curve or model card.
"""
import json
import os
from typing import Any, Dict, List, Optional


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
