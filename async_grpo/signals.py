"""SIGINT/SIGTERM as a request to save and stop, for the training loops."""

from __future__ import annotations

import signal
import threading
from typing import Optional

from absl import logging


class StopOnSignal:
    """Context manager: while active, SIGINT and SIGTERM set `signum` instead of ending the
    process, so the loop can checkpoint and return. Outside the main thread it does nothing
    (Python only delivers signals there); the previous handlers are restored on exit."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._old: dict = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        logging.warning("signal %d: saving a checkpoint and stopping", signum)
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None
