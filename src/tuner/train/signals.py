"""Stopping on a signal: the first SIGTERM/SIGINT finishes the current step and saves a
checkpoint; a second one exits at once."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from tuner.errors import UserError


class Interrupted(UserError):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint (exit code 128 + signal)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignal:
    """While active, SIGTERM/SIGINT set `signum` instead of killing the process."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            print(f"\ntuner: second {signal.Signals(signum).name}: stopping now, without saving", file=sys.stderr)
            os._exit(128 + signum)
        self.signum = signum
        print(
            f"\ntuner: {signal.Signals(signum).name} received: finishing this step and saving a checkpoint "
            "(send it again to stop at once)",
            file=sys.stderr,
        )
