"""What every Python worker of the worker protocol (docs/protocol.md) shares: the stdin reader that
answers hello, cancel and bad lines at once, the one-request-at-a-time main loop, whole flushed
protocol lines on a private copy of stdout, and field checks that name the field. A worker subclasses
PythonWorker with its hello fields, load, generate and unload, and calls run_worker from its main.

Standard library only: a worker imports its heavy libraries when a request needs them.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import IO, Any

from .protocol import (
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    ProtocolViolation,
    decode,
    encode,
    error,
    one_line,
)

__all__ = ["PythonWorker", "RequestFailed", "StopRequested", "LineWriter", "Job", "check_field",
           "GenerateFields", "read_generate", "save_png", "own_version", "run_worker"]

_END_OF_INPUT = {"type": "_eof", "id": "_eof"}


class RequestFailed(Exception):
    """Ends a request with an error reply of this code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class StopRequested(Exception):
    """Raised from a step callback to leave the pipeline after the current step."""


class LineWriter:
    """Protocol lines to the saved stdout, whole and flushed, from any thread."""

    def __init__(self, stream: IO[bytes]):
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = encode(message)
        with self._lock:
            try:
                self._stream.write(data)
                self._stream.flush()
            except (BrokenPipeError, ValueError):  # the orchestrator is gone: nobody to answer
                os._exit(0)


@dataclass
class Job:
    message: dict[str, Any]
    stop: threading.Event = field(default_factory=threading.Event)


