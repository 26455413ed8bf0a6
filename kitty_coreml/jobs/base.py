"""What both queues share: job states, the job view the HTTP API answers with, and the JobQueue protocol.

The states are KITTY's (RQ's): queued, started, finished, failed. KITTY's clients stop polling only on
finished or failed, so a cancelled job is failed, with an error saying who cancelled it and
`cancelled: true` beside it."""

from __future__ import annotations

import uuid
from typing import Any, Protocol

__all__ = ["QUEUED", "STARTED", "FINISHED", "FAILED", "STATES", "FINAL_STATES", "CANCELLED_CODE", "JobQueue",
           "new_job_id", "failed_fields"]

QUEUED = "queued"
STARTED = "started"
FINISHED = "finished"
FAILED = "failed"
STATES = (QUEUED, STARTED, FINISHED, FAILED)
FINAL_STATES = (FINISHED, FAILED)
CANCELLED_CODE = "cancelled"
"""The error_code of a failed job that was cancelled."""


def new_job_id() -> str:
    return uuid.uuid4().hex


def failed_fields(error: str | None, error_code: str | None) -> dict[str, Any]:
    """The fields a failed job's view carries: a one-line error, its code, and whether it was cancelled."""
    line = (error or "the job failed without a message").strip().splitlines()
    return {"error": line[-1] if line else "the job failed without a message", "error_code": error_code,
            "cancelled": error_code == CANCELLED_CODE}


class JobQueue(Protocol):
    """A job is a dict (the "job view"): {job_id, status, created_at, started_at, finished_at, attempts,
    position (while queued, 1 = next), progress (last event, while started), result (finished),
    error, error_code and cancelled (failed)}."""

    kind: str
    """embedded (SQLite, one worker thread in the service) or redis (RQ, workers anywhere)."""

    def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        """Queue a validated GenerationRequest.to_dict() (plus "warnings" of the body, if any);
        QueueFull when the queue is at its bound."""

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job view, or None when no such job is known (never was, or its retention passed)."""

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a queued job at once, or ask a started one to stop; the job view after, or None."""

    def progress_since(self, job_id: str, after: int) -> list[dict[str, Any]]:
        """Progress events of the job numbered (field "seq") above `after`, oldest first."""

    def stats(self) -> dict[str, Any]:
        """Queue figures: {"queue": kind, "queued", "started", "finished", "failed", "cancelled" (among
        failed), "max_queued", ...}."""

    def counters(self) -> dict[str, float]:
        """Monotonic figures for /metrics: generation_seconds_sum, generation_seconds_count, publish_failures."""

    def start(self) -> None:
        """Start what runs jobs in this process (the embedded worker thread); nothing for redis."""

    def close(self) -> None:
        """Stop it; a started job is put back in the queue to run again after a restart."""
