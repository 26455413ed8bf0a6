"""What both queues share: job states, the job view the HTTP API answers with, and the JobQueue protocol."""

from __future__ import annotations

import uuid
from typing import Any, Protocol

__all__ = ["QUEUED", "STARTED", "DONE", "ERROR", "CANCELLED", "STATES", "FINAL_STATES", "JobQueue", "new_job_id"]

QUEUED = "queued"
STARTED = "started"
DONE = "done"
ERROR = "error"
CANCELLED = "cancelled"
STATES = (QUEUED, STARTED, DONE, ERROR, CANCELLED)
FINAL_STATES = (DONE, ERROR, CANCELLED)


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobQueue(Protocol):
    """A job is a dict (the "job view"): {job_id, status, created_at, started_at, finished_at, attempts,
    position (while queued, 1 = next), progress (last event, while started), result (done),
    error and error_code (error, cancelled)}."""

    kind: str
    """embedded (SQLite, one worker thread in the service) or redis (RQ, workers anywhere)."""

    def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        """Queue a validated GenerationRequest.to_dict(); QueueFull when the queue is at its bound."""

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job view, or None when no such job is known (never was, or its retention passed)."""

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a queued job at once, or ask a started one to stop; the job view after, or None."""

    def progress_since(self, job_id: str, after: int) -> list[dict[str, Any]]:
        """Progress events of the job numbered (field "seq") above `after`, oldest first."""

    def stats(self) -> dict[str, Any]:
        """Queue figures: {"queue": kind, "queued", "started", "done", "error", "cancelled", "max_queued", ...}."""

    def counters(self) -> dict[str, float]:
        """Monotonic figures for /metrics: generation_seconds_sum, generation_seconds_count, publish_failures."""

    def start(self) -> None:
        """Start what runs jobs in this process (the embedded worker thread); nothing for redis."""

    def close(self) -> None:
        """Stop it; a started job is put back in the queue to run again after a restart."""
