"""``metrics.jsonl``: one JSON object per line, appended by the main process only."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


class MetricsLogger:
    """Appends records to ``path`` (when ``enabled``, i.e. on rank 0). ``position()`` is the byte offset a
    checkpoint stores; ``truncate(pos)`` drops records written after it, so a resumed run does not log the
    replayed steps twice."""

    def __init__(self, path: str | os.PathLike | None, enabled: bool = True):
        self.path = Path(path) if path is not None else None
        self.enabled = enabled and self.path is not None
        self.records: list[dict] = []  # this process's records (also when not writing)

    def log(self, record: dict) -> None:
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.records.append(record)
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def position(self) -> int:
        if not self.enabled or not self.path.exists():
            return 0
        return self.path.stat().st_size

    def truncate(self, position: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        with open(self.path, "r+b") as f:
            f.truncate(position)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Every complete record of a ``metrics.jsonl`` (a torn last line from a killed process is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
