"""Showing progress events: a bar for a person at a terminal, plain lines for a log, NDJSON for a
program (KITTY_COREML_PROGRESS=ndjson). Everything goes to stderr; stdout stays for results."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from .engines.base import ProgressEvent

__all__ = ["ProgressPrinter"]

_BAR_WIDTH = 24


class ProgressPrinter:
    def __init__(self, mode: str = "auto", stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "plain"
        self.mode = mode
        self._bar_open = False

    def __call__(self, event: ProgressEvent) -> None:
        if self.mode == "none":
            return
        if self.mode == "ndjson":
            self._write(json.dumps({"event": event.kind, **event.to_dict()}, ensure_ascii=False) + "\n")
        elif self.mode == "bar":
            self._bar(event)
        else:
            self._plain(event)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _describe(self, event: ProgressEvent) -> str | None:
        if event.kind == "waiting":
            return event.message
        if event.kind == "loading":
            return event.message or "loading the model"
        if event.kind == "sampling":
            return f"sampling {event.images or 1} image(s)"
        if event.kind == "saved":
            return f"engine done: {event.images} image(s)"
        return event.message

    def _plain(self, event: ProgressEvent) -> None:
        if event.kind == "step":
            every = max(1, (event.total or 1) // 10)
            if event.step == event.total or (event.step or 0) % every == 0:
                rate = f" ({event.rate:.2f} step/s)" if event.rate else ""
                self._write(f"step {event.step} of {event.total}{rate}\n")
            return
        text = self._describe(event)
        if text:
            self._write(text + "\n")

    def _bar(self, event: ProgressEvent) -> None:
        if event.kind == "step" and event.total:
            done = int(_BAR_WIDTH * (event.step or 0) / event.total)
            rate = f" {event.rate:.2f} step/s" if event.rate else ""
            images = f" · {event.images} image(s)" if event.images and event.images > 1 else ""
            self._write(f"\r\x1b[K[{'#' * done}{'.' * (_BAR_WIDTH - done)}] step {event.step}/{event.total}"
                        f"{rate}{images}")
            self._bar_open = True
            return
        text = self._describe(event)
        if text:
            self.close()
            self._write(text + "\n")

    def close(self) -> None:
        if self._bar_open:
            self._write("\n")
            self._bar_open = False
