"""Shared fixtures: a private KITTY_COREML_HOME, the fake StableDiffusionSample, fake resource folders,
and a runner for the real `kitty-coreml` console script as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes import make_resources, write_fake_binary

# A suite started in the background of a script (`bash .ci/run &`) inherits SIGINT ignored, as POSIX
# shells leave it for background jobs, and every process the tests start would inherit that too: the
# Ctrl-C tests would then send a signal nobody hears. The suite takes SIGINT as a terminal session does.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

BIN_DIR = Path(sys.executable).parent
KITTY = str(BIN_DIR / "kitty-coreml")

_SCRUBBED = ("KITTY_COREML_", "S3_", "SYSTEMSCULPT_", "FAKE_SD_", "REDIS_URL", "SERVICE_PORT", "HF_")


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any setting of ours, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self):
        return json.loads(self.stdout)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    return write_fake_binary(folder)


@pytest.fixture
def resources(tmp_path: Path) -> Path:
    return make_resources(tmp_path / "sd21", encoder=True)


@pytest.fixture
def env(home: Path, fake_bin: Path, resources: Path) -> dict[str, str]:
    """Everything a `kitty-coreml generate` needs to run against the fake binary."""
    return clean_env(KITTY_COREML_HOME=str(home), KITTY_COREML_SAMPLE_BIN=str(fake_bin),
                     KITTY_COREML_RESOURCE_PATH=str(resources), KITTY_COREML_PROGRESS="none")


@pytest.fixture
def kitty(env: dict[str, str]):
    """kitty("generate", "a prompt", "--json", env={...}) runs the console script; returns a Run."""

    def run(*args: str, extra_env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None) -> Run:
        proc = subprocess.run([KITTY, *args], capture_output=True, text=True, timeout=timeout,
                              env={**env, **(extra_env or {})}, stdin=subprocess.DEVNULL, cwd=cwd)
        return Run(proc.returncode, proc.stdout, proc.stderr)

    return run
