"""What every provisioning step is, and the helpers they share: running a program with its output
shown as progress, JSON state written atomically, hashing."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..errors import InstallError
from ..process import kill_tree
from .progress import Reporter

__all__ = ["Step", "run_program", "read_json", "write_json", "sha256_file", "remove_tree"]

_SEGMENT = re.compile(rb"[^\r\n]*[\r\n]")


class Step:
    """One idempotent piece of the installation.

    `problems()` says what is wrong or not yet done (empty: done and verified; it changes nothing and
    does not touch the network); `run()` does the work and returns a one-line summary; `plan()`
    describes the work for --dry-run; `not_applicable()` gives the reason a step does not apply here.
    """

    name: str = ""
    title: str = ""

    def not_applicable(self) -> str | None:
        return None

    def problems(self) -> list[str]:
        raise NotImplementedError

    def plan(self) -> dict[str, Any]:
        raise NotImplementedError

    def run(self, reporter: Reporter) -> str:
        raise NotImplementedError


def run_program(argv: Sequence[str], *, label: str, reporter: Reporter, cwd: Path | None = None,
                env: Mapping[str, str] | None = None, hint: str | None = None) -> None:
    """Run a program (argv as a list, no shell), its output shown on stderr as it comes; fail with its
    exit status and last lines. Lines ending in a carriage return (git's progress) redraw in place."""
    tail: deque[str] = deque(maxlen=8)
    try:
        child = subprocess.Popen(list(argv), cwd=cwd, env=None if env is None else dict(env),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except FileNotFoundError:
        raise InstallError(f"{argv[0]} was not found on PATH (needed to {label})", hint=hint) from None
    assert child.stdout is not None
    pending = b""
    try:
        while chunk := child.stdout.read1(65536):
            pending += chunk
            consumed = 0
            for match in _SEGMENT.finditer(pending):
                consumed = match.end()
                segment = match.group()
                text = segment[:-1].decode("utf-8", "replace").strip()
                if text and segment.endswith(b"\n"):
                    reporter.output(label, text, tail)
                elif text:
                    tail.append(text)
            pending = pending[consumed:]
        if pending.strip():
            reporter.output(label, pending.decode("utf-8", "replace").strip(), tail)
        status = child.wait()
    except BaseException:
        kill_tree(child.pid, popen=child)  # the whole tree: pip's build runs CMake and the compilers below it
        raise
    if status != 0:
        last = " | ".join(tail) or "no output"
        raise InstallError(f"{label} failed: `{' '.join(argv)}` exited with {status}: {last}", hint=hint)


def capture(argv: Sequence[str], *, cwd: Path | None = None) -> tuple[int, str]:
    """(exit status, stdout stripped) of a quick program such as `git rev-parse`."""
    try:
        done = subprocess.run(list(argv), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False)
    except FileNotFoundError:
        return 127, ""
    return done.returncode, done.stdout.strip()


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def sha256_file(path: Path, reporter: Reporter | None = None, label: str | None = None) -> str:
    digest = hashlib.sha256()
    bar = reporter.bar(label, path.stat().st_size) if reporter and label else None
    with open(path, "rb") as handle:
        while block := handle.read(4 * 1024 * 1024):
            digest.update(block)
            if bar:
                bar.update(len(block))
    if bar:
        bar.close()
    return digest.hexdigest()


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def clear_stale(parent: Path, prefix: str) -> None:
    """Remove what an interrupted run left: temporary folders and files named `prefix`*."""
    if parent.is_dir():
        for leftover in parent.glob(prefix + "*"):
            remove_tree(leftover)
