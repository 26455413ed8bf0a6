"""Atomic file writes: a unique temporary name in the same folder, then a rename, so a reader sees the
old file or the new one and a crash leaves no half-written file under the real name.

Files get the mode the process's umask gives (0644 under the usual 022), like any file a program
creates: stored images and sidecars in a shared store stay readable to the group the umask allows.
(tempfile.mkstemp would make every file 0600 whatever the umask.)"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

__all__ = ["write_bytes", "write_json"]


def _create_temporary(path: Path) -> tuple[int, Path]:
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue


def write_bytes(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write data to path atomically; durable=True also fsyncs the file before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))
