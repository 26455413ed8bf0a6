"""Where finished images go: the local folder (default) or S3/MinIO, behind the Store protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import NotFound
from .base import Store, StoredImage, new_key, sidecar_key

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["create_store", "resolve_ref", "Store", "StoredImage", "new_key", "sidecar_key"]


def create_store(settings: Settings) -> Store:
    if settings.store == "s3":
        from .s3 import S3Store

        return S3Store.from_settings(settings)
    from .local import LocalStore

    return LocalStore(settings.images_root, settings.prefix)


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
