"""The outbox against a real S3 server: staging, exactly-once publishing under concurrency (threads and
processes), and nothing lost while the server is down."""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter

import pytest

from kitty_coreml.errors import InvalidRequest, StoreError
from kitty_coreml.storage.base import new_key
from kitty_coreml.storage.outbox import pending, publish_item, publish_pending, stage
from tests.conftest import KITTY, clean_env
from tests.s3server import S3Server

from .conftest import make_store

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


class CountingStore:
    """The real S3Store, counting how often each key is published."""

    def __init__(self, inner):
        self.inner, self.kind, self.counts, self.lock = inner, inner.kind, Counter(), threading.Lock()

    def publish(self, key, png, sidecar):
        with self.lock:
            self.counts[key] += 1
        return self.inner.publish(key, png, sidecar)

    def select(self, key):
        return self.inner.select(key)


def stored_keys(server: S3Server, bucket: str) -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def test_stage_writes_png_then_sidecar_and_no_temporary_files(tmp_path):
    key = new_key("images/")
    item = stage(tmp_path, key, PNG, {"prompt": "a red cube"})
    assert item.png.read_bytes() == PNG and json.loads(item.sidecar.read_text()) == {"prompt": "a red cube"}
    assert sorted(p.name for p in item.png.parent.iterdir()) == sorted([item.png.name, item.sidecar.name])
    assert pending(tmp_path) == [item]
    with pytest.raises(InvalidRequest, match="key"):
        stage(tmp_path, "../escape.png", PNG, {})


def test_two_publishers_at_once_send_each_item_exactly_once(s3_server, bucket, tmp_path):
    keys = sorted({new_key("images/") for _ in range(120)})
    for key in keys:
        stage(tmp_path, key, PNG, {"key": key})
    store = CountingStore(make_store(s3_server, bucket))
    reports = [None, None]
    start = threading.Barrier(2)

    def run(slot: int) -> None:
        start.wait()
        reports[slot] = publish_pending(store, tmp_path, workers=4)

    threads = [threading.Thread(target=run, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert store.counts == Counter({key: 1 for key in keys})
    assert sorted(reports[0]["published"] + reports[1]["published"]) == keys
    assert reports[0]["failed"] == reports[1]["failed"] == [] and pending(tmp_path) == []
    assert [k for k in stored_keys(s3_server, bucket) if k.endswith(".png")] == keys


def test_publish_item_waits_for_a_concurrent_publisher_and_reports_where_it_went(s3_server, bucket, tmp_path):
    store = make_store(s3_server, bucket)
    item = stage(tmp_path, new_key("images/"), PNG, {})
    publish_pending(store, tmp_path)
    stored = publish_item(store, item)  # already sent by the other publisher: not sent again
    assert stored.storage_uri == f"s3://{bucket}/{item.key}"


def test_pending_cli_in_two_processes_at_once(s3_server, bucket, tmp_path):
    home = tmp_path / "home"
    keys = sorted({new_key("images/") for _ in range(60)})
    for key in keys:
        stage(home / "outbox", key, PNG, {})
    env = clean_env(KITTY_COREML_HOME=str(home), **s3_server.env(bucket))
    runs = [subprocess.Popen([KITTY, "publish", "--pending", "--json", "--workers", "4"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    reports = [json.loads(out) for out, _ in outputs]
    assert sorted(reports[0]["published"] + reports[1]["published"]) == keys
    assert [k for k in stored_keys(s3_server, bucket) if k.endswith(".png")] == keys
    # deleting the sent files happens off the publishing path, and is over before the processes exit
    assert [path for path in (home / "outbox").rglob("*") if path.is_file()] == []


def test_published_items_leave_the_outbox_and_leftovers_are_swept(s3_server, bucket, tmp_path):
    store = make_store(s3_server, bucket)
    item = stage(tmp_path, new_key("images/"), PNG, {})
    publish_item(store, item)
    assert not item.png.exists() and not item.sidecar.exists() and pending(tmp_path) == []
    leftover = item.png.parent / ".sent" / "20260101_000000_00000000.png"  # from a publisher that was killed
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(PNG)
    assert publish_pending(store, tmp_path)["published"] == []
    assert not leftover.exists()


def test_failed_publish_keeps_items_and_the_cli_exits_non_zero(s3_server, bucket, tmp_path):
    home = tmp_path / "home"
    item = stage(home / "outbox", new_key("images/"), PNG, {"seed": 1})
    with pytest.raises(StoreError, match="refused the credentials"):
        publish_item(make_store(s3_server, bucket, secret_key="wrong-secret-value"), item)
    assert pending(home / "outbox") == [item]

    env = clean_env(KITTY_COREML_HOME=str(home), **{**s3_server.env(bucket), "S3_SECRET_KEY": "wrong-secret-value"})
    run = subprocess.run([KITTY, "publish", "--pending", "--json"], env=env, capture_output=True, text=True, timeout=60)
    report = json.loads(run.stdout)
    assert run.returncode == StoreError.exit_code
    assert report["failed"][0]["key"] == item.key and "refused the credentials" in report["failed"][0]["error"]
    assert report["remaining"] == 1 and item.png.exists() and item.sidecar.exists()


def test_server_down_then_back_then_publish_pending(tmp_path, home, kitty, s3_server_class):
    server = s3_server_class(tmp_path / "s3").start()
    try:
        bucket = server.create_bucket()
        s3_env = {**server.env(bucket), "KITTY_COREML_S3_RETRY_TOTAL_S": "0.5"}
        server.stop()

        down = kitty("generate", "a red cube", "--json", extra_env=s3_env)
        assert down.returncode == 9, down.stderr  # PublishPending
        assert "outbox" in down.stderr and "cannot reach" in down.stderr
        outbox = pending(home / "outbox")
        assert len(outbox) == 1 and json.loads(outbox[0].sidecar.read_text())

        server.start()
        s3_env.update(server.env(bucket))  # moto, in memory, comes back with a new access key
        sent = kitty("publish", "--pending", "--json", extra_env=s3_env)
        assert sent.returncode == 0, sent.stderr
        assert sent.json["published"] == [outbox[0].key] and sent.json["remaining"] == 0
        assert stored_keys(server, bucket) == sorted([outbox[0].key, outbox[0].key[:-4] + ".json"])
        again = kitty("publish", "--pending", "--json", extra_env=s3_env)
        assert again.json["published"] == [] and again.returncode == 0
    finally:
        server.stop()


def test_generate_into_s3_while_publish_pending_runs(s3_server, bucket, env, kitty, home):
    s3_env = s3_server.env(bucket)
    generate = subprocess.Popen([KITTY, "generate", "a blue sphere", "--count", "4", "--json"],
                                env={**env, **s3_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pending_published: list[str] = []
    while generate.poll() is None:
        run = kitty("publish", "--pending", "--json", extra_env=s3_env)
        assert run.returncode == 0, run.stderr
        pending_published += run.json["published"]
    out, err = generate.communicate(timeout=120)
    assert generate.returncode == 0, err
    images = json.loads(out)["images"]
    keys = sorted(image["key"] for image in images)
    assert len(keys) == 4 and len(pending_published) == len(set(pending_published)) <= 4
    assert all(image["storageUri"] == f"s3://{bucket}/{image['key']}" and image["key"].startswith("images/")
               for image in images)
    stored = stored_keys(s3_server, bucket)
    assert [k for k in stored if k.endswith(".png")] == keys and len(stored) == 8
    assert pending(home / "outbox") == []
