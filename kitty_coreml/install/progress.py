"""Progress on stderr: a redrawn bar on a terminal, a line every 10% otherwise, JSON lines for
machines, or nothing. stdout stays free for the command's own answer (--json)."""

from __future__ import annotations

import json
import sys
from collections import deque
from typing import TextIO

__all__ = ["Reporter", "Bar"]

_BAR_WIDTH = 30


def _human(n: float, unit: str) -> str:
    if unit != "B":
        return f"{int(n)}"
    for suffix in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or suffix == "GB":
            return f"{n:.0f} {suffix}" if suffix == "B" else f"{n:.1f} {suffix}"
        n /= 1000
    return f"{n:.1f} GB"


class Bar:
    """One task's progress. `update(n)` adds n done units; `close()` ends the line."""

    def __init__(self, reporter: Reporter, label: str, total: int | None, unit: str, initial: int = 0):
        self.reporter = reporter
        self.label = label
        self.total = total
        self.unit = unit
        self.done = initial
        self._last_decile = -1
        self._drawn = False
        self._show()

    def update(self, n: int) -> None:
        self.done += n
        self._show()

    def _show(self) -> None:
        mode = self.reporter.mode
        if mode == "none":
            return
        fraction = (self.done / self.total) if self.total else None
        if mode == "ndjson":
            decile = int((fraction or 0) * 10)
            if decile != self._last_decile:
                self._last_decile = decile
                self.reporter.event({"event": "progress", "task": self.label, "done": self.done,
                                     "total": self.total, "unit": self.unit})
            return
        if mode == "plain":
            decile = int((fraction or 0) * 10)
            if decile != self._last_decile:
                self._last_decile = decile
                self.reporter.line(f"{self.label}: {self._figures()}")
            return
        if fraction is None:
            bar = ""
        else:
            filled = int(min(1.0, fraction) * _BAR_WIDTH)
            bar = "[" + "#" * filled + "." * (_BAR_WIDTH - filled) + "] "
        self.reporter.stream.write(f"\r\x1b[K{self.label} {bar}{self._figures()}")
        self.reporter.stream.flush()
        self._drawn = True

    def _figures(self) -> str:
        if self.total:
            return (f"{_human(self.done, self.unit)} / {_human(self.total, self.unit)} "
                    f"({100 * self.done / self.total:.0f}%)")
        return _human(self.done, self.unit)

    def close(self) -> None:
        if self._drawn:
            self.reporter.stream.write("\n")
            self.reporter.stream.flush()
            self._drawn = False

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Reporter:
    """Where the installer says what it is doing. mode: bar, plain, ndjson or none (settings.progress;
    auto is bar on a terminal and plain otherwise)."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode = mode

    def line(self, text: str) -> None:
        if self.mode in ("bar", "plain"):
            self.stream.write(text + "\n")
            self.stream.flush()
        elif self.mode == "ndjson":
            self.event({"event": "log", "message": text})

    def event(self, data: dict) -> None:
        self.stream.write(json.dumps(data) + "\n")
        self.stream.flush()

    def bar(self, label: str, total: int | None, unit: str = "B", initial: int = 0) -> Bar:
        return Bar(self, label, total, unit, initial)

    def output(self, label: str, text: str, tail: deque[str]) -> None:
        """A line of a child program's output (git, swift): kept in `tail`, shown unless quiet."""
        tail.append(text)
        if self.mode in ("bar", "plain"):
            self.stream.write(f"  {label}| {text}\n")
            self.stream.flush()
