"""Metric sinks: `output_dir/metrics.jsonl` (always) and the progress bar."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl (flushed at once)."""

    def __init__(self, path: Path, enabled: bool = True, keep_until_step: int | None = None):
        """`keep_until_step`: on resume, drop records of steps after the checkpoint (they are redone)."""
        self.path = path
        self.enabled = enabled
        if enabled and path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and keep_until_step and json.loads(line).get("step", 0) <= keep_until_step]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            tmp.replace(path)
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
        self.values: dict[str, str] = {}

    def note(self, **values: Any) -> None:
        """Values shown after the bar (loss, lr, tokens/s, eval loss)."""
        self.values.update({k: _fmt(v) for k, v in values.items()})
        self.bar.set_postfix(self.values, refresh=False)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
