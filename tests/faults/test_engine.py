"""The engine (the fake StableDiffusionSample, a real process with a real grandchild) crashing, killed
or stalled at each stage of a `kitty-coreml generate`, and kitty-coreml itself killed while the engine
runs: one clear line, no process left, nothing half-written, nothing published twice."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.conftest import KITTY
from tests.proc_utils import read_pid, signal_pending, wait_until

from .conftest import (assert_all_gone, assert_clear_error, assert_nothing_half_written, read_pid_if_any,
                       term_ignoring_engine)

STEPS = "4"


def start_generate(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([KITTY, "generate", "a fault", "--steps", STEPS, *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def watched(env, tmp_path: Path) -> tuple[dict[str, str], Path, Path]:
    """The environment with the engine's and its child's pids written to files: (env, engine, child)."""
    engine, child = tmp_path / "engine.pid", tmp_path / "grandchild.pid"
    return {**env, "FAKE_SD_PID_FILE": str(engine), "FAKE_SD_SPAWN_CHILD": str(child)}, engine, child


# the fake counts steps from 0: 0 is the first denoising step, 4 the last (pndm prints steps + 1)
@pytest.mark.parametrize("knobs, says", [
    ({"FAKE_SD_FAIL": "resources missing"}, "resources missing"),           # while loading
    ({"FAKE_SD_CRASH_AT_STEP": "0"}, "crashed (killed by SIGSEGV"),          # first step
    ({"FAKE_SD_CRASH_AT_STEP": "4"}, "crashed (killed by SIGSEGV"),          # last step, before saving
], ids=["fails-loading", "crashes-first-step", "crashes-last-step"])
def test_an_engine_that_fails_at_a_stage(watched, home, knobs, says):
    env, engine_file, child_file = watched
    run = start_generate({**env, **knobs})
    _, stderr = run.communicate(timeout=120)
    assert run.returncode != 0 and says in assert_clear_error(stderr)
    assert_all_gone(read_pid_if_any(engine_file), read_pid_if_any(child_file))
    assert_nothing_half_written(home)


@pytest.mark.parametrize("step", ["0", "2"], ids=["stalls-first-step", "stalls-mid-run"])
def test_a_stalled_engine_is_killed_at_the_deadline(watched, home, step):
    env, engine_file, child_file = watched
    run = start_generate({**env, "FAKE_SD_HANG_AT_STEP": step}, "--timeout", "3")
    _, stderr = run.communicate(timeout=120)
    assert run.returncode != 0 and "did not finish within 3 s and was killed" in assert_clear_error(stderr)
    assert_all_gone(read_pid_if_any(engine_file), read_pid_if_any(child_file))
    assert_nothing_half_written(home)


def test_an_engine_killed_from_outside_mid_run(watched, home):
    env, engine_file, child_file = watched
    run = start_generate({**env, "FAKE_SD_HANG_AT_STEP": "2"})
    engine, child = read_pid(engine_file), read_pid(child_file)
    os.kill(engine, signal.SIGKILL)  # from outside the supervisor, as the OOM killer would
    _, stderr = run.communicate(timeout=120)
    assert run.returncode != 0 and "killed by SIGKILL" in assert_clear_error(stderr)
    assert_all_gone(engine, child)  # the child left in the engine's group is reaped too
    assert_nothing_half_written(home)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["sigterm", "sighup", "sigint"])
def test_kitty_coreml_stopped_by_a_signal_mid_run(watched, home, sig):
    env, engine_file, child_file = watched
    run = start_generate({**env, "FAKE_SD_HANG_AT_STEP": "2"})
    engine, child = read_pid(engine_file), read_pid(child_file)
    run.send_signal(sig)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode != 0 and "stopped" in assert_clear_error(stderr)
    assert_all_gone(engine, child)
    assert_nothing_half_written(home)


def test_kitty_coreml_killed_by_sigkill_takes_the_engine_tree_with_it(watched):
    env, engine_file, child_file = watched
    run = start_generate({**env, "FAKE_SD_HANG_AT_STEP": "2"})
    engine, child = read_pid(engine_file), read_pid(child_file)
    run.kill()
    run.communicate(timeout=60)
    assert_all_gone(engine, child)  # PR_SET_PDEATHSIG reaches the engine only; the watchdog the rest


def test_a_second_ctrl_c_during_the_kill_grace_kills_at_once(env, home, tmp_path):
    child_file = tmp_path / "grandchild.pid"
    stubborn = term_ignoring_engine(tmp_path, child_file)
    run = start_generate({**env, "KITTY_COREML_SAMPLE_BIN": str(stubborn)})
    child = read_pid(child_file)
    engine = psutil.Process(child).ppid()
    run.send_signal(signal.SIGINT)
    wait_until(lambda: signal_pending(engine, signal.SIGTERM), 60, "SIGTERM to reach the engine")  # grace begun
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    # "again" when the second Ctrl-C landed in the 3 s grace, as it does unless this machine stalls longer
    assert run.returncode != 0 and "stopped: interrupted" in assert_clear_error(stderr)
    assert_all_gone(engine, child)
    assert_nothing_half_written(home)
