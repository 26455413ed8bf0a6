"""The S3 store: images and their JSON sidecars in MinIO or any S3, laid out as KITTY lays them out.

Keys are `{prefix}{YYYYmmdd_HHMMSS}_{8 hex}.png` (UTC) with a `.json` sidecar of the same stem, so
KITTY's gallery and CLI see what kitty-coreml publishes. The PNG is uploaded first and the sidecar last,
so a listing never shows a sidecar without its image. Metadata lives in the sidecar, never in object
headers (servers such as `rclone serve s3` drop user metadata). Addressing is path-style, signatures v4.

Newest-first listing without reading the whole prefix
-----------------------------------------------------
S3 lists keys only in ascending order, 1000 per call. KITTY lists the first 1000 keys and sorts them,
which misses the newest images once the prefix holds more. Reading every key on every call is right
but costs one call per 1000 objects. Since the key layout puts the UTC time first, key order is time
order, and a listing can walk time windows backwards from now:

* A window [lo, hi) of seconds is read with `StartAfter={prefix}{lo as YYYYmmdd_HHMMSS}`, ascending,
  stopping at the first key at or past `{prefix}{hi}`. The newest window is open above, so keys from a
  client whose clock runs ahead are still listed.
* The first window is 60 s. Each later window lies just below the previous one and is larger: x8
  after an empty window, otherwise scaled by the density seen (x2..x8), so a gallery whose newest image
  is years old is reached in about ten calls.
* A window whose first page (sized to about twice the objects still needed) does not reach its upper
  end is dense: it is halved and the newer half read first; the older half is read only if still needed.
  Only a single second holding more than a page of objects is read whole.
* The walk ends as soon as `limit` PNGs are known (every window is read completely, and all later
  windows are older), or once it passes the oldest key of the prefix, found with one `MaxKeys=1` call
  made only when the first window was not enough.

* A repeated listing of the same limit starts its first window at the second of the oldest image the
  last one returned: one call reads every image at or above it again, so new images, deletions and
  other writers are all seen; only when fewer than `limit` remain does the walk go on below. (Any first
  window is correct; this one is cheap: a gallery poll of /latest?limit=36 is one call.)
* A large limit (half a page of images or more) reads the oldest page first: when the prefix's size,
  estimated from that page's time span, is about what is needed anyway, a plain paginated scan is cheaper
  than the walk and is done instead; the walk also switches to full pages when what is left is small.

Measured with `rclone serve s3` (tests/storage/test_s3_store.py): 3000 images (6000 objects) one every
10 s, `list(20)` makes 2 list calls reading 60 keys; after a 2-year gap, 9 calls. Nothing is stored in
the bucket: no index object to keep consistent between concurrent writers (rclone, for one, ignores
conditional puts); the only state is the per-limit start of the first window, in this process.
PNG keys that do not start with a digit after the prefix are not KITTY's layout and are not listed.

Retries: connection failures, 5xx and throttling are retried with exponential backoff and jitter until
`retry_total_s` has passed (KITTY_COREML_S3_RETRY_TOTAL_S); refused credentials are never retried.
Every failure surfaces as a one-line StoreError naming the endpoint and bucket.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import InvalidRequest, NotFound, StoreError
from .base import StoredImage, sidecar_key

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["S3Store"]

T = TypeVar("T")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MIN_SECONDS = int((datetime(1, 1, 2, tzinfo=timezone.utc) - _EPOCH).total_seconds())
_FIRST_WINDOW_S = 60
_PAGE_MAX = 1000
_MAX_HINTS = 16  # listing limits whose first window is remembered
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
               "InvalidToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed", "MissingSecurityHeader"}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestTimeout",
                    "InternalError", "ServiceUnavailable", "TooManyRequests", "RequestThrottled"}
_NO_BUCKET_CODES = {"NoSuchBucket"}


def _stamp(seconds: int) -> str:
    return f"{_EPOCH + timedelta(seconds=max(seconds, _MIN_SECONDS)):%Y%m%d_%H%M%S}"


def _seconds_of(name: str) -> int | None:
    """Epoch seconds of a key name in KITTY's layout (YYYYmmdd_HHMMSS_...), None for other names."""
    try:
        stamp = datetime.strptime(name[:15], "%Y%m%d_%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return int((stamp - _EPOCH).total_seconds())


class _Transient(Exception):
    """A failure worth another attempt; carries the one-line reason."""


class _NoBucket(Exception):
    """The bucket does not exist (NoSuchBucket)."""


def _new_client(*, endpoint_url: str | None, region: str, access_key: str | None, secret_key: str | None,
                connect_timeout_s: float, read_timeout_s: float, max_connections: int, checksums: bool):
    """A boto3 S3 client (thread-safe; building one parses the service model: about 100 ms)."""
    import boto3
    from botocore.config import Config

    # boto3 >= 1.36 sends CRC32 checksum headers on every upload unless told `when_required`; MinIO
    # releases, Cloudflare R2 and Backblaze B2 have rejected them (boto/boto3#4392, botocore#3352).
    checksum_policy = "when_supported" if checksums else "when_required"
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=region,
        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      retries={"total_max_attempts": 1},  # retries are ours: bounded in total time
                      connect_timeout=connect_timeout_s, read_timeout=read_timeout_s,
                      max_pool_connections=max_connections,
                      request_checksum_calculation=checksum_policy,
                      response_checksum_validation=checksum_policy))


