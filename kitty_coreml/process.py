"""Supervising a child process: argv as a list (never a shell), its own process group, death with its
parent, a deadline, cancellation, killing the whole tree, the tails of its output, and its peak memory.

The whole group dies on every path: a normal end (what the engine left behind is reaped), a timeout, a
cancel, Ctrl-C (a second one during the kill grace goes straight to SIGKILL), and the death of this
process however it dies (SIGKILL included): PR_SET_PDEATHSIG reaches only the direct child, so a
watchdog process kills the group, grandchildren included, on every platform.

Apple's binary prints progress with Swift's `print`, which is block-buffered on a pipe: run under a
pseudo-terminal (use_pty=True) its lines arrive as they are printed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .cancel import CancelToken
from .errors import Cancelled, EngineError, EngineTimeout

__all__ = ["ProcessResult", "run_supervised", "describe_exit", "kill_tree", "die_with_parent", "Watchdog"]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_POLL_S = 0.1
_KILL_GRACE_S = 3.0


@dataclass
class ProcessResult:
    returncode: int
    stdout_tail: list[str] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)
    peak_rss_bytes: int | None = None
    duration_s: float = 0.0

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode < 0 else None


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name} ({-returncode})"
    return f"exit code {returncode}"


def die_with_parent() -> None:
    """preexec hook: on Linux the kernel kills the child when its parent dies (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_WATCHDOG_CODE = """
import os, signal, sys
if not sys.stdin.buffer.read(1):
    try:
        os.killpg(int(sys.argv[1]), signal.SIGKILL)
    except OSError:
        pass
"""


class Watchdog:
    """Kills a process group when this process dies, however it dies (SIGKILL included): a tiny
    process reads a pipe only we write to; end-of-file without the all-clear byte means we are gone.
    macOS has no PR_SET_PDEATHSIG, and on Linux it reaches only the direct child, not the engine's own
    children: this is how the whole group dies with its parent everywhere."""

    def __init__(self, pgid: int):
        read_fd, self._write_fd = os.pipe()  # non-inheritable: only we hold the write end
        try:
            self._proc = subprocess.Popen([sys.executable, "-S", "-c", _WATCHDOG_CODE, str(pgid)], stdin=read_fd,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True)
        finally:
            os.close(read_fd)

    def release(self) -> None:
        """The group ended normally: the watchdog exits without killing anything."""
        if self._write_fd is not None:
            try:
                os.write(self._write_fd, b"x")
            finally:
                os.close(self._write_fd)
                self._write_fd = None
            self._proc.wait()


def kill_tree(pid: int, *, grace_s: float = _KILL_GRACE_S, popen: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group led by pid and every descendant (also those that left the group),
    give the leader grace_s to exit, then SIGKILL whatever is left. An interrupt during the grace (a
    second Ctrl-C) cuts it short: the SIGKILL still goes out before the interrupt propagates."""
    victims = _descendants(pid)
    try:
        _signal_all(pid, victims, signal.SIGTERM)
        if popen is not None:
            popen.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    finally:
        _signal_all(pid, victims, signal.SIGKILL)
        _signal_all(pid, _descendants(pid), signal.SIGKILL)  # any the dying ones started meanwhile
        if popen is not None:
            popen.wait()


def _signal_all(pgid: int, pids: list[int], sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reap_group(pgid: int) -> None:
    _signal_all(pgid, [], signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _tree_rss(pid: int) -> int | None:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs)
    except psutil.Error:
        return None


class _LineReader(threading.Thread):
    """Reads a stream of bytes into lines, strips terminal codes, keeps a tail, calls on_line."""

    def __init__(self, fd: int, on_line: Callable[[str], None] | None, tail: int):
        super().__init__(daemon=True)
        self.fd = fd
        self.on_line = on_line
        self.tail: deque[str] = deque(maxlen=tail)
        self.callback_error: BaseException | None = None

    def _emit(self, raw: bytes) -> None:
        line = _ANSI.sub("", raw.decode("utf-8", "replace")).replace("\r", "").rstrip()
        if not line:
            return
        self.tail.append(line)
        if self.on_line is not None and self.callback_error is None:
            try:
                self.on_line(line)
            except BaseException as exc:  # reported by the supervisor, not lost in this thread
                self.callback_error = exc

    def run(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the pty's other side is closed
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._emit(raw)
        if pending:
            self._emit(pending)


def run_supervised(
    argv: Sequence[str],
    *,
    cwd: Path,
    timeout_s: float,
    cancel: CancelToken | None = None,
    on_stdout_line: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
    use_pty: bool = True,
    tail_lines: int = 40,
    name: str | None = None,
    watchdog: bool = True,
    kill_grace_s: float = _KILL_GRACE_S,
) -> ProcessResult:
    """Run argv to completion. Raises EngineTimeout past timeout_s and Cancelled on cancel or Ctrl-C
    (SIGINT/SIGTERM arriving as exceptions in this thread), after killing the whole process tree
    (SIGTERM, kill_grace_s for it to end, then SIGKILL). A non-zero exit is returned, not raised: the
    caller knows what the code means."""
    name = name or Path(argv[0]).name
    use_pty = use_pty and os.name == "posix"
    if use_pty:
        import pty
        import termios

        out_fd, slave_fd = pty.openpty()
        attrs = termios.tcgetattr(slave_fd)
        attrs[1] &= ~termios.ONLCR  # keep "\n" as the child wrote it
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave_fd, termios.TCSANOW, attrs)
        stdout_target: int = slave_fd
    else:
        out_fd, stdout_target = os.pipe()
    err_fd, err_write = os.pipe()
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout_target,
            stderr=err_write, start_new_session=True, close_fds=True,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
    except OSError as exc:
        for fd in (out_fd, stdout_target, err_fd, err_write):
            os.close(fd)
        raise EngineError(f"could not start {name}: {exc.strerror or exc}",
                          hint=f"check that {argv[0]} exists and is executable") from None
    os.close(stdout_target)
    os.close(err_write)
    guard = Watchdog(proc.pid) if watchdog else None
    out_reader = _LineReader(out_fd, on_stdout_line, tail_lines)
    err_reader = _LineReader(err_fd, None, tail_lines)
    out_reader.start()
    err_reader.start()
    # A thread blocked in wait() wakes us the moment the child exits; Popen.wait(timeout) would poll.
    exited = threading.Event()
    threading.Thread(target=lambda: (proc.wait(), exited.set()), daemon=True).start()
    peak: int | None = None
    deadline = started + timeout_s
    try:
        while not exited.wait(_POLL_S):
            rss = _tree_rss(proc.pid)
            if rss is not None:
                peak = max(peak or 0, rss)
            if out_reader.callback_error is not None:
                raise out_reader.callback_error
            if cancel is not None and cancel.cancelled:
                raise Cancelled(f"{name} stopped: {cancel.reason}")
            if time.monotonic() > deadline:
                raise EngineTimeout(f"{name} did not finish within {timeout_s:g} s and was killed",
                                    hint="raise --timeout, or lower --steps/--count")
    except BaseException as exc:
        try:
            kill_tree(proc.pid, grace_s=kill_grace_s, popen=proc)
        except KeyboardInterrupt:
            raise Cancelled(f"{name} stopped: interrupted again, killed at once") from None
        finally:
            if guard is not None:
                guard.release()
            _finish_readers(out_reader, err_reader, out_fd, err_fd)
        if isinstance(exc, KeyboardInterrupt):
            raise Cancelled(f"{name} stopped: interrupted") from None
        raise
    # The engine is done; anything it left running in its group is an orphan to end now.
    _reap_group(proc.pid)
    if guard is not None:
        guard.release()
    _finish_readers(out_reader, err_reader, out_fd, err_fd)
    if out_reader.callback_error is not None:
        raise out_reader.callback_error
    return ProcessResult(
        returncode=proc.returncode,
        stdout_tail=list(out_reader.tail),
        stderr_tail=list(err_reader.tail),
        peak_rss_bytes=peak,
        duration_s=time.monotonic() - started,
    )


def _finish_readers(out_reader: _LineReader, err_reader: _LineReader, *fds: int) -> None:
    out_reader.join(timeout=5)
    err_reader.join(timeout=5)
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
