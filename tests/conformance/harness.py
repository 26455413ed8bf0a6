"""A raw client of the worker protocol for the conformance suite: it starts any worker command,
validates every line either side writes against kitty_coreml/engines/worker_protocol.schema.json,
and never blocks without a timeout."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from kitty_coreml.engines.protocol import encode, load_schema

_SCHEMA = load_schema()
_REQUEST = jsonschema.Draft202012Validator({**_SCHEMA, "$ref": "#/$defs/request"})
_REPLY = jsonschema.Draft202012Validator({**_SCHEMA, "$ref": "#/$defs/reply"})
_FINAL_TYPES = {"hello", "loaded", "result", "ack", "unloaded", "bye", "error"}


@dataclass(frozen=True)
class WorkerTarget:
    """A worker command and a model it can load."""

    name: str
    argv: list[str]
    model_path: Path
    compute_units: str
    steps: int
    """Enough steps that a cancel sent after the first progress event lands mid-run."""
    scheduler: str = "pndm"
    """The scheduler its generates use by default: one the worker declares in hello."""
    generate_fields: dict[str, Any] = field(default_factory=dict)
    """Fields every generate carries (the image size, for a worker whose hello says sizes "any")."""


def check_request(message: dict[str, Any]) -> None:
    errors = sorted(_REQUEST.iter_errors(message), key=str)
    assert not errors, f"request does not match the schema: {message}: {errors[0].message}"


def check_reply(message: dict[str, Any]) -> None:
    errors = list(_REPLY.iter_errors(message))
    assert not errors, f"worker wrote a message the schema refuses: {message}: {best_reason(message)}"


def best_reason(message: dict[str, Any]) -> str:
    kind = message.get("type")
    for name, definition in _SCHEMA["$defs"].items():
        if name.endswith("_request") or name in ("request", "reply"):
            continue
        if definition["properties"]["type"].get("const") == kind:
            found = list(jsonschema.Draft202012Validator(definition).iter_errors(message))
            return "; ".join(error.message for error in found) or "ok against its own definition"
    return f"no reply type {kind!r}"


class WorkerSession:
    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True,
                                     env={**os.environ, **(env or {})})
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self.next_id = 0
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        for raw in self.proc.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                message = {"type": "_not_json", "id": None, "line": raw.decode("utf-8", "replace")}
            self.messages.put(message)
        self.messages.put(None)

    def _read_stderr(self) -> None:
        for raw in self.proc.stderr:
            self.stderr_tail.append(raw.decode("utf-8", "replace").rstrip())

    def new_id(self) -> str:
        self.next_id += 1
        return f"t{self.next_id}"

    def send(self, message: dict[str, Any]) -> str:
        message = {"id": self.new_id(), **message}
        check_request(message)
        self.send_raw(encode(message))
        return message["id"]

    def send_raw(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def next(self, timeout: float = 60.0) -> dict[str, Any]:
        try:
            message = self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message from the worker within {timeout}s; stderr: "
                                 f"{list(self.stderr_tail)[-5:]}") from None
        if message is None:
            raise AssertionError(f"worker closed stdout (exit {self.proc.wait(10)}); stderr: "
                                 f"{list(self.stderr_tail)[-5:]}")
        assert message["type"] != "_not_json", f"worker wrote a line that is not JSON: {message['line']!r}"
        check_reply(message)
        return message

    def final(self, message_id: str | None, timeout: float = 60.0) -> tuple[list[dict], dict]:
        """Progress events and the final reply of one request; any other message fails the test."""
        events = []
        while True:
            message = self.next(timeout)
            assert message["id"] == message_id, f"expected a reply to {message_id!r}, got {message}"
            if message["type"] in _FINAL_TYPES:
                return events, message
            events.append(message)

    def call(self, message: dict[str, Any], timeout: float = 60.0) -> tuple[list[dict], dict]:
        return self.final(self.send(message), timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass


def smoke_model_path(base_temp: Path) -> Path:
    """The smoke model, built once per test session under pytest's base temp folder (every test
    folder that asks gets the same one: create_smoke_model reuses a valid model)."""
    from kitty_coreml.install.smoke import create_smoke_model
    from kitty_coreml.settings import Settings

    settings = Settings.from_env({"KITTY_COREML_HOME": str(base_temp / "smoke-home")})
    return create_smoke_model(settings).path
