"""Real S3 servers for the storage tests: every test that takes `s3_server` runs twice, against
`rclone serve s3` and against moto's server (auth on); one server of each kind per session, a fresh
bucket per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from kitty_coreml.storage.s3 import S3Store
from tests.s3server import SERVER_KINDS, S3Server


@pytest.fixture(scope="session", params=sorted(SERVER_KINDS))
def s3_server_class(request: pytest.FixtureRequest) -> type[S3Server]:
    """The kind of S3 server this run of a test talks to (`rclone` or `moto`)."""
    return SERVER_KINDS[request.param]


@pytest.fixture(scope="session")
def s3_server(s3_server_class, tmp_path_factory: pytest.TempPathFactory):
    server = s3_server_class(tmp_path_factory.mktemp(s3_server_class.kind)).start()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.create_bucket()


def make_store(server: S3Server, bucket: str, **overrides) -> S3Store:
    options = dict(bucket=bucket, endpoint_url=server.endpoint, access_key=server.access_key,
                   secret_key=server.secret_key, retry_total_s=1.0, retry_base_s=0.02, connect_timeout_s=1.0)
    options.update(overrides)
    return S3Store(**options)


@pytest.fixture
def store(s3_server: S3Server, bucket: str) -> S3Store:
    return make_store(s3_server, bucket)


def count_calls(store: S3Store, operation: str) -> list[int]:
    """A list that gets one entry per completed `operation` call: the number of keys it returned."""
    calls: list[int] = []
    store.client.meta.events.register(
        f"after-call.s3.{operation}",
        lambda parsed, **_: calls.append(len(parsed.get("Contents") or [])))
    return calls


def count_attempts(store: S3Store) -> list[str]:
    """A list that gets one entry per HTTP request the store's client sends (retries included)."""
    attempts: list[str] = []
    store.client.meta.events.register("before-send.s3", lambda request, **_: attempts.append(request.url))
    return attempts


def png_file(folder: Path, name: str = "a.png", payload: bytes = b"") -> Path:
    path = folder / name
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + payload)
    return path
