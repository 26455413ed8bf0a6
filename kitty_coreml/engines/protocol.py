"""The worker protocol's constants and line codec (docs/protocol.md), shared by WorkerEngine, the
diffusers worker and the tests. Standard library only: workers import it before anything heavy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["PROTOCOL_VERSION", "MAX_LINE_BYTES", "REQUEST_TYPES", "ERROR_CODES", "SCHEMA_PATH",
           "encode", "decode", "error", "one_line", "load_schema", "ProtocolViolation"]

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 1 << 20
REQUEST_TYPES = ("hello", "load", "generate", "cancel", "unload", "shutdown")
ERROR_CODES = ("malformed", "unknown_type", "bad_request", "unsupported_version", "busy", "not_loaded",
               "load_failed", "unsupported", "cancelled", "generation_failed", "internal")
SCHEMA_PATH = Path(__file__).with_name("worker_protocol.schema.json")


class ProtocolViolation(ValueError):
    """A line that is not a protocol message: the error code and a one-line reason."""

    def __init__(self, code: str, message: str, message_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.message_id = message_id


def one_line(text: object) -> str:
    return " ".join(str(text).split()) or "(no message)"


def encode(message: dict[str, Any]) -> bytes:
    """One message as one line of UTF-8 JSON ending in a newline."""
    return (json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line into a message with a string id and type, or raise ProtocolViolation."""
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolViolation("malformed", f"line of {len(line)} bytes is longer than {MAX_LINE_BYTES}")
    try:
        message = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("malformed", f"line is not UTF-8: {exc}") from None
    except ValueError as exc:
        raise ProtocolViolation("malformed", f"line is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolViolation("malformed", f"line is JSON {type(message).__name__}, not an object")
    message_id = message.get("id")
    if not isinstance(message_id, str) or not 1 <= len(message_id) <= 200:
        raise ProtocolViolation("malformed", f"id: got {message_id!r}; allowed: a string of 1..200 characters")
    if not isinstance(message.get("type"), str):
        raise ProtocolViolation("malformed", f"type: got {message.get('type')!r}; allowed: a string",
                                message_id)
    return message


def error(message_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "id": message_id, "code": code, "message": one_line(message)}


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
