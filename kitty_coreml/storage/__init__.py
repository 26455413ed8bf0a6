"""Where finished images go: the local folder (default) or S3/MinIO, behind the Store protocol."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..errors import NotFound
from .base import Store, StoredImage, new_key, sidecar_key

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["create_store", "shared_s3_store", "resolve_ref", "Store", "StoredImage", "new_key", "sidecar_key"]

_S3_STORES: dict[tuple, Any] = {}
_S3_STORES_LOCK = threading.Lock()


def create_store(settings: Settings) -> Store:
    if settings.store == "s3":
        return shared_s3_store(settings)
    from .local import LocalStore

    return LocalStore(settings.images_root, settings.prefix)


def shared_s3_store(settings: Settings):
    """The process's one S3Store (and boto3 client, which is thread-safe) for these S3 settings: every
    job, `batch` prompt and request reuses it instead of paying ~100 ms for a new client each time."""
    fields = ("s3_bucket", "prefix", "s3_endpoint_url", "s3_region", "s3_access_key", "s3_secret_key",
              "s3_create_bucket", "presign_expiry_s", "s3_retry_total_s", "s3_checksums", "s3_timeout_s")
    identity = tuple(getattr(settings, name) for name in fields)
    with _S3_STORES_LOCK:
        store = _S3_STORES.get(identity)
        if store is None:
            from .s3 import S3Store

            store = _S3_STORES[identity] = S3Store.from_settings(settings)
        return store


def resolve_ref(store: Store, ref: str, prefix: str) -> str:
    """An image reference as users type it: a 1-based index into the newest-first listing, a key, or a
    file name inside the prefix."""
    ref = ref.strip()
    if ref.isascii() and ref.isdigit():  # "²" is a digit to str.isdigit, not to int()
        index = int(ref)
        if index < 1:
            raise NotFound(f"image index {ref}: indexes start at 1 (1 is the newest)")
        items = store.list(index)
        if len(items) < index:
            raise NotFound(f"image index {index}: only {len(items)} image(s) stored",
                           hint="see `kitty-coreml images list`")
        return items[index - 1]["key"]
    if not ref.startswith(prefix) and "/" not in ref:
        return prefix + ref
    return ref