def check_field(message: dict[str, Any], name: str, kinds: tuple[type, ...], *, default: Any = ...,
                lo: float | None = None, hi: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """The value of a request field, or RequestFailed(bad_request) naming it, the value and what is allowed."""
    if name not in message or (message[name] is None and default is None):
        if default is ...:
            raise RequestFailed("bad_request", f"{name}: missing; required")
        return default
    value = message[name]
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        allowed = " or ".join(kind.__name__ for kind in kinds)
        raise RequestFailed("bad_request", f"{name}: got {value!r}; allowed: {allowed}")
    if choices is not None and value not in choices:
        raise RequestFailed("bad_request", f"{name}: got {value!r}; allowed: {', '.join(choices)}")
    if lo is not None and not lo <= value <= hi:
        raise RequestFailed("bad_request", f"{name}: got {value!r}; allowed: {lo:g}..{hi:g}")
    return value


@dataclass(frozen=True)
class GenerateFields:
    """A generate request's protocol fields, checked."""

    prompt: str
    negative: str
    count: int
    steps: int
    guidance: float
    scheduler: str
    seed: int
    input_image: str | None
    strength: float
    output_dir: Path


def read_generate(message: dict[str, Any]) -> GenerateFields:
    prompt = check_field(message, "prompt", (str,))
    if not prompt.strip():
        raise RequestFailed("bad_request", "prompt: got ''; allowed: non-empty text")
    output_dir = Path(check_field(message, "output_dir", (str,)))
    fields = GenerateFields(
        prompt=prompt, negative=check_field(message, "negative_prompt", (str,), default=""),
        count=check_field(message, "count", (int,), lo=1, hi=8),
        steps=check_field(message, "steps", (int,), lo=1, hi=150),
        guidance=float(check_field(message, "guidance", (int, float), lo=0, hi=30)),
        scheduler=check_field(message, "scheduler", (str,), choices=("pndm", "dpmpp")),
        seed=check_field(message, "seed", (int,), lo=0, hi=2**32 - 1),
        input_image=check_field(message, "input_image", (str,), default=None),
        strength=float(check_field(message, "strength", (int, float), default=0.5, lo=0, hi=1)),
        output_dir=output_dir)
    if not output_dir.is_absolute() or not output_dir.is_dir():
        raise RequestFailed("bad_request", f"output_dir: got {str(output_dir)!r}; allowed: an existing "
                                           "folder, as an absolute path")
    return fields


def save_png(image: Any, output_dir: Path, index: int) -> str:
    """Image `index` as 8-bit RGB `image_<index>.png`, written under a dot name and renamed: a listed file
    is always whole."""
    final = output_dir / f"image_{index}.png"
    partial = output_dir / f".image_{index}.png.partial"
    image.convert("RGB").save(partial, format="PNG")
    os.replace(partial, final)
    return str(final)


def own_version() -> str:
    try:
        return dist_version("kitty-coreml")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "source"


class PythonWorker:
    """The protocol's plumbing. Subclasses define hello_fields, load, generate and unload."""

    def __init__(self, writer: LineWriter, stdin: IO[bytes]):
        self.writer = writer
        self.stdin = stdin
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.lock = threading.Lock()
        self.pending_generate: Job | None = None
        """The generate queued or running; other requests are refused as busy while it is set."""
        self.lines_read = 0

    # -- what a worker is ------------------------------------------------------------------------
    def hello_fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def load(self, message: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def generate(self, job: Job) -> dict[str, Any]:
        raise NotImplementedError

    def unload(self) -> None:
        raise NotImplementedError

    # -- the stdin side -------------------------------------------------------------------------
    def read_requests(self) -> None:
        while True:
            line = self.stdin.readline(MAX_LINE_BYTES + 1)
            if not line:
                break
            self.lines_read += 1
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # drop the rest of the long line
                    line = self.stdin.readline(MAX_LINE_BYTES)
                self.writer.send(error(None, "malformed", f"line {self.lines_read} is longer than "
                                                          f"{MAX_LINE_BYTES} bytes"))
                continue
            if not line.strip():
                continue
            try:
                message = decode(line.strip())
            except ProtocolViolation as exc:
                self.writer.send(error(exc.message_id, exc.code, f"line {self.lines_read}: {exc}"))
                continue
            self.dispatch(message)
        with self.lock:
            if self.pending_generate is not None:
                self.pending_generate.stop.set()
        self.jobs.put(Job(_END_OF_INPUT))

    def dispatch(self, message: dict[str, Any]) -> None:
        kind, message_id = message["type"], message["id"]
        if kind not in REQUEST_TYPES:
            self.writer.send(error(message_id, "unknown_type",
                                   f"type: got {kind!r}; allowed: {', '.join(REQUEST_TYPES)}"))
            return
        if kind == "hello":
            self.writer.send(self.hello(message))
            return
        with self.lock:
            running = self.pending_generate
            if kind == "cancel":
                target = message.get("target")
                active = running is not None and (target is None or target == running.message["id"])
                if active:
                    running.stop.set()
                self.writer.send({"type": "ack", "id": message_id, "active": active})
                return
            if kind == "shutdown":
                if running is not None:
                    running.stop.set()
            elif running is not None:
                self.writer.send(error(message_id, "busy", f"generate {running.message['id']!r} is running; "
                                                           "only cancel and hello are answered meanwhile"))
                return
            job = Job(message)
            if kind == "generate":
                self.pending_generate = job
        self.jobs.put(job)

    def hello(self, message: dict[str, Any]) -> dict[str, Any]:
        version = message.get("protocol_version")
        if version != PROTOCOL_VERSION:
            return error(message["id"], "unsupported_version",
                         f"protocol_version: got {version!r}; allowed: {PROTOCOL_VERSION}")
        try:
            fields = self.hello_fields()
        except Exception as exc:  # a library that cannot even describe itself: say so, keep reading
            return error(message["id"], "internal", f"{type(exc).__name__}: {one_line(exc)}")
        return {"type": "hello", "id": message["id"], "protocol_version": PROTOCOL_VERSION, **fields,
                "pid": os.getpid()}

    # -- the main loop ---------------------------------------------------------------------------
    def serve(self) -> int:
        threading.Thread(target=self.read_requests, name="stdin-reader", daemon=True).start()
        handlers: dict[str, Callable[[Job], dict[str, Any]]] = {
            "load": lambda job: self.load(job.message),
            "generate": self.generate,
            "unload": lambda job: (self.unload(), {"type": "unloaded", "id": job.message["id"]})[1],
        }
        while True:
            job = self.jobs.get()
            kind, message_id = job.message["type"], job.message["id"]
            if job.message is _END_OF_INPUT:
                return 0
            if kind == "shutdown":
                self.writer.send({"type": "bye", "id": message_id})
                return 0
            try:
                reply = handlers[kind](job)
            except RequestFailed as exc:
                reply = error(message_id, exc.code, str(exc))
            except Exception as exc:  # the worker outlives any one request
                reply = error(message_id, "internal", f"{type(exc).__name__}: {one_line(exc)}")
            finally:
                with self.lock:
                    if self.pending_generate is job:
                        self.pending_generate = None
            self.writer.send(reply)


def run_worker(make: Callable[[LineWriter, IO[bytes]], PythonWorker]) -> None:
    """Serve the protocol on this process's stdin/stdout until shutdown or end of input, then exit."""
    # fd 1 carries protocol lines only: keep a private copy of it and point fd 1 (and sys.stdout)
    # at stderr, so whatever libraries print cannot corrupt the protocol
    protocol_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    code = make(LineWriter(protocol_out), sys.stdin.buffer).serve()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: the reader thread may be blocked on stdin
