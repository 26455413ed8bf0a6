"""The job queue behind the HTTP service: embedded (SQLite and a worker thread in the service, the
default) or distributed (RQ on Redis, with `kitty-coreml worker` or plain `rq worker` on each Mac)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import CANCELLED_CODE, FAILED, FINAL_STATES, FINISHED, QUEUED, STARTED, STATES, JobQueue

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["create_queue", "JobQueue", "QUEUED", "STARTED", "FINISHED", "FAILED", "CANCELLED_CODE", "STATES",
           "FINAL_STATES"]


def create_queue(settings: Settings, url: str | None = None) -> JobQueue:
    """The queue a URL names: redis://... for RQ; None, "" or "embedded" for the SQLite queue, unless
    REDIS_URL is set."""
    url = url if url is not None else settings.redis_url
    if url and url != "embedded":
        from .distributed import RedisQueue

        return RedisQueue(settings, url)
    from .embedded import EmbeddedQueue

    return EmbeddedQueue(settings)
