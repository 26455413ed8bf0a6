"""When the host kills the provider (SIGTERM on its timeout, or SIGKILL), or its terminal hangs up, the
engine and the engine's own children die with it: the old provider left StableDiffusionSample running.
The fake binary hangs at a step and starts a grandchild; their pids come from FAKE_SD_PID_FILE and
FAKE_SD_SPAWN_CHILD; each test waits, with a deadline, for both to disappear, and whatever a failing
test leaves is killed afterwards, so the suite itself never leaks a process."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.studio.harness import Provider, request
from tests.studio.host_rules import check_outcome

DEADLINE_S = 30.0


def wait_for_step(proc: subprocess.Popen, step: int) -> list[str]:
    """Read the provider's NDJSON progress until the engine reports `step`; the lines read."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        event = json.loads(line)
        if event.get("kind") == "step" and event.get("step") == step:
            return lines
    raise AssertionError(f"the provider ended before step {step}: {''.join(lines)[-500:]}")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.05)  # polling a condition with a deadline; there is no event for another's death
    return gone(pid)


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path: Path):
    """After each test, kill what its engine left (the test has already failed if anything is left)."""
    yield
    for name in ("engine.pid", "grandchild.pid"):
        path = tmp_path / name
        if path.exists() and path.read_text().strip() and not gone(int(path.read_text())):
            psutil.Process(int(path.read_text())).kill()


def hanging_run(fake: Provider, tmp_path: Path) -> tuple[subprocess.Popen, int, int, list[str]]:
    """A provider whose engine hangs after step 2 and has a grandchild; (provider, engine pid,
    grandchild pid, stderr lines so far)."""
    pid_file, child_file = tmp_path / "engine.pid", tmp_path / "grandchild.pid"
    proc = fake.start(request(), extra_env={"FAKE_SD_HANG_AT_STEP": "2", "FAKE_SD_PID_FILE": str(pid_file),
                                            "FAKE_SD_SPAWN_CHILD": str(child_file),
                                            "KITTY_COREML_PROGRESS": "ndjson"})
    lines = wait_for_step(proc, 3)  # the fake counts steps from 0; progress from 1
    engine, grandchild = int(pid_file.read_text()), int(child_file.read_text())
    assert not gone(engine) and not gone(grandchild)
    return proc, engine, grandchild, lines


def test_sigterm_cancels_the_generation_and_kills_the_engine(fake: Provider, tmp_path: Path) -> None:
    proc, engine, grandchild, lines = hanging_run(fake, tmp_path)
    proc.send_signal(signal.SIGTERM)
    stdout, rest = proc.communicate(timeout=DEADLINE_S)
    outcome = check_outcome(proc.returncode, stdout, "".join(lines) + rest)
    assert outcome.returncode == 1 and "SIGTERM" in outcome.error
    assert wait_gone(engine), f"engine {engine} outlived the provider"
    assert wait_gone(grandchild), f"the engine's child {grandchild} outlived the provider"


def test_sigkill_of_the_provider_takes_the_engine_and_its_children_with_it(fake: Provider, tmp_path: Path) -> None:
    proc, engine, grandchild, _ = hanging_run(fake, tmp_path)
    proc.kill()
    proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == -signal.SIGKILL
    assert wait_gone(engine), f"engine {engine} outlived the SIGKILLed provider"
    assert wait_gone(grandchild), f"the engine's child {grandchild} outlived the SIGKILLed provider"


@pytest.mark.parametrize("signals", [(signal.SIGHUP,), (signal.SIGTERM, signal.SIGTERM)], ids=["sighup", "twice"])
def test_sighup_or_a_second_signal_still_kills_everything(fake: Provider, tmp_path: Path, signals) -> None:
    proc, engine, grandchild, lines = hanging_run(fake, tmp_path)
    for sig in signals:
        proc.send_signal(sig)
    stdout, rest = proc.communicate(timeout=DEADLINE_S)
    outcome = check_outcome(proc.returncode, stdout, "".join(lines) + rest)
    assert outcome.returncode == 1 and signal.Signals(signals[-1]).name in outcome.error
    assert wait_gone(engine), f"engine {engine} outlived the provider"
    assert wait_gone(grandchild), f"the engine's child {grandchild} outlived the provider"
