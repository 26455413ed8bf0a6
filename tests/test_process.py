"""process.py on its own: tree kill, the parent-death watchdog used on macOS, exit descriptions."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from kitty_coreml.process import describe_exit
from tests.proc_utils import read_pid, wait_gone

# A parent that supervises `sh`, which starts a grandchild and waits; the parent then waits forever.
PARENT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from kitty_coreml.process import run_supervised
    folder = Path(sys.argv[1])
    script = f"sleep 1000 & echo $! > {folder}/grandchild.tmp; mv {folder}/grandchild.tmp {folder}/grandchild; wait"
    run_supervised(["sh", "-c", script], cwd=folder, timeout_s=1000, use_pty=False,
                   watchdog=sys.argv[2] == "watchdog")
""")


def _start_parent(tmp_path, mode: str) -> tuple[subprocess.Popen, int]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path), mode])
    return parent, read_pid(tmp_path / "grandchild")


def test_watchdog_kills_the_group_when_the_parent_is_killed(tmp_path):
    parent, grandchild = _start_parent(tmp_path, "watchdog")
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    wait_gone(grandchild)


def test_watchdog_released_normally_kills_nothing(tmp_path):
    from kitty_coreml.process import Watchdog

    sleeper = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        Watchdog(sleeper.pid).release()
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_describe_exit():
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-11) == "killed by SIGSEGV (11)"
