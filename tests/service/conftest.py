"""A real `kitty-coreml serve` (and `kitty-coreml worker`) as subprocesses, and a real redis-server."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import KITTY, clean_env
from tests.proc_utils import wait_gone, wait_until

_LISTENING = re.compile(r"listening on (http://\S+)")


class Service:
    """`kitty-coreml serve --port 0`; ready once it printed its address and /healthz answers."""

    def __init__(self, env: dict[str, str], *args: str):
        self.env = env
        self.args = args
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.log: list[str] = []

    def start(self) -> Service:
        self.log = []
        self.process = subprocess.Popen([KITTY, "serve", "--port", "0", *self.args], env=self.env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)
        found = threading.Event()

        def pump() -> None:
            for line in self.process.stderr:
                self.log.append(line)
                match = _LISTENING.search(line)
                if match:
                    self.url = match.group(1)
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        wait_until(lambda: found.is_set() or self.process.poll() is not None, 30, "the service to listen")
        assert found.is_set(), "".join(self.log)
        wait_until(self._healthy, 30, "/healthz")
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, headers=headers)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)


def wait_job(client: httpx.Client, job_id: str, states=("finished", "failed"), timeout: float = 60) -> dict:
    seen: dict = {}

    def settled() -> bool:
        seen.update(client.get(f"/api/images/jobs/{job_id}").json())
        return seen.get("status") in states

    wait_until(settled, timeout, f"job {job_id} to reach {states}")
    return seen


@pytest.fixture
def mock_env(home: Path) -> dict[str, str]:
    """A service on the mock engine: procedural PNGs at the request's size."""
    return clean_env(KITTY_COREML_HOME=str(home), KITTY_COREML_ENGINE="mock", KITTY_COREML_PROGRESS="none")


@pytest.fixture
def service_factory():
    started: list[Service] = []

    def make(env: dict[str, str], *args: str) -> Service:
        service = Service(env, *args).start()
        started.append(service)
        return service

    yield make
    for service in started:
        service.stop(signal.SIGKILL)


@pytest.fixture
def mock_service(mock_env, service_factory) -> Service:
    return service_factory(mock_env)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path: Path):
    """A private redis-server on 127.0.0.1 (Debian package redis-server), no persistence."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed: apt-get install -y redis-server"
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if "Ready to accept connections" in line:
            break
    else:
        raise AssertionError(f"redis-server exited with {process.wait()}")
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


def start_worker(env: dict[str, str], url: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([KITTY, "worker", "--queue", url, *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            wait_gone(process.pid)
