"""The outbox: every finished image is staged on local disk here before it is published, so that
nothing generated is lost when the store is down, and nothing is published twice.

Layout: the item of key `images/20261121_101500_abcd1234.png` is the two files
`OUTBOX/images/20261121_101500_abcd1234.png` and `.../20261121_101500_abcd1234.json`. Each is written
under a temporary dot-name and renamed into place, the PNG first and the sidecar last: a sidecar present
means the item is complete. A PNG without its sidecar is an item whose staging was interrupted; it is
kept, never published, and reported as `incomplete`.

Claiming: a publisher takes an exclusive `flock` on the item's sidecar for the whole publish, and moves
both files out (sidecar first, so the item stops being pending) before releasing it: renamed into a
`.sent` folder beside them, where a background thread deletes them (deleting a freshly written file costs
about 1.5 ms on ext4, a third of what publishing adds to an upload; a rename costs microseconds). The
thread finishes before the process exits; files a killed process left in `.sent` go at the next
`publish_pending`. The kernel drops the
lock when a publisher dies, so a crash never leaves an item stuck. A publisher that gets the lock after
another one finished holds a deleted file: it compares inode numbers and sees the item is gone. So two
`publish --pending` runs, or one beside a generation that is publishing, send each item exactly once.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..atomic import write_bytes
from ..errors import InvalidRequest, KittyError, StoreError
from .base import Store, StoredImage, sidecar_key

__all__ = ["OutboxItem", "stage", "pending", "incomplete", "publish_item", "publish_items",
           "publish_pending", "DEFAULT_WORKERS"]

DEFAULT_WORKERS = 8
"""Concurrent uploads of publish_items/publish_pending: S3 latency, not CPU, is what they wait on."""


@dataclass(frozen=True)
class OutboxItem:
    key: str
    png: Path
    sidecar: Path


def _item(outbox_dir: Path, key: str) -> OutboxItem:
    path = PurePosixPath(key)
    if (not key.endswith(".png") or path.is_absolute() or "\\" in key
            or any(part in ("", ".", "..") or part.startswith(".") for part in key.split("/"))):
        raise InvalidRequest("key", key, "a relative key like images/20261121_101500_abcd1234.png "
                             "(no '..', no leading '/' or '.', ending in .png)")
    return OutboxItem(key=key, png=outbox_dir / key, sidecar=outbox_dir / sidecar_key(key))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stage(outbox_dir: Path, key: str, png_bytes: bytes, sidecar: dict[str, Any]) -> OutboxItem:
    """Put one finished image and its metadata in the outbox, durably, PNG first and sidecar last."""
    item = _item(Path(outbox_dir), key)
    try:
        body = json.dumps(sidecar, indent=2, ensure_ascii=False, default=str).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidRequest("sidecar", type(sidecar).__name__, f"a JSON-serialisable dict ({exc})") from None
    try:
        item.png.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(item.png, png_bytes, durable=True)
        write_bytes(item.sidecar, body, durable=True)
        _fsync_dir(item.png.parent)
    except OSError as exc:
        raise StoreError(f"cannot stage {key} in the outbox {outbox_dir}: {exc.strerror or exc}",
                         hint="check free disk space and permissions of KITTY_COREML_HOME") from None
    return item


def _walk(outbox_dir: Path, suffix: str) -> list[Path]:
    """Files of the outbox ending in suffix, skipping temporary dot-names and dot-folders."""
    found: list[Path] = []
    if not outbox_dir.is_dir():
        return found
    for root, dirs, files in os.walk(outbox_dir):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        found.extend(Path(root, name) for name in files if name.endswith(suffix) and not name.startswith("."))
    return found


def pending(outbox_dir: Path) -> list[OutboxItem]:
    """Complete items (PNG and sidecar both present) waiting to be published, oldest key first."""
    outbox_dir = Path(outbox_dir)
    items = []
    for sidecar in _walk(outbox_dir, ".json"):
        key = sidecar.relative_to(outbox_dir).with_suffix(".png").as_posix()
        if sidecar.with_suffix(".png").is_file():
            items.append(OutboxItem(key=key, png=sidecar.with_suffix(".png"), sidecar=sidecar))
    return sorted(items, key=lambda item: item.key)


def incomplete(outbox_dir: Path) -> list[str]:
    """Keys of PNGs whose staging was interrupted before the sidecar was written (or is being written)."""
    outbox_dir = Path(outbox_dir)
    return sorted(png.relative_to(outbox_dir).as_posix() for png in _walk(outbox_dir, ".png")
                  if not png.with_suffix(".json").exists())


def _as_store_error(key: str, exc: BaseException) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, KittyError):
        return StoreError(f"publishing {key} failed: {exc.message}", hint=exc.hint)
    return StoreError(f"publishing {key} failed: {type(exc).__name__}: {exc}")


def _claim(item: OutboxItem, *, wait: bool) -> int | None:
    """An fd holding the item's lock, or None when the item is gone (published by someone else) or,
    with wait=False, claimed by someone else right now."""
    try:
        fd = os.open(item.sidecar, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    try:
        current = os.stat(item.sidecar).st_ino
    except FileNotFoundError:
        current = None
    if current != os.fstat(fd).st_ino:  # another publisher finished it while we waited
        os.close(fd)
        return None
    return fd


def _publish_claimed(store: Store, item: OutboxItem) -> StoredImage:
    if not item.png.is_file():
        raise StoreError(f"outbox item {item.key} has a sidecar but no PNG at {item.png}")
    try:
        stored = store.publish(item.key, item.png, item.sidecar)
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise _as_store_error(item.key, exc) from None
    _retire(item)
    return stored


_SENT_DIR = ".sent"
_deleter: ThreadPoolExecutor | None = None
_deleter_lock = threading.Lock()


def _retire(item: OutboxItem) -> None:
    """Take a published item out of the outbox: sidecar first, so it is no longer pending whatever
    happens next; the files are deleted off the caller's path."""
    sent = item.sidecar.parent / _SENT_DIR
    try:
        sent.mkdir(exist_ok=True)
        os.replace(item.sidecar, sent / item.sidecar.name)
        os.replace(item.png, sent / item.png.name)
    except OSError:
        item.sidecar.unlink(missing_ok=True)
        item.png.unlink(missing_ok=True)
        return
    global _deleter
    with _deleter_lock:
        if _deleter is None:  # its thread is joined at interpreter exit: nothing is left behind
            _deleter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-delete")
        _deleter.submit(_delete, [sent / item.sidecar.name, sent / item.png.name])


