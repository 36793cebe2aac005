"""Metric sinks: `output_dir/metrics.jsonl` (always) and the progress bar."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl (flushed at once)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self._fh = open(path, "a", encoding="utf-8") if enabled else None

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class Progress:
    """A tqdm bar over optimizer steps showing loss, learning rate and tokens/s (ETA is tqdm's)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(self, n: int = 1, **values: Any) -> None:
        if values:
            self.bar.set_postfix({k: _fmt(v) for k, v in values.items()}, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
