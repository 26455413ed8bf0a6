"""Fault injection: real dependencies (the engine, a worker, redis-server, `rclone serve s3`, the disk)
killed or stalled at a stage of a job, and what every test then asserts: nothing lost, nothing
duplicated, nothing left running, every answer a clear one-line error."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.proc_utils import gone, wait_gone
from tests.service.conftest import free_port, mock_env, mock_service, service_factory  # noqa: F401 - fixtures
from tests.studio.conftest import bundles, fake  # noqa: F401 - fixtures

ONE_LINE_ERROR = "kitty-coreml: error: "


def assert_clear_error(stderr: str) -> str:
    """The one line a user sees: ours, no traceback, no 'internal error'. Returns the message."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(ONE_LINE_ERROR) and "internal error" not in lines[0], stderr
    assert "Traceback" not in stderr
    return lines[0][len(ONE_LINE_ERROR):]


def assert_all_gone(*pids: int | None) -> None:
    for pid in pids:
        if pid is not None:
            wait_gone(pid)


def read_pid_if_any(path: Path) -> int | None:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else None


def assert_nothing_half_written(home: Path) -> None:
    """No run folder left, and nothing in the outbox or the store but complete PNG + sidecar pairs."""
    runs = home / "runs"
    assert not runs.exists() or list(runs.iterdir()) == [], list(runs.iterdir())
    for root in (home / "outbox", home / "store"):
        files = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
        assert not [p for p in files if p.name.startswith(".")], files  # no temporary names
        pngs = {p.with_suffix("") for p in files if p.suffix == ".png"}
        assert pngs == {p.with_suffix("") for p in files if p.suffix == ".json"}, files


class RedisServer:
    """A private redis-server on a fixed port, with an append-only file synced on every write (what a
    deployment that must not lose queued jobs runs), that tests can kill, pause and start again."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed: apt-get install -y redis-server"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.folder)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in self.process.stdout:
            if "Ready to accept connections" in line:
                break
        else:
            raise AssertionError(f"redis-server exited with {self.process.wait()}")
        stream = self.process.stdout
        import threading

        threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()
        return self

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.process.poll() is None:
            self.resume()
            self.kill()


@pytest.fixture
def redis_server(tmp_path: Path):
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder).start()
    yield server
    server.close()


_NO_SPACE_HOOK = """
import errno, os, sys

_left = int(os.environ["FAULT_ENOSPC_AFTER"])

def _no_space(event, args):
    # Every file the outbox creates goes through os.open under a temporary ".name.png.*" name: let the
    # first FAULT_ENOSPC_AFTER images through, then answer as a full disk does.
    global _left
    if event == "open" and isinstance(args[0], str) and "/outbox/" in args[0] and ".png." in args[0]:
        if _left <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), args[0])
        _left -= 1

sys.addaudithook(_no_space)
"""


def disk_full_after(folder: Path, images: int) -> dict[str, str]:
    """Environment for a `kitty-coreml` subprocess whose disk fills up once `images` PNGs reached the
    outbox: ENOSPC raised at the OS boundary (an audit hook on open) inside that process only, not a
    mounted filesystem, so it needs no root and behaves the same in CI."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_NO_SPACE_HOOK)
    return {"PYTHONPATH": str(folder), "FAULT_ENOSPC_AFTER": str(images)}


def term_ignoring_engine(folder: Path, grandchild_file: Path) -> Path:
    """A stand-in engine that blocks SIGTERM (it stays pending: tests see in /proc that it was sent) and
    has a child that ignores it: only SIGKILL ends them, so the kill grace is really used."""
    script = folder / "StubbornSample"
    script.write_text(
        f"#!{sys.executable}\n"
        "import signal, subprocess, sys, time\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(1e6)'])\n"
        f"open({str(grandchild_file)!r}, 'w').write(str(child.pid))\n"
        "print('Loading resources and creating pipeline', flush=True)\n"
        "time.sleep(1e6)\n")
    script.chmod(0o755)
    return script


__all__ = ["assert_clear_error", "assert_all_gone", "assert_nothing_half_written", "read_pid_if_any",
           "RedisServer", "disk_full_after", "term_ignoring_engine", "gone"]
