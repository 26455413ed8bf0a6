"""Waiting on conditions in tests (never fixed sleeps): a process to end, a line to appear."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(condition, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def wait_gone(pid: int, timeout: float = 20.0) -> None:
    wait_until(lambda: gone(pid), timeout, f"pid {pid} to end")


def read_pid(path: Path, timeout: float = 20.0) -> int:
    wait_until(lambda: path.exists() and path.read_text().strip() != "", timeout, f"{path}")
    return int(path.read_text().strip())


def read_events(stream, until, timeout: float = 30.0) -> list[dict]:
    """Read NDJSON progress lines from a stderr pipe until until(event) is true."""
    events = []
    deadline = time.monotonic() + timeout
    for line in stream:
        if time.monotonic() > deadline:
            break
        line = line.strip()
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        events.append(event)
        if until(event):
            return events
    raise AssertionError(f"stream ended without the awaited event; saw {events}")


def signal_pending(pid: int, sig: int) -> bool:
    """Whether sig waits, blocked, at process pid (/proc's ShdPnd mask): proof that it was sent, with no
    need for the process to be scheduled to notice it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False
