"""process.py on its own: tree kill, the parent-death watchdog (every platform), exit descriptions."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import psutil

from kitty_coreml.process import describe_exit
from tests.proc_utils import read_pid, wait_gone

# A parent that supervises `sh`, which starts a grandchild and waits; the parent then waits forever.
PARENT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from kitty_coreml.process import run_supervised
    folder = Path(sys.argv[1])
    script = f"sleep 1000 & echo $! > {folder}/grandchild.tmp; mv {folder}/grandchild.tmp {folder}/grandchild; wait"
    options = {} if sys.argv[2] == "default" else {"watchdog": sys.argv[2] == "watchdog"}
    run_supervised(["sh", "-c", script], cwd=folder, timeout_s=1000, use_pty=False, **options)
""")


def _start_parent(tmp_path, mode: str) -> tuple[subprocess.Popen, int]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path), mode])
    return parent, read_pid(tmp_path / "grandchild")


def test_watchdog_kills_the_group_when_the_parent_is_killed(tmp_path):
    parent, grandchild = _start_parent(tmp_path, "watchdog")
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    wait_gone(grandchild)


def test_by_default_the_grandchildren_die_with_a_sigkilled_parent(tmp_path):
    """PR_SET_PDEATHSIG alone would kill only `sh`; the grandchild in its group must go too."""
    parent, grandchild = _start_parent(tmp_path, "default")
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    wait_gone(grandchild)


# A supervisor whose child blocks SIGTERM (so it stays pending, visible in /proc) and so would use the
# whole kill grace, here made endless: only the second Ctrl-C can end the wait.
STUBBORN = textwrap.dedent("""
    import sys
    from pathlib import Path
    from kitty_coreml.errors import Cancelled
    from kitty_coreml.process import run_supervised
    folder = Path(sys.argv[1])
    child = ("import signal, subprocess, sys, time; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}); "
             "grandchild = subprocess.Popen(['sleep', '1000']); "
             f"open({str(folder / 'grandchild.tmp')!r}, 'w').write(str(grandchild.pid)); "
             f"__import__('os').rename({str(folder / 'grandchild.tmp')!r}, {str(folder / 'grandchild')!r}); "
             "time.sleep(1000)")
    try:
        run_supervised([sys.executable, "-c", child], cwd=folder, timeout_s=1000, use_pty=False, kill_grace_s=1000)
    except Cancelled as exc:
        print(exc.message, flush=True)
""")


def test_a_second_interrupt_during_the_grace_still_kills_the_tree(tmp_path):
    from tests.proc_utils import signal_pending, wait_until

    parent = subprocess.Popen([sys.executable, "-c", STUBBORN, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    grandchild = read_pid(tmp_path / "grandchild")
    child = psutil.Process(grandchild).ppid()
    parent.send_signal(signal.SIGINT)
    wait_until(lambda: signal_pending(child, signal.SIGTERM), 60, "SIGTERM to reach the child")  # grace begun
    parent.send_signal(signal.SIGINT)
    out, _ = parent.communicate(timeout=60)
    assert "interrupted again, killed at once" in out
    wait_gone(child)
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
