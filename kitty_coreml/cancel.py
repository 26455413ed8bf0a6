"""CancelToken: the one object every layer (signal handlers, HTTP cancel, queues, engines, process
supervision) uses to ask a running generation to stop. It sits on the ground floor so that process.py
needs nothing from engines/."""

from __future__ import annotations

import threading

__all__ = ["CancelToken"]


class CancelToken:
    """Set from any thread (a signal handler, an HTTP cancel); engines poll or wait on it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = "cancelled"

    def cancel(self, reason: str = "cancelled") -> None:
        self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)
