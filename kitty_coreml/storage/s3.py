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

Measured with `rclone serve s3` (tests/storage/test_s3_store.py): 3000 images (6000 objects) one every
10 s, `list(20)` makes 2 list calls reading 60 keys; after a 2-year gap, 9 calls. The walk is stateless:
no index object to keep consistent between concurrent writers (rclone, for one, ignores conditional puts).
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


class S3Store:
    kind = "s3"

    def __init__(self, *, bucket: str, prefix: str = "images/", endpoint_url: str | None = None,
                 region: str = "us-east-1", access_key: str | None = None, secret_key: str | None = None,
                 create_bucket: bool = False, presign_expiry_s: int = 86400, retry_total_s: float = 20.0,
                 retry_base_s: float = 0.2, connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0,
                 max_connections: int = 16):
        import boto3
        from botocore.config import Config

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
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"total_max_attempts": 1},  # retries are ours: bounded in total time
                          connect_timeout=connect_timeout_s, read_timeout=read_timeout_s,
                          max_pool_connections=max_connections),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        return cls(bucket=settings.s3_bucket, prefix=settings.prefix, endpoint_url=settings.s3_endpoint_url,
                   region=settings.s3_region, access_key=settings.s3_access_key,
                   secret_key=settings.s3_secret_key, create_bucket=settings.s3_create_bucket,
                   presign_expiry_s=settings.presign_expiry_s, retry_total_s=settings.s3_retry_total_s,
                   connect_timeout_s=min(5.0, settings.s3_timeout_s), read_timeout_s=settings.s3_timeout_s)

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
        lo, hi, span = now - _FIRST_WINDOW_S, None, _FIRST_WINDOW_S
        oldest: str | None = None
        floor = _MIN_SECONDS
        while True:
            got = self._read_window(lo, hi, limit - len(found), found)
            if len(found) >= limit or lo <= floor:
                break
            if got == 0:  # a gap: is anything older left at all, and since when?
                if oldest is None:
                    oldest = self._oldest_key() or ""
                    floor = max(floor, _seconds_of(oldest[len(self.prefix):]) or floor)
                if not oldest or self._bound(lo) <= oldest:
                    break
                span *= 8
            else:  # aim the next window at what is still needed, at the density seen so far
                density = len(found) / max(1, now - lo)
                span = min(64 * span, max(2 * span, math.ceil(1.25 * (limit - len(found)) / density)))
            lo, hi = max(lo - span, floor), lo
        return found[:limit]

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

    def _read_window(self, lo: int, hi: int | None, needed: int, found: list[dict[str, Any]]) -> int:
        """Append the PNGs of seconds [lo, hi) (hi None: no upper end) to found, newest first, and say
        how many. A dense window is halved, the newer half read first, the older one only if needed."""
        upper = self._bound(hi) if hi is not None else self.prefix + ":"  # ':' sorts just above '9'
        # Keys sharing the window's leading digits bound the listing from above: less read past hi.
        narrow = os.path.commonprefix([_stamp(lo), _stamp(hi - 1)]) if hi is not None else ""
        first_page = min(_PAGE_MAX, 4 * needed + 16)  # an image is two objects: PNG and sidecar
        page = self._list_page(self._bound(lo), first_page, narrow)
        objects: list[dict[str, Any]] = []
        while True:
            contents = page.get("Contents") or []
            objects.extend(obj for obj in contents if obj["Key"] < upper)
            if not page.get("IsTruncated") or not contents or contents[-1]["Key"] >= upper:
                break
            top = hi if hi is not None else max(int(time.time()), lo) + 1
            dense = sum(1 for obj in objects if obj["Key"].endswith(".png")) >= needed
            if dense and top - lo > 1:  # more than needed here: the newer half may be enough
                mid = lo + (top - lo) // 2
                got = self._read_window(mid, hi, needed, found)
                if got >= needed:
                    return got
                return got + self._read_window(lo, mid, needed - got, found)
            page = self._list_page(contents[-1]["Key"], _PAGE_MAX, narrow)
        pngs = sorted((obj for obj in objects if obj["Key"].endswith(".png")),
                      key=lambda obj: obj["Key"], reverse=True)
        for obj in pngs:
            modified = obj.get("LastModified")
            found.append({"key": obj["Key"], "size": obj.get("Size"),
                          "last_modified": modified.astimezone(timezone.utc).isoformat() if modified else None})
        return len(pngs)
