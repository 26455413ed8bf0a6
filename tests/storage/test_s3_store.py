"""S3Store against a real S3 server (rclone serve s3): publishing, listing past 1000 keys, presigned
selection, and one-line errors for wrong credentials, unknown buckets and unreachable endpoints."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from kitty_coreml.errors import InvalidRequest, NotFound, StoreError
from kitty_coreml.settings import Settings
from kitty_coreml.storage import create_store
from kitty_coreml.storage.base import new_key, sidecar_key
from kitty_coreml.storage.s3 import S3Store

from .conftest import count_attempts, count_calls, make_store, png_file


def put_many(server, bucket: str, keys: list[str]) -> None:
    """Create PNG + sidecar objects quickly, as a gallery of that many images would hold. rclone's
    local backend now and then answers InternalError to concurrent puts, so this setup retries."""
    client = server.client(max_pool_connections=16, retries={"total_max_attempts": 5, "mode": "standard"})

    def put(key: str) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=b"png")
        client.put_object(Bucket=bucket, Key=sidecar_key(key), Body=b"{}")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, keys))


def test_from_settings_reads_kittys_variables(s3_server, bucket, tmp_path):
    settings = Settings.from_env({**s3_server.env(bucket, prefix="gallery"), "KITTY_COREML_HOME": str(tmp_path),
                                  "KITTY_COREML_PRESIGN_EXPIRY_S": "120"})
    store = create_store(settings)
    assert isinstance(store, S3Store) and store.kind == "s3"
    assert (store.bucket, store.prefix, store.presign_expiry_s) == (bucket, "gallery/", 120)
    key = new_key(store.prefix)
    (tmp_path / "meta.json").write_text("{}")
    stored = store.publish(key, png_file(tmp_path), tmp_path / "meta.json")
    assert stored.storage_uri == f"s3://{bucket}/{key}" and key.startswith("gallery/")


def test_publish_puts_png_then_sidecar_with_content_types(store, s3_server, bucket, tmp_path):
    key = new_key("images/")
    sidecar = tmp_path / "meta.json"
    sidecar.write_text(json.dumps({"prompt": "a red cube", "seed": 7}))
    order = []
    store.client.meta.events.register("before-parameter-build.s3.PutObject", lambda params, **_: order.append(params["Key"]))

    stored = store.publish(key, png_file(tmp_path, payload=b"pixels"), sidecar)

    assert stored.key == key and stored.storage_uri == f"s3://{bucket}/{key}"
    assert order == [key, sidecar_key(key)]
    client = s3_server.client()
    png = client.get_object(Bucket=bucket, Key=key)
    assert png["ContentType"] == "image/png" and png["Body"].read().endswith(b"pixels")
    meta = client.get_object(Bucket=bucket, Key=sidecar_key(key))
    assert meta["ContentType"] == "application/json"
    assert store.read_sidecar(key) == {"prompt": "a red cube", "seed": 7}
    assert store.read_sidecar(new_key("images/")) is None


def test_list_is_newest_first_past_1000_keys_reading_few(store, s3_server, bucket):
    # 3000 images (6000 objects), one every 10 s: the newest are far past the first 1000 keys.
    now = datetime.now(timezone.utc)
    keys = [new_key("images/", now - timedelta(seconds=10 * i)) for i in range(3000)]
    put_many(s3_server, bucket, keys)
    newest_first = sorted(keys, reverse=True)
    calls = count_calls(store, "ListObjectsV2")

    items = store.list(20)

    assert [item["key"] for item in items] == newest_first[:20]
    assert set(items[0]) == {"key", "size", "last_modified"} and items[0]["size"] == 3
    # Measured: 2 list calls reading 58 keys, where a full scan makes 6 calls reading 6000.
    assert len(calls) <= 3 and sum(calls) <= 200, calls

    calls.clear()
    assert [item["key"] for item in store.list(1500)] == newest_first[:1500]
    assert [item["key"] for item in store.list(5000)] == newest_first  # more than there is: all of it


def test_list_finds_images_after_a_long_gap_and_ignores_sidecars(store, s3_server, bucket):
    long_ago = datetime.now(timezone.utc) - timedelta(days=730)
    old = [new_key("images/", long_ago - timedelta(seconds=30 * i)) for i in range(50)]
    recent = [new_key("images/", datetime.now(timezone.utc) - timedelta(seconds=i)) for i in range(3)]
    put_many(s3_server, bucket, old + recent)
    s3_server.client().put_object(Bucket=bucket, Key="elsewhere/20991231_000000_00000000.png", Body=b"x")

    items = [item["key"] for item in store.list(10)]

    assert items == sorted(recent, reverse=True) + sorted(old, reverse=True)[:7]
    assert all(key.endswith(".png") and key.startswith("images/") for key in items)


def test_list_of_an_empty_prefix_is_empty_in_two_calls(store):
    calls = count_calls(store, "ListObjectsV2")
    assert store.list(36) == []
    assert len(calls) == 2


def test_list_refuses_a_bad_limit(store):
    with pytest.raises(InvalidRequest, match="limit"):
        store.list(0)


def test_select_gives_a_presigned_url_that_fetches_the_png(store, s3_server, bucket, tmp_path):
    key = new_key("images/")
    (tmp_path / "m.json").write_text("{}")
    store.publish(key, png_file(tmp_path, payload=b"the image"), tmp_path / "m.json")

    ref = store.select(key)["imageRef"]

    assert ref["storageUri"] == f"s3://{bucket}/{key}"
    assert "X-Amz-Expires=86400" in ref["downloadUrl"]
    if s3_server.kind == "moto":
        # moto's known limit: with its auth on, every presigned (query-signed) request fails with 500,
        # because moto/iam/access_control.py reads an Authorization header such a request does not have.
        with pytest.raises(urllib.error.HTTPError) as moto_fails:
            urllib.request.urlopen(ref["downloadUrl"], timeout=10)
        assert moto_fails.value.code == 500
        return
    with urllib.request.urlopen(ref["downloadUrl"], timeout=10) as response:
        assert response.read().endswith(b"the image")
    tampered = ref["downloadUrl"].replace("X-Amz-Expires=86400", "X-Amz-Expires=99999")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(tampered, timeout=10)
    assert refused.value.code == 403


def test_select_refuses_keys_outside_the_prefix_or_not_png_or_missing(store):
    with pytest.raises(InvalidRequest, match="prefix 'images/'"):
        store.select("other/20260101_000000_abcdef01.png")
    with pytest.raises(InvalidRequest, match="png"):
        store.select("images/20260101_000000_abcdef01.json")
    with pytest.raises(NotFound, match="no image"):
        store.select("images/20260101_000000_abcdef01.png")


def test_wrong_credentials_fail_at_once_in_one_line(s3_server, bucket, tmp_path):
    store = make_store(s3_server, bucket, secret_key="not-the-secret", retry_total_s=30.0)
    attempts = count_attempts(store)
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(StoreError) as failed:
        store.publish(new_key("images/"), png_file(tmp_path), tmp_path / "m.json")
    assert "refused the credentials" in failed.value.message and "\n" not in failed.value.one_line()
    assert "S3_SECRET_KEY" in failed.value.hint
    assert len(attempts) == 1  # never retried


def test_unknown_bucket_is_named_or_created_when_allowed(s3_server, tmp_path):
    (tmp_path / "m.json").write_text("{}")
    missing = make_store(s3_server, "no-such-bucket-here")
    with pytest.raises(StoreError, match="'no-such-bucket-here' .* does not exist") as failed:
        missing.publish(new_key("images/"), png_file(tmp_path), tmp_path / "m.json")
    assert "KITTY_COREML_S3_CREATE_BUCKET" in failed.value.hint

    creating = make_store(s3_server, "created-on-demand", create_bucket=True)
    key = new_key("images/")
    creating.publish(key, png_file(tmp_path), tmp_path / "m.json")
    assert [item["key"] for item in creating.list(5)] == [key]


def test_unreachable_endpoint_retries_for_a_bounded_time(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = S3Store(bucket="any-bucket", endpoint_url=f"http://127.0.0.1:{port}", access_key="KEY1234567",
                    secret_key="SECRET1234567", retry_total_s=0.5, retry_base_s=0.05)
    attempts = count_attempts(store)
    with pytest.raises(StoreError, match=f"cannot reach bucket 'any-bucket' at http://127.0.0.1:{port}") as failed:
        store.list(5)
    assert len(attempts) >= 2  # retried
    assert "attempts in 0.5 s" in failed.value.message


def _truth(server, bucket: str, limit: int) -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="images/")
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", []) if obj["Key"].endswith(".png")]
    return sorted(keys, reverse=True)[:limit]


def test_a_repeated_listing_is_one_call_and_sees_deletions_and_other_writers(store, s3_server, bucket):
    now = datetime.now(timezone.utc)
    keys = [new_key("images/", now - timedelta(seconds=10 + 10 * i)) for i in range(600)]  # 1200 objects
    put_many(s3_server, bucket, keys)
    first = [item["key"] for item in store.list(36)]
    assert first == sorted(keys, reverse=True)[:36]
    calls = count_calls(store, "ListObjectsV2")

    assert [item["key"] for item in store.list(36)] == first
    assert len(calls) == 1  # no probes: the first window starts where the last listing ended

    other = s3_server.client()  # another writer and deleter beside this process
    for gone in (first[0], first[20]):
        other.delete_object(Bucket=bucket, Key=gone)
        other.delete_object(Bucket=bucket, Key=sidecar_key(gone))
    put_many(s3_server, bucket, [new_key("images/", datetime.now(timezone.utc)) for _ in range(3)])
    calls.clear()
    assert [item["key"] for item in store.list(36)] == _truth(s3_server, bucket, 36)
    assert len(calls) <= 2, calls  # one call, and one more window below for the two deleted
    assert [item["key"] for item in make_store(s3_server, bucket).list(36)] == _truth(s3_server, bucket, 36)


def test_a_listing_of_nearly_everything_reads_in_full_pages(store, s3_server, bucket):
    now = datetime.now(timezone.utc)
    keys = [new_key("images/", now - timedelta(seconds=10 * i)) for i in range(600)]
    put_many(s3_server, bucket, keys)
    calls = count_calls(store, "ListObjectsV2")

    assert [item["key"] for item in store.list(550)] == sorted(keys, reverse=True)[:550]
    # exactly a plain paginated scan of the 1200 objects (the walk from now made 4 calls)
    assert calls == [1000, 200]


def test_checksum_headers_only_when_asked(s3_server, bucket, tmp_path):
    (tmp_path / "m.json").write_text("{}")
    sent: dict[bool, list[dict]] = {}
    for checksums in (False, True):
        store = make_store(s3_server, bucket, checksums=checksums)
        sent[checksums] = []
        store.client.meta.events.register(
            "before-send.s3.PutObject", lambda request, sink=sent[checksums], **_: sink.append(dict(request.headers)))
        key = new_key("images/")
        store.publish(key, png_file(tmp_path), tmp_path / "m.json")
        assert store.select(key)["imageRef"]["storageUri"].endswith(key)
    assert len(sent[False]) == len(sent[True]) == 2
    assert not any(name.lower().startswith("x-amz-checksum") for headers in sent[False] for name in headers)
    assert all(any(name.lower() == "x-amz-checksum-crc32" for name in headers) for headers in sent[True])
    on = Settings.from_env({"KITTY_COREML_HOME": str(tmp_path), "KITTY_COREML_S3_CHECKSUMS": "1"})
    assert on.s3_checksums and not Settings.from_env({"KITTY_COREML_HOME": str(tmp_path)}).s3_checksums


def test_one_store_and_client_per_process_for_the_same_settings(s3_server, bucket, tmp_path):
    def settings(name: str) -> Settings:
        return Settings.from_env({**s3_server.env(name), "KITTY_COREML_HOME": str(tmp_path)})

    first, again = create_store(settings(bucket)), create_store(settings(bucket))
    assert first is again and first.client is again.client
    other = create_store(settings(bucket + "-other"))
    assert other is not first and other.bucket == bucket + "-other"


def test_a_small_gallery_that_grows_is_still_listed_in_few_calls(store, s3_server, bucket):
    now = datetime.now(timezone.utc)
    put_many(s3_server, bucket, [new_key("images/", now - timedelta(seconds=2000 + 10 * i)) for i in range(10)])
    assert len(store.list(36)) == 10  # all of it: the next listing of 36 starts at the beginning
    calls = count_calls(store, "ListObjectsV2")
    assert len(store.list(36)) == 10 and len(calls) == 1

    put_many(s3_server, bucket, [new_key("images/", now - timedelta(seconds=10 * i)) for i in range(100)])
    calls.clear()
    assert [item["key"] for item in store.list(36)] == _truth(s3_server, bucket, 36)
    assert len(calls) <= 6, calls  # halved from the oldest key, not from the beginning of time
