"""The Store protocol: where finished images and their JSON sidecars end up."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

__all__ = ["StoredImage", "Store", "new_key", "sidecar_key"]


@dataclass(frozen=True)
class StoredImage:
    key: str
    storage_uri: str
    """file:///abs/path.png for the local store, s3://bucket/key for S3."""
    path: Path | None = None
    """Where the PNG is on this machine, when it is."""


def new_key(prefix: str, now: datetime | None = None) -> str:
    """KITTY's key layout: {prefix}{YYYYmmdd_HHMMSS}_{8 hex}.png, UTC. The first 4 hex digits are the
    fraction of the second (in 1/65536ths) and the last 4 are random, so keys made within one second
    still sort in the order they were made and a newest-first listing is right."""
    now = now or datetime.now(timezone.utc)
    fraction = now.microsecond * 65536 // 1_000_000
    return f"{prefix}{now:%Y%m%d_%H%M%S}_{fraction:04x}{secrets.token_hex(2)}.png"


def sidecar_key(key: str) -> str:
    return key[: -len(".png")] + ".json"


class Store(Protocol):
    kind: str

    def publish(self, key: str, png: Path, sidecar: Path) -> StoredImage:
        """Store the PNG at key, then its sidecar; the PNG first so a listing never shows a sidecar
        without its image. May move the files away; the caller removes what is left afterwards."""

    def list(self, limit: int) -> list[dict[str, Any]]:
        """Newest first, PNGs only: [{"key", "size", "last_modified"}]."""

    def select(self, key: str) -> dict[str, Any]:
        """{"imageRef": {"downloadUrl", "storageUri"}} for a key inside the prefix; NotFound otherwise."""

    def read_sidecar(self, key: str) -> dict[str, Any] | None:
        """The JSON sidecar of an image key, or None."""
