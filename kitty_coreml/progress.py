"""Progress events (what an engine reports as it works; engines/base.py re-exports ProgressEvent) and
showing them: a bar for a person at a terminal, plain lines for a log, NDJSON for a
program (KITTY_COREML_PROGRESS=ndjson). Everything goes to stderr; stdout stays for results.

On a terminal a long wait (starting an engine, loading a model, waiting for the machine lock) is a
line whose elapsed seconds tick until the next event, so a cold start visibly moves."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = ["ProgressEvent", "ProgressPrinter", "shown_step"]

_BAR_WIDTH = 24
_TICK_S = 1.0
_WAITS = ("loading", "waiting")


@dataclass(frozen=True)
class ProgressEvent:
    """kind: loading | sampling | step | saved | waiting | info. step counts from 1 to total."""

    kind: str
    step: int | None = None
    total: int | None = None
    images: int | None = None
    message: str | None = None
    rate: float | None = None
    """steps per second, when the engine says."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def shown_step(step: int, total: int, pndm_steps: int | None) -> tuple[int, int]:
    """(step, total) on the scale the user asked for. PNDM runs one step more than asked: Apple's
    pipeline reports steps + 1 for the whole batch, the diffusers worker count × (steps + 1) across
    its images. `--steps 20` then reads "of 20" (or "of 40" for two images), never ahead of the real
    progress. pndm_steps: the steps asked when the scheduler is PNDM, else None."""
    if pndm_steps and total % (pndm_steps + 1) == 0:
        shown_total = total // (pndm_steps + 1) * pndm_steps
        return max(1, step * shown_total // total), shown_total
    return step, total


class ProgressPrinter:
    def __init__(self, mode: str = "auto", stream: TextIO | None = None, *, steps: int | None = None,
                 scheduler: str | None = None):
        """steps, scheduler: what the request asked for, to show PNDM's steps on that scale (shown_step)."""
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "plain"
        self.mode = mode
        self.pndm_steps = steps if scheduler == "pndm" else None
        self._bar_open = False
        self._last_plain_step: int | None = None
        self._lock = threading.Lock()
        self._ticker: tuple[threading.Event, threading.Thread, str, float] | None = None

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
        with self._lock:
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
            step, total = shown_step(event.step or 0, event.total or 1, self.pndm_steps)
            every = max(1, total // 10)
            if step != self._last_plain_step and (step == total or step % every == 0):
                self._last_plain_step = step
                rate = f" ({event.rate:.2f} step/s)" if event.rate else ""
                self._write(f"step {step} of {total}{rate}\n")
            return
        self._last_plain_step = None
        text = self._describe(event)
        if text:
            self._write(text + "\n")

    def _bar(self, event: ProgressEvent) -> None:
        self._stop_ticking()
        if event.kind == "step" and event.total:
            step, total = shown_step(event.step or 0, event.total, self.pndm_steps)
            done = int(_BAR_WIDTH * step / total)
            rate = f" {event.rate:.2f} step/s" if event.rate else ""
            images = f" · {event.images} image(s)" if event.images and event.images > 1 else ""
            self._write(f"\r\x1b[K[{'#' * done}{'.' * (_BAR_WIDTH - done)}] step {step}/{total}{rate}{images}")
            self._bar_open = True
            return
        text = self._describe(event)
        if not text:
            return
        self.close()
        if event.kind in _WAITS:
            self._start_ticking(text)
        else:
            self._write(text + "\n")

    def _start_ticking(self, text: str) -> None:
        stop = threading.Event()
        started = time.monotonic()

        def tick() -> None:
            while not stop.wait(_TICK_S):
                self._write(f"\r\x1b[K{text} … {time.monotonic() - started:.0f} s")

        self._write(text)
        thread = threading.Thread(target=tick, name="progress-ticker", daemon=True)
        self._ticker = (stop, thread, text, started)
        thread.start()

    def _stop_ticking(self) -> None:
        """End the ticking line with how long the wait took."""
        if self._ticker is None:
            return
        stop, thread, text, started = self._ticker
        self._ticker = None
        stop.set()
        thread.join()
        self._write(f"\r\x1b[K{text} ({time.monotonic() - started:.1f} s)\n")

    def close(self) -> None:
        self._stop_ticking()
        if self._bar_open:
            self._write("\n")
            self._bar_open = False
