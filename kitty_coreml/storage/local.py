"""The local store (the default): KITTY's key layout under HOME/store, e.g.
HOME/store/images/20261121_101500_abcd1234.png and its .json sidecar."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest, NotFound, StoreError
from .base import StoredImage, sidecar_key

__all__ = ["LocalStore", "check_key"]


def check_key(key: str, prefix: str) -> str:
    """A key names one PNG directly inside the prefix; anything else is refused."""
    if not isinstance(key, str) or not key.startswith(prefix) or not key.endswith(".png"):
        raise InvalidRequest("key", key, f"a PNG key inside the prefix {prefix!r}, like {prefix}YYYYmmdd_HHMMSS_xxxxxxxx.png")
    name = key[len(prefix):]
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
        raise InvalidRequest("key", key, f"a PNG key inside the prefix {prefix!r}, like {prefix}YYYYmmdd_HHMMSS_xxxxxxxx.png")
    return key


def _move(src: Path, dest: Path) -> None:
    """Atomically put src at dest: a rename when they share a filesystem, else copy to a temp name first."""
    try:
        os.replace(src, dest)
    except OSError:
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        src.unlink(missing_ok=True)


class LocalStore:
    kind = "local"

    def __init__(self, root: Path, prefix: str):
        self.root = root
        self.prefix = prefix

    def _path(self, key: str) -> Path:
        return self.root / key

    def publish(self, key: str, png: Path, sidecar: Path) -> StoredImage:
        check_key(key, self.prefix)
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            _move(png, dest)
            _move(sidecar, self._path(sidecar_key(key)))
        except OSError as exc:
            raise StoreError(f"cannot write {dest}: {exc.strerror or exc}") from None
        return StoredImage(key=key, storage_uri=dest.absolute().as_uri(), path=dest.absolute())

    def list(self, limit: int) -> list[dict[str, Any]]:
        folder = self._path(self.prefix) if self.prefix else self.root
        try:
            entries = [e for e in os.scandir(folder) if e.name.endswith(".png") and not e.name.startswith(".")]
        except FileNotFoundError:
            return []
        entries.sort(key=lambda e: e.name, reverse=True)
        items = []
        for entry in entries[:limit]:
            stat = entry.stat()
            items.append({
                "key": self.prefix + entry.name,
                "size": stat.st_size,
                "last_modified": datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(),
            })
        return items

    def select(self, key: str) -> dict[str, Any]:
        check_key(key, self.prefix)
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"no image with key {key!r} in {self.root}", hint="see `kitty-coreml images list`")
        uri = path.absolute().as_uri()
        return {"imageRef": {"downloadUrl": uri, "storageUri": uri}}

    def read_sidecar(self, key: str) -> dict[str, Any] | None:
        check_key(key, self.prefix)
        try:
            return json.loads(self._path(sidecar_key(key)).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