class S3Store:
    kind = "s3"

    def __init__(self, *, bucket: str, prefix: str = "images/", endpoint_url: str | None = None,
                 region: str = "us-east-1", access_key: str | None = None, secret_key: str | None = None,
                 create_bucket: bool = False, presign_expiry_s: int = 86400, retry_total_s: float = 20.0,
                 retry_base_s: float = 0.2, connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0,
                 max_connections: int = 16, checksums: bool = False):
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.create_bucket = create_bucket
        self.presign_expiry_s = presign_expiry_s
        self.retry_total_s = retry_total_s
        self.retry_base_s = retry_base_s
        self.where = f"bucket {bucket!r} at {endpoint_url or 'AWS S3 (' + region + ')'}"
        self.client = _new_client(endpoint_url=endpoint_url, region=region, access_key=access_key,
                                  secret_key=secret_key, connect_timeout_s=connect_timeout_s,
                                  read_timeout_s=read_timeout_s, max_connections=max_connections,
                                  checksums=checksums)
        self._hints_lock = threading.Lock()
        self._first_window_hints: dict[int, int] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        return cls(bucket=settings.s3_bucket, prefix=settings.prefix, endpoint_url=settings.s3_endpoint_url,
                   region=settings.s3_region, access_key=settings.s3_access_key,
                   secret_key=settings.s3_secret_key, create_bucket=settings.s3_create_bucket,
                   presign_expiry_s=settings.presign_expiry_s, retry_total_s=settings.s3_retry_total_s,
                   connect_timeout_s=min(5.0, settings.s3_timeout_s), read_timeout_s=settings.s3_timeout_s,
                   checksums=settings.s3_checksums)

    # -- calls, retries and errors -------------------------------------------------------------

    def _call(self, what: str, operation: Callable[[], T]) -> T:
        """Run one S3 operation: transient failures retried until retry_total_s, a missing bucket
        created once when allowed, everything else one StoreError."""
        deadline = time.monotonic() + self.retry_total_s
        attempt = 0
        created = False
        while True:
            attempt += 1
            try:
                return operation()
            except Exception as exc:  # classified below; nothing unclassified escapes as a traceback
                try:
                    self._raise_permanent(what, exc)
                except _NoBucket:
                    if not self.create_bucket or created:
                        raise StoreError(f"{what}: {self.where} does not exist", hint=(
                            "create it, or set KITTY_COREML_S3_CREATE_BUCKET=1 to let kitty-coreml create it"))
                    self._create_bucket()
                    created = True
                    continue
                except _Transient as transient:
                    delay = min(2.0, self.retry_base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                    if time.monotonic() + delay > deadline:
                        raise StoreError(f"{what}: cannot reach {self.where}: {transient} "
                                         f"({attempt} attempt{'s' if attempt > 1 else ''} "
                                         f"in {self.retry_total_s:g} s)",
                                         hint="check S3_ENDPOINT_URL and that the server is up; "
                                              "`kitty-coreml publish --pending` sends what is held back") from None
                    time.sleep(delay)

    def _raise_permanent(self, what: str, exc: Exception) -> None:
        from botocore.exceptions import (BotoCoreError, ClientError, ConnectionError, HTTPClientError,
                                         NoCredentialsError, PartialCredentialsError)

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            message = " ".join(str(error.get("Message") or "").split())
            if code in _AUTH_CODES or status in (401, 403):
                raise StoreError(f"{what}: {self.where} refused the credentials ({code or status}: {message})",
                                 hint="check S3_ACCESS_KEY and S3_SECRET_KEY") from None
            if code in _NO_BUCKET_CODES:
                raise _NoBucket from None
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                raise _Transient(f"{code or status} {message}".strip()) from None
            raise StoreError(f"{what}: {self.where} answered {code or status}: {message}") from None
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            raise StoreError(f"{what}: no S3 credentials for {self.where}",
                             hint="set S3_ACCESS_KEY and S3_SECRET_KEY") from None
        if isinstance(exc, (ConnectionError, HTTPClientError)):
            raise _Transient(" ".join(str(exc).split())) from None
        if isinstance(exc, BotoCoreError):
            raise StoreError(f"{what}: {self.where}: {' '.join(str(exc).split())}") from None
        raise exc

    def _create_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                self._raise_permanent(f"creating {self.bucket!r}", exc)

    def _check_key(self, key: str) -> None:
        if (not isinstance(key, str) or not key.startswith(self.prefix) or not key.endswith(".png")
                or len(key) <= len(self.prefix) + len(".png") or ".." in key.split("/")):
            raise InvalidRequest("key", key, f"a .png key under the prefix {self.prefix!r} of bucket {self.bucket!r}")

    # -- the Store protocol ----------------------------------------------------------------------

    def publish(self, key: str, png: Path, sidecar: Path) -> StoredImage:
        """Upload the PNG, then its sidecar. Both bodies are read once so a retry sends them again."""
        self._check_key(key)
        png_body = Path(png).read_bytes()
        sidecar_body = Path(sidecar).read_bytes()
        self._call(f"uploading {key}", lambda: self.client.put_object(
            Bucket=self.bucket, Key=key, Body=png_body, ContentType="image/png"))
        meta_key = sidecar_key(key)
        self._call(f"uploading {meta_key}", lambda: self.client.put_object(
            Bucket=self.bucket, Key=meta_key, Body=sidecar_body, ContentType="application/json"))
        return StoredImage(key=key, storage_uri=f"s3://{self.bucket}/{key}")

    def list(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` PNGs, newest first: [{"key", "size", "last_modified"}] (ISO 8601, UTC)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidRequest("limit", limit, "an integer >= 1")
        found: list[dict[str, Any]] = []
        now = int(time.time())
        with self._hints_lock:
            hint = self._first_window_hints.get(limit)
        lo = now - _FIRST_WINDOW_S if hint is None else hint
        hi, span = None, max(_FIRST_WINDOW_S, now - lo)
        oldest: str | None = None
        floor = _MIN_SECONDS
        if hint is None and 2 * limit >= _PAGE_MAX:
            scanned, oldest = self._scan_if_cheaper(limit, now)
            if scanned is not None:
                self._remember_first_window(limit, scanned)
                return scanned[:limit]
            floor = max(floor, _seconds_of(oldest[len(self.prefix):]) or floor)
        while True:
            got = self._read_window(lo, hi, limit - len(found), found)
            if len(found) >= limit or lo <= floor:
                break
            needed = limit - len(found)
            if got == 0 or 2 * needed >= _PAGE_MAX // 2:  # a gap, or a scan may be cheaper: how old is the oldest?
                if oldest is None:
                    oldest = self._oldest_key() or ""
                    floor = max(floor, _seconds_of(oldest[len(self.prefix):]) or floor)
                if not oldest or self._bound(lo) <= oldest:
                    break
            density = len(found) / max(1, now - lo)
            if found and 2 * needed >= _PAGE_MAX // 2 and 2 * density * (lo - floor) <= 2.5 * needed + _PAGE_MAX:
                # What is left is about what is still needed: read it in full pages, no windows.
                self._read_window(floor, lo, needed, found, split=False)
                break
            if got == 0:
                span *= 8
            else:  # aim the next window at what is still needed, at the density seen so far
                span = min(64 * span, max(2 * span, math.ceil(1.25 * needed / density)))
            lo, hi = max(lo - span, floor), lo
        self._remember_first_window(limit, found)
        return found[:limit]

    def _scan_if_cheaper(self, limit: int, now: int) -> tuple[list[dict[str, Any]] | None, str]:
        """For a large limit, read the oldest page first: it is the whole prefix, or it tells how many
        objects there are (its time span against the prefix's); when a plain paginated scan reads no
        more than the walk would, go on scanning. Returns (the PNGs newest first, or None: walk
        instead; the oldest key, "" when the prefix is empty)."""
        page = self._list_page(self.prefix + "/", _PAGE_MAX)
        objects = list(page.get("Contents") or [])
        if not objects:
            return [], ""
        oldest = objects[0]["Key"]
        if page.get("IsTruncated"):
            first = _seconds_of(oldest[len(self.prefix):])
            last = _seconds_of(objects[-1]["Key"][len(self.prefix):])
            if first is None or last is None:
                return None, oldest
            estimated_objects = len(objects) * max(1, now - first) / max(1, last - first)
            if estimated_objects > 2.5 * 2 * limit + _PAGE_MAX:
                return None, oldest
            while page.get("IsTruncated") and objects:
                page = self._list_page(objects[-1]["Key"], _PAGE_MAX)
                if not page.get("Contents"):
                    break
                objects.extend(page["Contents"])
        found: list[dict[str, Any]] = []
        _append_newest_first([obj for obj in objects if obj["Key"] < self.prefix + ":"], found)
        return found, oldest

    def _remember_first_window(self, limit: int, found: list[dict[str, Any]]) -> None:
        """Where the next listing of `limit` starts: at the second of the oldest image returned now (one
        call reads it all again: new images, and deletions, are seen), or at the very beginning when the
        prefix holds fewer images than that. Any start is correct; this one is cheap."""
        if len(found) < limit:
            start: int | None = _MIN_SECONDS
        else:
            start = _seconds_of(found[limit - 1]["key"][len(self.prefix):])
        if start is None:
            return
        with self._hints_lock:
            if len(self._first_window_hints) >= _MAX_HINTS and limit not in self._first_window_hints:
                self._first_window_hints.pop(next(iter(self._first_window_hints)))
            self._first_window_hints[limit] = start

    def select(self, key: str) -> dict[str, Any]:
        """A presigned GET (settings.presign_expiry_s) and the s3:// URI of an existing image."""
        self._check_key(key)
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
            return True

        if not self._call(f"looking up {key}", head):
            raise NotFound(f"no image {key!r} in {self.where}", hint="`kitty-coreml images list` shows what there is")
        url = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.presign_expiry_s)
        return {"imageRef": {"downloadUrl": url, "storageUri": f"s3://{self.bucket}/{key}"}}

    def read_sidecar(self, key: str) -> dict[str, Any] | None:
        self._check_key(key)
        from botocore.exceptions import ClientError

        meta_key = sidecar_key(key)

        def get() -> bytes | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=meta_key)["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

        body = self._call(f"reading {meta_key}", get)
        if body is None:
            return None
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise StoreError(f"sidecar {meta_key} in {self.where} is not JSON: {exc}") from None
        return data if isinstance(data, dict) else None

    # -- listing ---------------------------------------------------------------------------------

    def _bound(self, seconds: int) -> str:
        return self.prefix + _stamp(seconds)

    def _list_page(self, start_after: str, max_keys: int, narrow: str = "") -> dict[str, Any]:
        return self._call("listing images", lambda: self.client.list_objects_v2(
            Bucket=self.bucket, Prefix=self.prefix + narrow, StartAfter=start_after, MaxKeys=max_keys))

    def _oldest_key(self) -> str | None:
        """The smallest key of KITTY's layout under the prefix ('/' sorts just below the digits)."""
        contents = self._list_page(self.prefix + "/", 1).get("Contents") or []
        return contents[0]["Key"] if contents else None

    def _read_window(self, lo: int, hi: int | None, needed: int, found: list[dict[str, Any]],
                     split: bool = True) -> int:
        """Append the PNGs of seconds [lo, hi) (hi None: no upper end) to found, newest first, and say
        how many. A dense window is halved, the newer half read first, the older one only if needed;
        with split False it is read whole in full pages."""
        upper = self._bound(hi) if hi is not None else self.prefix + ":"  # ':' sorts just above '9'
        # Keys sharing the window's leading digits bound the listing from above: less read past hi.
        narrow = os.path.commonprefix([_stamp(lo), _stamp(hi - 1)]) if hi is not None else ""
        first_page = min(_PAGE_MAX, 4 * needed + 16) if split else _PAGE_MAX  # an image: PNG and sidecar
        page = self._list_page(self._bound(lo), first_page, narrow)
        objects: list[dict[str, Any]] = []
        while True:
            contents = page.get("Contents") or []
            objects.extend(obj for obj in contents if obj["Key"] < upper)
            if not page.get("IsTruncated") or not contents or contents[-1]["Key"] >= upper:
                break
            top = hi if hi is not None else max(int(time.time()), lo) + 1
            dense = sum(1 for obj in objects if obj["Key"].endswith(".png")) >= needed
            # nothing lies below the first key listed: halve from there (a window opened at the very
            # beginning of time is halved where the images are, not in year 1000)
            base = max(lo, min(top - 1, _seconds_of(objects[0]["Key"][len(self.prefix):]) or lo)) if objects else lo
            if split and dense and top - base > 1:  # more than needed here: the newer half may be enough
                mid = base + (top - base) // 2
                got = self._read_window(mid, hi, needed, found)
                if got >= needed:
                    return got
                return got + self._read_window(lo, mid, needed - got, found)
            page = self._list_page(contents[-1]["Key"], _PAGE_MAX, narrow)
        return _append_newest_first(objects, found)


def _append_newest_first(objects: list[dict[str, Any]], found: list[dict[str, Any]]) -> int:
    """Append the PNGs among listed objects to found, newest first, as listing items; say how many."""
    pngs = sorted((obj for obj in objects if obj["Key"].endswith(".png")), key=lambda obj: obj["Key"], reverse=True)
    for obj in pngs:
        modified = obj.get("LastModified")
        found.append({"key": obj["Key"], "size": obj.get("Size"),
                      "last_modified": modified.astimezone(timezone.utc).isoformat() if modified else None})
    return len(pngs)
