"""The one exception tree. Every error a user can meet is a KittyError: a stable code, a one-line
message, an optional hint (what to do about it) and the process exit code the CLI uses."""

from __future__ import annotations

__all__ = [
    "KittyError",
    "InvalidRequest",
    "ConfigError",
    "PlatformUnsupported",
    "ModelError",
    "LockBusy",
    "EngineError",
    "EngineTimeout",
    "Cancelled",
    "SafetyRemovedAll",
    "OutputError",
    "StoreError",
    "PublishPending",
    "NotFound",
    "InstallError",
    "ServiceError",
    "QueueFull",
]


class KittyError(Exception):
    code = "error"
    exit_code = 1
    answer: dict | None = None
    """What a --json command had to say before it failed (an install report, a result whose images
    wait in the outbox); the CLI prints the error inside it."""

    def __init__(self, message: str, *, hint: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.message = " ".join(message.split())  # always one line
        self.hint = " ".join(hint.split()) if hint else None
        self.details = details or {}

    def one_line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def to_dict(self) -> dict:
        out = {"code": self.code, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        if self.details:
            out["details"] = self.details
        return out


class InvalidRequest(KittyError):
    """A value the user gave is not allowed. Names the field, the value and what is allowed."""

    code = "invalid_request"
    exit_code = 2

    def __init__(self, field: str, value: object, allowed: str, *, hint: str | None = None):
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}: got {shown}; allowed: {allowed}", hint=hint,
                         details={"field": field, "allowed": allowed})
        self.field = field
        self.value = value
        self.allowed = allowed

    def for_field(self, name: str) -> InvalidRequest:
        """The same refusal under the name the user typed (a CLI flag instead of a request field)."""
        renamed = InvalidRequest(name, self.value, self.allowed, hint=self.hint)
        renamed.answer = self.answer
        return renamed


class ConfigError(KittyError):
    """An environment variable or configuration file holds a value that cannot be used."""

    code = "config"
    exit_code = 2


class PlatformUnsupported(KittyError):
    """Core ML needs macOS on Apple Silicon; said plainly elsewhere."""

    code = "platform_unsupported"
    exit_code = 3


class ModelError(KittyError):
    """The model is unknown, incomplete, or cannot do what the request asks."""

    code = "model"
    exit_code = 3


class LockBusy(KittyError):
    code = "lock_busy"
    exit_code = 4


class EngineError(KittyError):
    """The engine failed: exit code or signal and the last lines of its output are in the message."""

    code = "engine_failed"
    exit_code = 5


class EngineTimeout(EngineError):
    code = "engine_timeout"
    exit_code = 6


class Cancelled(KittyError):
    code = "cancelled"
    exit_code = 130


class SafetyRemovedAll(KittyError):
    code = "safety_removed_all"
    exit_code = 7


class OutputError(EngineError):
    """The engine claimed success but its images are missing, undecodable or the wrong size."""

    code = "bad_output"


class StoreError(KittyError):
    code = "store"
    exit_code = 8


class PublishPending(StoreError):
    """Images were generated and kept in the outbox, but could not be published."""

    code = "publish_pending"
    exit_code = 9


class NotFound(KittyError):
    code = "not_found"
    exit_code = 2


class InstallError(KittyError):
    code = "install"
    exit_code = 10


class ServiceError(KittyError):
    """The images service cannot be reached, or refused a request."""

    code = "service"
    exit_code = 11


class QueueFull(ServiceError):
    """The job queue holds as many jobs as it may; try again later (HTTP 429)."""

    code = "queue_full"