def _delete(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # the next publish_pending sweeps what is left


def _sweep_sent(outbox_dir: Path) -> None:
    """Delete what a publisher that died left in the `.sent` folders."""
    if not outbox_dir.is_dir():
        return
    for root, dirs, files in os.walk(outbox_dir):
        if Path(root).name == _SENT_DIR:
            _delete([Path(root, name) for name in files])


def publish_item(store: Store, item: OutboxItem) -> StoredImage:
    """Publish one staged item exactly once and remove it from the outbox.

    Waits while another process publishes the same item; if that one succeeded, returns where the image
    is now. On failure the item stays in the outbox, unclaimed, and StoreError is raised.
    """
    fd = _claim(item, wait=True)
    if fd is None:
        return _already_published(store, item.key)
    try:
        return _publish_claimed(store, item)
    finally:
        os.close(fd)


def _already_published(store: Store, key: str) -> StoredImage:
    try:
        ref = store.select(key)["imageRef"]
    except KittyError as exc:
        raise StoreError(f"outbox item {key} vanished but the store does not have it: {exc.message}") from None
    return StoredImage(key=key, storage_uri=ref["storageUri"])


def publish_items(store: Store, items: Iterable[OutboxItem], *, workers: int = DEFAULT_WORKERS) -> dict[str, Any]:
    """Publish several items concurrently. Items another publisher holds right now are left to it.

    Returns {"published": [StoredImage...], "failed": [{"key", "error"}], "busy": [keys]}.
    """
    items = list(items)

    def attempt(item: OutboxItem) -> tuple[str, Any]:
        fd = _claim(item, wait=False)
        if fd is None:
            return "busy", item.key
        try:
            return "published", _publish_claimed(store, item)
        except StoreError as exc:
            return "failed", {"key": item.key, "error": exc.one_line()}
        finally:
            os.close(fd)

    report: dict[str, list] = {"published": [], "failed": [], "busy": []}
    if len(items) <= 1 or workers <= 1:  # a one-image job: starting a thread would cost more than it saves
        outcomes = [attempt(item) for item in items]
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
            outcomes = list(pool.map(attempt, items))
    for outcome, value in outcomes:
        report[outcome].append(value)
    return report


def publish_pending(store: Store, outbox_dir: Path, *, workers: int = DEFAULT_WORKERS) -> dict[str, Any]:
    """Send everything the outbox holds. Safe beside other publishers.

    Report: {"published": [keys], "failed": [{"key", "error"}], "busy": [keys another publisher held],
    "remaining": N complete items still in the outbox, "incomplete": [keys of PNGs without a sidecar]}.
    """
    outbox_dir = Path(outbox_dir)
    _sweep_sent(outbox_dir)
    result = publish_items(store, pending(outbox_dir), workers=workers)
    return {
        "published": [stored.key for stored in result["published"]],
        "failed": result["failed"],
        "busy": result["busy"],
        "remaining": len(pending(outbox_dir)),
        "incomplete": incomplete(outbox_dir),
    }
